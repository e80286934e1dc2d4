"""The NGFF 0.6 version string we write is the one ngff-zarr writes and its 0.6 schemas accept."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from ngff_zarr.validate import validate

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import NGFF_VERSION
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.ngff.metadata import parse_multiscale


def _accepted_versions() -> list[str]:
    schema = resources.files("ngff_zarr") / "spec" / "0.6" / "schemas" / "_version.schema"
    return list(json.loads(schema.read_text())["enum"])


def test_written_version_is_accepted_by_the_bundled_06_schema() -> None:
    assert NGFF_VERSION in _accepted_versions()
    # and every spelling that schema accepts reads back as 0.6
    for v in _accepted_versions():
        attrs = {"ome": {"version": v, "multiscales": [{
            "coordinateSystems": [{"name": "p", "axes": [
                {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]}],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 1], "input": {"path": "0"},
                 "output": {"name": "p"}}]}]}]}}
        assert parse_multiscale(attrs).version == "0.6"


def test_06_image_validates_with_the_06_schemas(tmp_path: Path) -> None:
    data = np.zeros((8, 10, 12), np.uint16)
    theta = 0.2
    direction = ((np.cos(theta), -np.sin(theta), 0.0), (np.sin(theta), np.cos(theta), 0.0),
                 (0.0, 0.0, 1.0))
    geom = ImageGeometry(shape=data.shape, spacing=(1.0, 2.0, 3.0), origin=(1.0, 0.0, 0.0),
                         direction=direction, unit="micrometer")
    url = tmp_path / "img.zarr"
    write_multiscale(str(url), data, geom, version="0.6", chunks=8, n_levels=2)
    attrs = json.loads((url / "zarr.json").read_text())["attributes"]
    assert attrs["ome"]["version"] == NGFF_VERSION
    validate(attrs, version="0.6", model="image")
    validate(attrs, version="0.6", model="image", strict=True)
