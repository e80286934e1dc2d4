"""Writing a registration into the fixed image's own group (NGFF 0.6 multiscales transforms)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ngff_zarr.validate import validate

from ngff_dreg.errors import (
    IncompatibleImagesError,
    InvalidMetadataError,
    OutputExistsError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.info import describe
from ngff_dreg.io.omezarr import image_transform_writer as itw
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain

SHAPE = (14, 16, 18)
SPACING = (0.6, 0.7, 0.8)  # ITK order
ORIGIN = (1.0, -2.0, 3.0)


def _attrs(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def _setup(tmp_path: Path, make_test_image: Any, *, version: str = "0.6",
           oblique: bool = False) -> tuple[str, str, TransformChain, TransformChain]:
    """A fixed image and a scene registering it (known affine + smooth field)."""
    direction = small_rotation(3, 15) if oblique else None
    fixed = str(tmp_path / "fixed.zarr")
    make_test_image(fixed, SHAPE, version=version, spacing=SPACING, origin=ORIGIN,
                    direction=direction, chunks=8)
    geom = ImageGeometry(SHAPE, SPACING, ORIGIN, direction if oblique else (),
                         unit="micrometer")
    field = smooth_displacement(geom, 1.2, seed=4)
    affine = AffineTransform.from_arrays(small_rotation(3, 5) * 1.03, np.array([0.4, -0.2, 0.3]))
    fwd = TransformChain(affine, field)
    inv = TransformChain(affine.inverse(), invert_field(field), affine_first=True)
    scene = str(tmp_path / "out.zarr")
    write_field_scene(scene, fwd, inv, chunks=8, fixed_url=fixed,
                      moving_url=str(tmp_path / "moving.ome.zarr"))
    return fixed, scene, fwd, inv


def _points(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo = np.asarray(ORIGIN) + 1.0
    hi = lo + (np.asarray(SHAPE[::-1]) - 3) * np.asarray(SPACING)
    return rng.uniform(lo, hi, size=(n, 3))


def _geometries(url: str) -> list[ImageGeometry]:
    ms = open_multiscale(url)
    return [ms.geometry(k) for k in range(len(ms.levels))]


@pytest.mark.parametrize("oblique", [False, True])
def test_registration_inside_a_06_image_reads_back_the_same(tmp_path, make_test_image, oblique):
    fixed, scene, _fwd, _inv = _setup(tmp_path, make_test_image, oblique=oblique)
    before = _geometries(fixed)
    name = itw.write_transform_into_image(fixed, scene)
    assert name == "moving"
    assert "Registrations: moving" in describe(fixed)

    attrs = _attrs(Path(fixed))
    validate(attrs, version="0.6", model="image")
    validate(attrs, version="0.6", model="image", strict=True)
    ms = attrs["ome"]["multiscales"][0]
    assert "moving" in [s["name"] for s in ms["coordinateSystems"]]
    entry = ms["coordinateTransformations"][-1]
    assert entry["type"] == "bijection" and entry["output"] == {"name": "moving"}
    intrinsic = ms["datasets"][0]["coordinateTransformations"][0]["output"]["name"]
    assert entry["input"] == {"name": intrinsic}
    # field paths are inside the image group, and the fields were copied there
    text = json.dumps(entry)
    assert "coordinateTransformations/moving/fixed_to_moving" in text
    assert (Path(fixed) / "coordinateTransformations/moving/moving_to_fixed/s0").is_dir()

    # the image itself still reads with the same geometry on every level
    after = _geometries(fixed)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-12)
        np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)
        np.testing.assert_allclose(a.direction_matrix, b.direction_matrix, atol=1e-12)

    pts = _points()
    want_f = read_transform(scene).transform_points(pts)
    got_f = read_transform(fixed).transform_points(pts)
    np.testing.assert_allclose(got_f, want_f, atol=1e-6)
    want_i = read_transform(scene, inverse=True).transform_points(want_f)
    got_i = read_transform(fixed, inverse=True, coordinate_system="moving").transform_points(
        want_f)
    np.testing.assert_allclose(got_i, want_i, atol=1e-6)
    # and it really is the registration: the round trip comes back near the start
    # (the inverse field is sampled on the fixed grid, so the edges are looser)
    assert np.median(np.linalg.norm(got_i - pts, axis=1)) < 0.05


def test_05_image_needs_upgrade_and_keeps_its_geometry(tmp_path, make_test_image):
    fixed, scene, _f, _i = _setup(tmp_path, make_test_image, version="0.5")
    original = _attrs(Path(fixed))
    before = _geometries(fixed)
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        itw.write_transform_into_image(fixed, scene)
    assert _attrs(Path(fixed)) == original  # nothing changed
    assert not (Path(fixed) / "coordinateTransformations").exists()

    itw.write_transform_into_image(fixed, scene, upgrade=True, name="atlas")
    attrs = _attrs(Path(fixed))
    assert attrs["ome"]["version"] == "0.6"
    validate(attrs, version="0.6", model="image", strict=True)
    assert attrs["ngff_dreg"]["previous_ome"] == original["ome"]
    assert attrs["ngff_dreg"]["registrations"]["atlas"]["scene"] == scene
    after = _geometries(fixed)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-12)
        np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)
    pts = _points()
    np.testing.assert_allclose(read_transform(fixed).transform_points(pts),
                               read_transform(scene).transform_points(pts), atol=1e-6)


def test_04_image_is_refused(tmp_path, make_test_image):
    fixed, scene, _f, _i = _setup(tmp_path, make_test_image, version="0.4")
    with pytest.raises(UnsupportedVersionError, match=r"0\.4"):
        itw.write_transform_into_image(fixed, scene, upgrade=True)


def test_existing_registration_needs_overwrite_and_other_fixed_is_refused(
        tmp_path, make_test_image):
    fixed, scene, fwd, inv = _setup(tmp_path, make_test_image)
    itw.write_transform_into_image(fixed, scene)
    itw.write_transform_into_image(fixed, scene)  # the same scene again: a rerun, allowed
    scene2 = str(tmp_path / "out2.zarr")
    write_field_scene(scene2, fwd, inv, chunks=8, fixed_url=fixed)
    with pytest.raises(OutputExistsError, match="overwrite"):
        itw.write_transform_into_image(fixed, scene2, name="moving")
    itw.write_transform_into_image(fixed, scene2, name="moving", overwrite=True)
    assert _attrs(Path(fixed))["ngff_dreg"]["registrations"]["moving"]["scene"] == scene2
    ms = _attrs(Path(fixed))["ome"]["multiscales"][0]
    assert [c["output"]["name"] for c in ms["coordinateTransformations"]].count("moving") == 1
    assert [s["name"] for s in ms["coordinateSystems"]].count("moving") == 1
    # a second registration under another name sits beside the first
    itw.write_transform_into_image(fixed, scene, name="second")
    with pytest.raises(InvalidMetadataError, match="choose one"):
        read_transform(fixed)
    read_transform(fixed, coordinate_system="second")
    # the intrinsic system's name is not available
    with pytest.raises(OutputExistsError):
        itw.write_transform_into_image(fixed, scene, name="physical")

    other = str(tmp_path / "other.zarr")
    make_test_image(other, SHAPE, version="0.6", spacing=SPACING, origin=ORIGIN)
    with pytest.raises(IncompatibleImagesError, match="registers fixed image"):
        itw.write_transform_into_image(other, scene)


def test_interrupted_copy_leaves_the_image_unchanged_and_a_rerun_finishes(
        tmp_path, make_test_image, monkeypatch):
    fixed, scene, _f, _i = _setup(tmp_path, make_test_image)
    original = _attrs(Path(fixed))
    real = itw._copy_group
    calls = {"n": 0}

    def failing(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        real(*args)

    monkeypatch.setattr(itw, "_copy_group", failing)
    with pytest.raises(KeyboardInterrupt):
        itw.write_transform_into_image(fixed, scene)
    assert _attrs(Path(fixed)) == original
    marker = _attrs(Path(fixed) / "coordinateTransformations/moving")["ngff_dreg"]
    assert marker["status"] == "incomplete"
    with pytest.raises(InvalidMetadataError, match="no registration"):
        read_transform(fixed)
    open_multiscale(fixed)  # the image still opens as before

    monkeypatch.setattr(itw, "_copy_group", real)
    itw.write_transform_into_image(fixed, scene)  # no overwrite needed: nothing was recorded
    pts = _points()
    np.testing.assert_allclose(read_transform(fixed).transform_points(pts),
                               read_transform(scene).transform_points(pts), atol=1e-6)


def test_into_an_s3_image(s3_server, make_test_image, tmp_path):
    opts = s3_server.storage_options()
    fixed = s3_server.url(s3_server.create_bucket(), "into/fixed.zarr")
    make_test_image(fixed, SHAPE, version="0.6", spacing=SPACING, origin=ORIGIN, chunks=8,
                    storage_options=opts)
    geom = ImageGeometry(SHAPE, SPACING, ORIGIN, (), unit="micrometer")
    field = smooth_displacement(geom, 1.0, seed=2)
    a = AffineTransform.identity(3)
    scene = str(tmp_path / "out.zarr")
    write_field_scene(scene, TransformChain(a, field),
                      TransformChain(a, invert_field(field), affine_first=True), chunks=8,
                      fixed_url=fixed)
    itw.write_transform_into_image(fixed, scene, name="moving", storage_options=opts,
                                   scene_storage_options={})
    pts = _points(50)
    np.testing.assert_allclose(read_transform(fixed, opts).transform_points(pts),
                               read_transform(scene).transform_points(pts), atol=1e-6)


@pytest.mark.parametrize(("url", "want"), [
    ("s3://b/data/brain_02.ome.zarr", "brain_02"),
    ("/x/moving.zarr/", "moving"),
    (None, "moving"),
    ("/x/a b+c.zarr", "a_b_c"),
])
def test_default_system_name(url, want):
    assert itw.default_system_name(url) == want


def _stages(t: dict[str, Any]) -> list[dict[str, Any]]:
    if t["type"] == "sequence":
        return [s for item in t["transformations"] for s in _stages(item)]
    return [t]


@pytest.mark.parametrize("oblique", [False, True])
def test_ngff_zarr_reads_the_image_and_its_registration_the_same_way(
        tmp_path, make_test_image, ngff_zarr_stage_to_itk, oblique):
    import ngff_zarr

    from ngff_dreg.itk_bridge import transform_points as itk_points

    fixed, scene, _f, _i = _setup(tmp_path, make_test_image, oblique=oblique)
    before = ngff_zarr.from_ngff_zarr(fixed).images[0]
    itw.write_transform_into_image(fixed, scene)
    after = ngff_zarr.from_ngff_zarr(fixed).images[0]
    assert after.scale == before.scale and after.translation == before.translation
    assert after.data.shape == before.data.shape

    entry = _attrs(Path(fixed))["ome"]["multiscales"][0]["coordinateTransformations"][-1]
    world = np.asarray(open_multiscale(fixed).multiscale.world_from_intrinsic)
    pts = _points(80)
    # intrinsic coordinates (z, y, x) of the physical points, then back to ITK order
    p_zyx = (np.linalg.inv(world) @ np.c_[pts[:, ::-1], np.ones(len(pts))].T).T[:, :3]
    cur = p_zyx[:, ::-1].copy()
    for item in _stages(entry["forward"]):
        cur = itk_points(ngff_zarr_stage_to_itk(item, fixed, 3), cur)
    want = read_transform(fixed).transform_points(pts)
    assert np.abs(cur - want).max() < 1e-3 * min(SPACING)


def test_sharded_scene_is_copied_sharded_and_identical(tmp_path, make_test_image):
    import zarr

    fixed, _scene, fwd, inv = _setup(tmp_path, make_test_image)
    scene = str(tmp_path / "sharded.zarr")
    write_field_scene(scene, fwd, inv, chunks=2, shards=4)
    itw.write_transform_into_image(fixed, scene)
    for name in ("fixed_to_moving", "moving_to_fixed"):
        src = zarr.open_array(scene, path=f"coordinateTransformations/{name}/s0", mode="r")
        dst = zarr.open_array(fixed, path=f"coordinateTransformations/moving/{name}/s0",
                              mode="r")
        assert tuple(dst.shards) == tuple(src.shards) == (3, 4, 4, 4)
        assert tuple(dst.chunks) == (3, 2, 2, 2)
        np.testing.assert_array_equal(dst[...], src[...])
    pts = _points()
    np.testing.assert_array_equal(read_transform(fixed).transform_points(pts),
                                  read_transform(scene).transform_points(pts))
