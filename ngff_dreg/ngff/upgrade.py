"""Rewrite NGFF 0.5 multiscale metadata as NGFF 0.6 (RFC-5), metadata only.

Both versions live in Zarr v3, and their arrays are laid out the same way, so
an upgrade touches ``zarr.json`` attributes and nothing else. It is needed to
store a registration *inside* an image (0.5 has no coordinate systems to
name a transform's output).

The conversion, per multiscale:

* ``axes`` become one coordinate system named ``physical``;
* each dataset's ``[scale, translation?]`` becomes one RFC-5 transform with
  ``input: {path}`` and ``output: {name: "physical"}``;
* a 0.5 multiscales-level ``scale``/``translation`` (applied to every level)
  is folded into each dataset's own transform, which keeps the intrinsic
  system's meaning without a second coordinate system.

Everything else under ``ome`` (``omero``, ``name``, ``type``, ``metadata``)
is kept. Label groups below the image are not touched.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from ngff_dreg.errors import UnsupportedVersionError
from ngff_dreg.ngff.metadata import detect_version, parse_multiscale
from ngff_dreg.ngff.transforms import scale_translation

__all__ = ["PHYSICAL_SYSTEM", "upgrade_to_06"]

PHYSICAL_SYSTEM = "physical"


def upgrade_to_06(attrs: Mapping[str, Any], url: str = "<memory>") -> dict[str, Any]:
    """New group attributes: the 0.5 image ``attrs`` rewritten as NGFF 0.6.

    Parameters
    ----------
    attrs:
        The group's ``zarr.json`` attributes (``{"ome": {"version": "0.5", ...}}``).
    url:
        The group, for messages.

    Returns
    -------
    dict
        A new attribute mapping (the input is not modified). A 0.6 input is
        returned unchanged (as a copy).

    Raises
    ------
    UnsupportedVersionError
        For 0.4 metadata (Zarr v2 cannot hold 0.6 metadata).
    InvalidMetadataError
        For malformed 0.5 metadata.

    """
    version, multiscales, _ = detect_version(attrs, url)
    out = copy.deepcopy(dict(attrs))
    if version == "0.6":
        return out
    if version != "0.5":
        raise UnsupportedVersionError(
            f"{url}: NGFF {version} (Zarr v2) cannot be upgraded in place to 0.6 (Zarr v3); "
            "convert the image to Zarr v3 first"
        )
    parse_multiscale(attrs, url=url)  # validates before anything is rewritten
    new_ms = []
    for k, ms in enumerate(multiscales):
        key = f"ome.multiscales[{k}]"
        axes = ms["axes"]
        n = len(axes)
        s_ms, t_ms = scale_translation(ms.get("coordinateTransformations"), n, url,
                                        f"{key}.coordinateTransformations")
        datasets = []
        for i, ds in enumerate(ms["datasets"]):
            s, t = scale_translation(ds.get("coordinateTransformations"), n, url,
                                      f"{key}.datasets[{i}].coordinateTransformations")
            s, t = s * s_ms, t * s_ms + t_ms
            scale: dict[str, Any] = {"type": "scale", "scale": [float(v) for v in s]}
            ref: dict[str, Any] = {
                "input": {"path": ds["path"]}, "output": {"name": PHYSICAL_SYSTEM}
            }
            ct: dict[str, Any]
            if np.any(t != 0):
                ct = {"type": "sequence", **ref, "transformations": [
                    scale, {"type": "translation", "translation": [float(v) for v in t]}]}
            else:
                ct = {**scale, **ref}
            datasets.append({**{k2: v for k2, v in ds.items()
                                if k2 != "coordinateTransformations"},
                             "coordinateTransformations": [ct]})
        body = {k2: v for k2, v in ms.items()
                if k2 not in ("axes", "datasets", "coordinateTransformations", "version")}
        body["coordinateSystems"] = [{"name": PHYSICAL_SYSTEM, "axes": copy.deepcopy(axes)}]
        body["datasets"] = datasets
        new_ms.append(body)
    ome = dict(out["ome"])
    ome["version"] = "0.6"
    ome["multiscales"] = new_ms
    out["ome"] = ome
    return out
