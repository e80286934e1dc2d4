"""Store a registration *inside* the fixed image's own OME-Zarr group (NGFF 0.6).

The output scene (see :mod:`ngff_dreg.io.omezarr.field_writer`) is where ngff-dreg
always writes a registration. On request, the same transform is also written
into the fixed image, so that a viewer opening only that image finds it. RFC-5
allows this under ``multiscales > coordinateTransformations``: a transform from
the image's *intrinsic* coordinate system to another coordinate system named in
the same multiscale. Layout added to the fixed image group::

    fixed.zarr/zarr.json        ome.multiscales[0].coordinateSystems += {name: NAME, axes}
                                ome.multiscales[0].coordinateTransformations += bijection
                                    input {name: <intrinsic>}, output {name: NAME}
    fixed.zarr/coordinateTransformations/NAME/fixed_to_moving/   forward field (copied)
    fixed.zarr/coordinateTransformations/NAME/moving_to_fixed/   inverse field (copied)

``NAME`` is the moving image's coordinate system as seen from the fixed image:
a fixed-image point ``p`` (intrinsic) maps to the moving image's physical
point ``T(p)``. The field paths are relative to the image group, so nothing
points outside it. When the fixed image's physical space is reached from the
intrinsic system through a rotation/affine (an oblique 0.6 image), that linear
step is put in front of the forward transform (and its inverse after the
inverse), as the spec requires the transform to start at the intrinsic system.

**Versions.** A 0.6 image is written in place. A 0.5 image has no coordinate
systems to name, so its metadata must first be upgraded to 0.6 (metadata only:
the arrays are unchanged). This happens only with ``upgrade=True``; the
previous ``ome`` attributes are kept under ``attributes.ngff_dreg.previous_ome``
so the upgrade can be undone. A 0.4 (Zarr v2) image cannot hold the transform.

**Safe writes.** The fields are copied first, into a group marked incomplete;
the image's ``zarr.json`` is rewritten last, in one write. An interrupted
copy leaves the image's metadata untouched (and readable as before); a rerun
copies again. Replacing an existing registration of the same name needs
``overwrite=True``.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ngff_dreg.errors import (
    IncompatibleImagesError,
    InvalidMetadataError,
    OutputExistsError,
    StoreAccessError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import chunk_boxes
from ngff_dreg.io.omezarr.field_writer import TRANSFORMS_GROUP
from ngff_dreg.io.omezarr.output_state import MARKER_KEY, put_marker
from ngff_dreg.io.omezarr.transform_reader import read_scene_attributes
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import location_key, redact_url
from ngff_dreg.ngff.metadata import (
    check_relative_path,
    detect_version,
    has_field_transform,
    parse_multiscale,
)
from ngff_dreg.ngff.transforms import field_paths, ref_name, rewrite_field_paths
from ngff_dreg.ngff.upgrade import upgrade_to_06

__all__ = ["check_into_image", "default_system_name", "write_transform_into_image"]

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def default_system_name(moving_url: str | None) -> str:
    """A coordinate-system name for the moving image, from its URL (``"moving"`` if none)."""
    if not moving_url:
        return "moving"
    base = moving_url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".ome.zarr", ".zarr"):
        base = base.removesuffix(suffix)
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", base).lstrip("._-")
    return base or "moving"


def _copy_group(src_root: Any, src_path: str, dst_root: Any, dst_path: str) -> None:
    """Copy a (field multiscale) group's arrays chunk by chunk, then its attributes.

    A sharded array stays sharded and is copied one whole shard per write.
    """
    src = src_root[src_path]
    dst = dst_root.require_group(dst_path)
    for key, arr in src.arrays():
        out = dst.create_array(
            key, shape=arr.shape, chunks=arr.chunks, shards=arr.shards, dtype=arr.dtype,
            fill_value=arr.fill_value, overwrite=True,
            dimension_names=arr.metadata.dimension_names,
        )
        for box in chunk_boxes(arr.shape, arr.shards or arr.chunks):
            out[box.slices] = arr[box.slices]
    dst.attrs.put(dict(src.attrs.asdict()))


def _affine_item(h: np.ndarray) -> dict[str, Any]:
    n = h.shape[0] - 1
    return {"type": "affine", "affine": [[float(v) for v in h[i]] for i in range(n)]}


def _plan(attrs: Mapping[str, Any], safe_fixed: str, name: str, overwrite: bool,
          upgrade: bool, scene_url: str | None = None
          ) -> tuple[str, dict[str, Any], str, np.ndarray, list[int]]:
    """Check that ``name`` can be written into an image with ``attrs``; nothing is written.

    An existing registration called ``name`` may be replaced with ``overwrite``,
    or when it was copied from the same ``scene_url`` (a rerun).

    Returns ``(version, 0.6 attributes, intrinsic system, world_from_intrinsic,
    indices of an existing registration called name)``.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"coordinate-system name {name!r}: use letters, digits, '_', '.', '-'")
    version, _, _ = detect_version(attrs, safe_fixed)
    if version == "0.4":
        raise UnsupportedVersionError(
            f"{safe_fixed}: NGFF 0.4 (Zarr v2) cannot hold an RFC-5 transform; the "
            "registration stays in the output scene"
        )
    if version == "0.5" and not upgrade:
        raise UnsupportedVersionError(
            f"{safe_fixed}: NGFF 0.5 has no coordinate systems to hold a transform; pass "
            "upgrade=True (--upgrade-fixed) to rewrite its metadata as 0.6 (arrays unchanged)"
        )
    new_attrs = upgrade_to_06(attrs, safe_fixed)
    ms_meta = parse_multiscale(new_attrs, url=safe_fixed)
    if len(ms_meta.spatial_indices) != len(ms_meta.axes):
        raise IncompatibleImagesError(
            f"{safe_fixed}: axes {[a.name for a in ms_meta.axes]} include non-spatial axes; "
            "ngff-dreg writes a registration only into a spatial-only image"
        )
    assert ms_meta.intrinsic_system is not None and ms_meta.world_from_intrinsic is not None
    intrinsic = ms_meta.intrinsic_system
    world = np.asarray(ms_meta.world_from_intrinsic, dtype=float)
    ms = new_attrs["ome"]["multiscales"][0]
    systems = list(ms.get("coordinateSystems", []))
    cts = list(ms.get("coordinateTransformations", []) or [])
    ours = [i for i, c in enumerate(cts)
            if isinstance(c, Mapping) and ref_name(c.get("output"))[0] == name]
    taken = [s for s in systems if isinstance(s, Mapping) and s.get("name") == name]
    if name == intrinsic or (taken and not ours):
        raise OutputExistsError(
            f"{safe_fixed}: a coordinate system named {name!r} already exists and is not a "
            "registration; choose another name"
        )
    if ours and not all(has_field_transform(cts[i]) for i in ours):
        raise OutputExistsError(
            f"{safe_fixed}: the transform to {name!r} is not a registration; choose another name"
        )
    regs = (attrs.get(MARKER_KEY) or {}).get("registrations") or {}
    rerun = scene_url is not None and (regs.get(name) or {}).get("scene") == redact_url(
        scene_url)
    if ours and not (overwrite or rerun):
        raise OutputExistsError(
            f"{safe_fixed}: already holds a registration to {name!r}; pass overwrite=True "
            "to replace it"
        )
    return version, new_attrs, intrinsic, world, ours


def check_into_image(fixed_url: str, name: str, *,
                     storage_options: Mapping[str, Any] | None = None,
                     overwrite: bool = False, upgrade: bool = False,
                     scene_url: str | None = None) -> None:
    """Check, before a run, that a registration called ``name`` can go into ``fixed_url``.

    Raises the errors :func:`write_transform_into_image` would, without writing.
    ``scene_url`` is the run's output: a registration copied from it earlier
    may be replaced (a rerun).
    """
    safe = redact_url(fixed_url)
    try:
        group = zarr_group(fixed_url, storage_options, mode="r")
    except Exception as exc:
        raise StoreAccessError(f"cannot open {safe}: {exc}") from exc
    _plan(dict(group.attrs.asdict()), safe, name, overwrite, upgrade, scene_url)


def write_transform_into_image(
    fixed_url: str,
    scene_url: str,
    *,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    scene_storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    upgrade: bool = False,
) -> str:
    """Write the registration held by ``scene_url`` into the fixed image's own group.

    Parameters
    ----------
    fixed_url:
        The fixed image's multiscale group (local path or fsspec URL); must be
        writable.
    scene_url:
        A complete ngff-dreg output scene (the ``output`` of
        :func:`ngff_dreg.register`) whose fixed image is ``fixed_url``.
    name:
        Name of the new coordinate system (the moving image's space seen from
        the fixed image). Default: from the moving image's URL.
    storage_options, scene_storage_options:
        fsspec options for the image and for the scene (never logged).
        ``scene_storage_options`` defaults to ``storage_options``.
    overwrite:
        Replace an existing registration of the same ``name`` (one copied
        from this same ``scene_url`` is always replaced: a rerun).
    upgrade:
        Allow rewriting a 0.5 image's metadata as 0.6 (arrays untouched).

    Returns
    -------
    str
        The coordinate-system name written.

    Raises
    ------
    UnsupportedVersionError
        A 0.4 image, or a 0.5 image without ``upgrade``.
    IncompatibleImagesError
        The scene was computed for another fixed image, or the image has
        non-spatial axes.
    OutputExistsError
        A registration or coordinate system called ``name`` exists and
        ``overwrite`` is False.
    StoreAccessError
        The image store cannot be written.

    Examples
    --------
    >>> write_transform_into_image("fixed.zarr", "out.zarr", name="moving")  # doctest: +SKIP

    """
    scene_opts = scene_storage_options if scene_storage_options is not None else storage_options
    safe_fixed = redact_url(fixed_url)
    transform, images = _scene_registration(scene_url, scene_opts, fixed_url)
    name = name or default_system_name(images.get("moving"))

    try:
        fixed_group = zarr_group(fixed_url, storage_options, mode="r+")
    except (OSError, PermissionError) as exc:
        raise StoreAccessError(f"cannot open {safe_fixed} for writing: {exc}") from exc
    except Exception as exc:
        raise StoreAccessError(f"{safe_fixed} is not a writable Zarr group: {exc}") from exc
    attrs = dict(fixed_group.attrs.asdict())
    version, new_attrs, intrinsic, world, ours = _plan(attrs, safe_fixed, name, overwrite,
                                                       upgrade, scene_url)
    # 1. Fields first, in a group marked incomplete.
    mapping = _copy_fields(fixed_group, safe_fixed, scene_url, scene_opts, transform, name)
    # 2. The image's metadata last, in one write.
    ms = new_attrs["ome"]["multiscales"][0]
    _add_registration(ms, transform, mapping, world, intrinsic, name, ours)
    own = dict(new_attrs.get(MARKER_KEY) or {})
    if version == "0.5" and "previous_ome" not in own:
        own["previous_ome"] = attrs["ome"]
    regs = dict(own.get("registrations") or {})
    regs[name] = {"scene": redact_url(scene_url),
                  "moving": redact_url(images["moving"]) if images.get("moving") else None}
    own["registrations"] = regs
    new_attrs[MARKER_KEY] = own
    fixed_group.attrs.put(new_attrs)
    logger.info("wrote the registration into %s as coordinate system %r%s", safe_fixed, name,
                " (metadata upgraded 0.5 -> 0.6)" if version == "0.5" else "")
    return name


def _scene_registration(
    scene_url: str, scene_opts: Mapping[str, Any] | None, fixed_url: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The scene's bijection and recorded images, checked to register ``fixed_url``."""
    scene_attrs = read_scene_attributes(scene_url, scene_opts)
    marker = scene_attrs.get(MARKER_KEY) or {}
    images = marker.get("images") or {}
    recorded = images.get("fixed")
    if recorded and location_key(str(recorded)) != location_key(redact_url(fixed_url)):
        raise IncompatibleImagesError(
            f"{redact_url(scene_url)} registers fixed image {redact_url(recorded)}, "
            f"not {redact_url(fixed_url)}"
        )
    transform = scene_attrs["ome"]["scene"]["coordinateTransformations"][0]
    if transform.get("type") != "bijection":
        raise InvalidMetadataError(
            f"{redact_url(scene_url)}: the scene's transform is not a bijection; "
            "only a forward+inverse registration can be written into an image"
        )
    return transform, images


def _copy_fields(
    fixed_group: Any,
    safe_fixed: str,
    scene_url: str,
    scene_opts: Mapping[str, Any] | None,
    transform: Mapping[str, Any],
    name: str,
) -> dict[str, str]:
    """Copy the scene's fields below the image, marked incomplete until done.

    Returns the new path of each field (scene path -> image path).
    """
    base = f"{TRANSFORMS_GROUP}/{name}"
    check_relative_path(base, safe_fixed, "coordinate-system name")
    mapping = {}
    for path in field_paths(transform):
        check_relative_path(path, redact_url(scene_url), "scene field path")
        mapping[path] = f"{base}/{path.rsplit('/', 1)[-1]}"
    scene_group = zarr_group(scene_url, scene_opts, mode="r")
    tgroup = fixed_group.require_group(TRANSFORMS_GROUP)
    reg_group = tgroup.require_group(name)
    put_marker(reg_group, "incomplete", versioned=False)
    for src, dst in mapping.items():
        _copy_group(scene_group, src, fixed_group, dst)
    put_marker(reg_group, "complete", versioned=False, scene=redact_url(scene_url))
    return mapping


def _add_registration(
    ms: dict[str, Any],
    transform: Mapping[str, Any],
    mapping: Mapping[str, str],
    world: np.ndarray,
    intrinsic: str,
    name: str,
    ours: list[int],
) -> None:
    """Add (or replace) the coordinate system ``name`` and its bijection in a multiscale."""
    systems = list(ms.get("coordinateSystems", []))
    cts = list(ms.get("coordinateTransformations", []) or [])
    fwd = rewrite_field_paths(transform["forward"], mapping)
    inv = rewrite_field_paths(transform["inverse"], mapping)
    if not np.allclose(world, np.eye(world.shape[0]), atol=1e-12):
        fwd = {"type": "sequence", "transformations": [_affine_item(world), fwd]}
        inv = {"type": "sequence", "transformations": [inv, _affine_item(np.linalg.inv(world))]}
    entry = {"type": "bijection", "forward": fwd, "inverse": inv,
             "input": {"name": intrinsic}, "output": {"name": name}}
    axes = next(copy.deepcopy(s["axes"]) for s in systems if s.get("name") == intrinsic)
    systems = [s for s in systems if s.get("name") != name] + [{"name": name, "axes": axes}]
    cts = [c for i, c in enumerate(cts) if i not in ours] + [entry]
    ms["coordinateSystems"] = systems
    ms["coordinateTransformations"] = cts
