"""NGFF 0.5 -> 0.6 metadata upgrade (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest
from ngff_zarr.validate import validate

from ngff_dreg.errors import InvalidMetadataError, UnsupportedVersionError
from ngff_dreg.ngff.metadata import parse_multiscale
from ngff_dreg.ngff.upgrade import upgrade_to_06


def _attrs_05(ms_level: list | None = None) -> dict:
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    ms = {
        "name": "img",
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [2.0, 0.5, 0.5]},
                {"type": "translation", "translation": [1.0, 2.0, 3.0]}]},
            {"path": "1", "coordinateTransformations": [
                {"type": "scale", "scale": [4.0, 1.0, 1.0]}]},
        ],
    }
    if ms_level is not None:
        ms["coordinateTransformations"] = ms_level
    return {"ome": {"version": "0.5", "multiscales": [ms],
                    "omero": {"channels": [{"label": "a"}]}}}


@pytest.mark.parametrize("ms_level", [None, [{"type": "scale", "scale": [1.5, 1.0, 2.0]},
                                             {"type": "translation",
                                              "translation": [0.0, -1.0, 4.0]}]])
def test_upgrade_keeps_every_level_geometry(ms_level):
    old = _attrs_05(ms_level)
    new = upgrade_to_06(old, "mem")
    assert old == _attrs_05(ms_level)  # input untouched
    assert new["ome"]["version"] == "0.6"
    assert new["ome"]["omero"] == old["ome"]["omero"]
    validate(new, version="0.6", model="image")
    a = parse_multiscale(old, url="old")
    b = parse_multiscale(new, url="new")
    assert b.version == "0.6" and b.intrinsic_system == "physical"
    for la, lb in zip(a.levels, b.levels):
        np.testing.assert_allclose(la.scale, lb.scale)
        np.testing.assert_allclose(la.translation, lb.translation)
    np.testing.assert_allclose(b.world_from_intrinsic, np.eye(4))


def test_upgrade_refuses_04_and_bad_05():
    v04 = {"multiscales": [{"version": "0.4", "axes": [{"name": "x", "type": "space"},
                                                      {"name": "y", "type": "space"}],
                            "datasets": [{"path": "0", "coordinateTransformations": [
                                {"type": "scale", "scale": [1, 1]}]}]}]}
    with pytest.raises(UnsupportedVersionError):
        upgrade_to_06(v04)
    bad = _attrs_05([{"type": "affine", "affine": [[1, 0, 0, 0]] * 3}])
    with pytest.raises(InvalidMetadataError):
        upgrade_to_06(bad)
