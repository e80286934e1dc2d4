"""The registration output opens in the real readers: napari-ome-zarr, ome-zarr-py, ngff-zarr.

One small 2-D registration with ``resample=True``; each reader is called as a
user would call it (napari's reader function without a GUI), and must find the
fixed image and the resampled moving image on the same grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ngff_dreg.demo import make_demo
from ngff_dreg.geometry import Box
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.io.omezarr.view_writer import (
    LEGACY_RESAMPLED,
    VIEW_FIXED,
    VIEW_GROUP,
    VIEW_RESAMPLED,
    recorded_location,
    resampled_url,
)
from ngff_dreg.pipeline import register
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule


@pytest.fixture(scope="module")
def registered(tmp_path_factory, dask_client):
    d = tmp_path_factory.mktemp("view")
    pair = make_demo(d, synthetic=True, ndim=2, size=96, max_displacement_voxels=3.0, chunks=32)
    sched = Schedule(GlobalStage(level=1), [
        BlockStage(level=0, block_size=48, overlap=0.5, method_options={"mesh_size": 3},
                   field_spacing_factor=3)])
    register(pair.fixed, pair.moving, str(d / "out.zarr"), schedule=sched, client=dask_client,
             progress=False, resample=True)
    return pair, str(d / "out.zarr")


def _attrs(path: str) -> dict:
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]


def test_scene_references_images_relative_to_itself(registered):
    pair, out = registered
    scene = _attrs(out)["ome"]["scene"]
    reg, link = scene["coordinateTransformations"][:2]
    assert reg["type"] == "bijection"
    assert reg["input"]["path"] == VIEW_FIXED
    assert link == {"type": "identity",
                    "input": {"path": VIEW_RESAMPLED, "name": link["input"]["name"]},
                    "output": {"path": VIEW_FIXED, "name": link["input"]["name"]}}
    for ref in (reg["input"], link["input"], link["output"]):
        assert (Path(out) / ref["path"] / "zarr.json").is_file()
    view = _attrs(f"{out}/{VIEW_GROUP}")["ome"]["scene"]["coordinateTransformations"]
    assert [(t["input"]["path"], t["output"]["path"]) for t in view] == [
        ("moving_resampled", "fixed")]
    # the recorded inputs are absolute, so the output reads the same from anywhere
    images = _attrs(out)["ngff_dreg"]["images"]
    assert images["fixed"] == recorded_location(pair.fixed)
    assert os.path.isabs(images["fixed"]) and os.path.isabs(images["moving"])


def test_fixed_copy_equals_the_fixed_image_and_transform_still_reads(registered):
    pair, out = registered
    shape = pair.fixed_geometry.shape
    copy = OMEZarrReaderConstructor(f"{out}/{VIEW_FIXED}")()
    assert copy.geometry == pair.fixed_geometry
    np.testing.assert_allclose(copy.read_box(Box.full(shape)),
                               OMEZarrReaderConstructor(pair.fixed)().read_box(Box.full(shape)),
                               atol=1e-5)
    pts = np.asarray([[30.0, 40.0], [50.0, 20.0]]) * np.asarray(pair.fixed_geometry.spacing)
    fwd = read_transform(out).transform_points(pts)
    assert np.all(np.isfinite(fwd)) and not np.allclose(fwd, pts)
    assert resampled_url(out) == f"{out}/{VIEW_RESAMPLED}"


def test_recorded_locations_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recorded_location("a/fixed.zarr") == str(tmp_path / "a" / "fixed.zarr")
    assert recorded_location("s3://bucket/f.zarr") == "s3://bucket/f.zarr"
    assert recorded_location(None) is None


def test_legacy_resampled_location_is_still_found(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "old.zarr" / LEGACY_RESAMPLED), mode="w")
    assert resampled_url(str(tmp_path / "old.zarr")).endswith(f"old.zarr/{LEGACY_RESAMPLED}")
    with pytest.raises(FileNotFoundError, match="holds no resampled image"):
        resampled_url(str(tmp_path / "none.zarr"))


def test_napari_reader_gives_both_layers_in_register(registered):
    pytest.importorskip("napari_ome_zarr")
    from napari_ome_zarr._reader import napari_get_reader

    _, out = registered
    reader = napari_get_reader(f"{out}/{VIEW_GROUP}")
    assert reader is not None
    layers = reader(f"{out}/{VIEW_GROUP}")
    assert len(layers) == 2
    (d0, p0, k0), (d1, p1, k1) = layers
    assert k0 == k1 == "image"
    assert {p0["name"], p1["name"]} == {"fixed", "moving_resampled"}
    assert d0[0].shape == d1[0].shape
    np.testing.assert_allclose(p0["scale"], p1["scale"])
    np.testing.assert_allclose(p0["affine"], p1["affine"])
    assert not np.allclose(np.asarray(d0[0]), 0) and not np.allclose(np.asarray(d1[0]), 0)


def test_ome_zarr_reader_opens_both_images_with_equal_transforms(registered):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, out = registered
    found = {}
    for path in (VIEW_FIXED, VIEW_RESAMPLED):
        nodes = list(Reader(parse_url(f"{out}/{path}"))())
        assert nodes, path
        found[path] = nodes[0]
    a, b = (found[p].metadata["coordinateTransformations"] for p in (VIEW_FIXED, VIEW_RESAMPLED))
    assert a == b
    shapes = {p: [d.shape for d in node.data] for p, node in found.items()}
    assert shapes[VIEW_FIXED] == shapes[VIEW_RESAMPLED]


def test_ngff_zarr_scene_reader_finds_both_images(registered):
    from ngff_zarr import from_ome_zarr

    pair, out = registered
    # (ngff-zarr reads a path below "x.zarr/" as a node of x.zarr, never as a scene
    # of its own, so out.zarr/view is not tried here: the root scene finds both.)
    for root, prefix in ((out, f"{VIEW_GROUP}/"),):
        scene = from_ome_zarr(root, kind="scene")
        assert set(scene.images) == {f"{prefix}fixed", f"{prefix}moving_resampled"}
        fixed, warped = (scene.images[f"{prefix}{k}"].images[0]
                         for k in ("fixed", "moving_resampled"))
        assert fixed.scale == warped.scale and fixed.translation == warped.translation
        np.testing.assert_allclose([fixed.scale[a] for a in fixed.dims],
                                   pair.fixed_geometry.spacing[::-1])


def test_info_and_transform_coords_read_the_output_as_a_scene(registered):
    from click.testing import CliRunner

    from ngff_dreg.cli import app
    from ngff_dreg.info import describe

    pair, out = registered
    text = describe(out)
    assert "view/fixed/physical" in text and "view/moving_resampled/physical" in text
    assert "view/fixed/physical -> moving: bijection (invertible)" in text
    pts = np.asarray([[30.0, 40.0], [50.0, 20.0]]) * np.asarray(pair.fixed_geometry.spacing)
    want = read_transform(out).transform_points(pts)
    res = CliRunner().invoke(app, ["transform-coords", out, "view/fixed", "moving",
                                   json.dumps(pts[:, ::-1].tolist())])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.asarray(json.loads(res.output)["coordinates"])[:, ::-1], want,
                               atol=1e-6)
    # moving -> the resampled image: through the stored inverse, then the identity
    res = CliRunner().invoke(app, ["transform-coords", out, "moving", "view/moving_resampled",
                                   json.dumps(want[:, ::-1].tolist())])
    back = np.asarray(json.loads(res.output)["coordinates"])[:, ::-1]
    np.testing.assert_allclose(back, read_transform(out, inverse=True).transform_points(want),
                               atol=1e-6)


def test_both_scenes_validate_against_the_06_schema(registered):
    from ngff_zarr.validate import validate

    _, out = registered
    validate(_attrs(out), version="0.6", model="scene")
    validate(_attrs(f"{out}/{VIEW_GROUP}"), version="0.6", model="scene")
    for path in (VIEW_FIXED, VIEW_RESAMPLED):  # plain 0.5 images
        validate(_attrs(f"{out}/{path}"), version="0.5", model="image")
