"""The viewer entry point of a registration output: ``out.zarr/view``.

No viewer renders a 0.6 ``displacements`` transform yet, and a scene that
holds one (or a ``bijection``) is refused whole by napari-ome-zarr's scene
reader. A *resampled* image is what viewers show. So, with ``--resample``,
the output holds two scenes::

    out.zarr/zarr.json       the registration scene (ome.scene):
                               [0] bijection  input {path: "view/fixed", name: S}
                                              output {name: "moving"}  (a scene coordinate system)
                               [1] identity   input {path: "view/moving_resampled", name: S}
                                              output {path: "view/fixed", name: S}
    out.zarr/view/zarr.json  the viewer scene: only the identity, paths relative to view/
    out.zarr/view/fixed/              the fixed image, written on its own grid (NGFF 0.5)
    out.zarr/view/moving_resampled/   the moving image resampled onto the same grid (NGFF 0.5)

``S`` is the images' physical coordinate system (``"physical"``: the name a
0.5 image's coordinate system has when read as 0.6). Both images share the
fixed image's level geometry, so viewers show them in register. Every path
is relative to the group that holds it and stays inside the store.

Outputs written before this layout (``out.zarr/moving_resampled``, a scene
without image paths) stay readable: :func:`resampled_url` finds either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.io.omezarr.output_state import MARKER_KEY
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import is_remote, join_url, local_path, redact_url
from ngff_dreg.ngff.upgrade import PHYSICAL_SYSTEM

__all__ = [
    "LEGACY_RESAMPLED",
    "VIEW_FIXED",
    "VIEW_GROUP",
    "VIEW_RESAMPLED",
    "link_view",
    "recorded_location",
    "resampled_url",
    "view_scene",
]

logger = logging.getLogger(__name__)

#: The viewer scene below an output.
VIEW_GROUP = "view"
#: Image names inside the viewer scene.
FIXED_NAME = "fixed"
RESAMPLED_NAME = "moving_resampled"
#: Image paths relative to the output (the registration scene).
VIEW_FIXED = f"{VIEW_GROUP}/{FIXED_NAME}"
VIEW_RESAMPLED = f"{VIEW_GROUP}/{RESAMPLED_NAME}"
#: Where outputs written before the viewer scene kept the resampled image.
LEGACY_RESAMPLED = "moving_resampled"
SCENE_VERSION = "0.6"


def recorded_location(url: str | None) -> str | None:
    """An image location as recorded in an output: absolute if local, never with credentials.

    A relative local path would be read against the reader's working
    directory, not the output's.
    """
    if url is None:
        return None
    text = redact_url(str(url))
    if is_remote(text):
        return text
    return os.path.abspath(local_path(text))


def _identity(input_path: str, output_path: str, system: str) -> dict[str, Any]:
    return {"type": "identity", "input": {"path": input_path, "name": system},
            "output": {"path": output_path, "name": system}}


def view_scene(system: str = PHYSICAL_SYSTEM) -> dict[str, Any]:
    """The ``ome`` attributes of ``out.zarr/view``: the resampled image is in fixed space."""
    return {"version": SCENE_VERSION, "scene": {
        "coordinateTransformations": [_identity(RESAMPLED_NAME, FIXED_NAME, system)]}}


def link_view(url: str, storage_options: Mapping[str, Any] | None = None, *,
              system: str = PHYSICAL_SYSTEM) -> None:
    """Point the registration scene at the images below ``url/view`` and write the view scene.

    Call once ``view/fixed`` and ``view/moving_resampled`` are written. The
    registration (transform 0) starts at ``view/fixed``; an identity from the
    resampled image to the fixed one follows. Rerunning it gives the same
    metadata.

    Raises
    ------
    InvalidMetadataError
        The output holds no scene.

    """
    root = zarr_group(url, storage_options, mode="r+")
    attrs: dict[str, Any] = dict(root.attrs.asdict())
    ome = attrs.get("ome")
    scene = ome.get("scene") if isinstance(ome, Mapping) else None
    if not isinstance(scene, Mapping) or not scene.get("coordinateTransformations"):
        raise InvalidMetadataError(f"{redact_url(url)}: zarr.json has no "
                                   "ome.scene.coordinateTransformations")
    transforms = [dict(t) for t in scene["coordinateTransformations"]]
    registration = transforms[0]
    old_input = registration.get("input") or {}
    old_name = old_input.get("name") if isinstance(old_input, Mapping) else None
    registration["input"] = {"path": VIEW_FIXED, "name": system}
    link = _identity(VIEW_RESAMPLED, VIEW_FIXED, system)
    kept = [t for t in transforms[1:] if t != link]
    systems = [s for s in scene.get("coordinateSystems") or []
               if not (isinstance(s, Mapping) and s.get("name") == old_name
                       and "path" not in old_input)]
    new_scene: dict[str, Any] = {"coordinateTransformations": [registration, link, *kept]}
    if systems:
        new_scene["coordinateSystems"] = systems
    view = zarr_group(join_url(url, VIEW_GROUP), storage_options, mode="r+")
    view_attrs = dict(view.attrs.asdict())
    view_attrs["ome"] = view_scene(system)
    view.attrs.put(view_attrs)
    attrs["ome"] = {**dict(ome or {}), "scene": new_scene}
    own = dict(attrs.get(MARKER_KEY) or {})
    own["view"] = VIEW_GROUP
    attrs[MARKER_KEY] = own
    root.attrs.put(attrs)
    logger.info("viewer scene written at %s", redact_url(join_url(url, VIEW_GROUP)))


def resampled_url(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The resampled moving image of an output: ``view/moving_resampled`` or the legacy place.

    Raises :class:`FileNotFoundError` when the output holds neither.
    """
    for path in (VIEW_RESAMPLED, LEGACY_RESAMPLED):
        candidate = join_url(url, path)
        try:
            zarr_group(candidate, storage_options, mode="r")
        except (FileNotFoundError, KeyError, ValueError, OSError):
            continue
        return candidate
    raise FileNotFoundError(f"{redact_url(url)} holds no resampled image "
                            f"({VIEW_RESAMPLED} or {LEGACY_RESAMPLED})")
