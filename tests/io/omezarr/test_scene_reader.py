"""Any RFC-5 scene opened as a graph: our own outputs, and fields written by ngff-zarr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ngff_dreg.errors import InvalidMetadataError, PathEscapeError, StoreAccessError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.scene_reader import open_scene_graph, scene_transform
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.ngff.scene_graph import NonInvertibleTransformError
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain


def _scene(tmp_path: Path, oblique: bool) -> tuple[str, ImageGeometry]:
    fixed = ImageGeometry((18, 20, 22), (0.4, 0.7, 1.0), (2.0, 0.5, -1.0),
                          small_rotation(3, 25, 1) if oblique else None)
    fwd = smooth_displacement(fixed, 1.2, seed=4)
    a = AffineTransform.from_arrays(small_rotation(3, 7), np.array([0.5, -1.0, 0.2]))
    url = str(tmp_path / "reg.zarr")
    write_field_scene(url, TransformChain(a, fwd),
                      TransformChain(a.inverse(), invert_field(fwd), affine_first=True),
                      chunks=8)
    return url, fixed


@pytest.mark.parametrize("oblique", [False, True])
def test_our_scene_maps_as_our_own_reader(tmp_path, oblique):
    url, fixed = _scene(tmp_path, oblique)
    rng = np.random.default_rng(0)
    pts = fixed.array_index_to_physical(rng.uniform(1, np.asarray(fixed.shape) - 2, (50, 3)))
    want = read_transform(url).transform_points(pts)  # ITK order x, y, z
    got = scene_transform(url, "fixed", "moving")(pts[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    back = scene_transform(url, "moving", "fixed")(want[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(back, read_transform(url, inverse=True).transform_points(want),
                               atol=1e-5)


def _write_ngff_zarr_field(store: Path) -> tuple[Any, dict[str, Any]]:
    """An ITK displacement field converted and written by ngff-zarr; the scene around it."""
    import itk
    import ngff_zarr

    shape_zyx = (10, 12, 14)
    spacing_xyz = (0.9, 0.7, 0.5)
    origin_xyz = (-3.0, 1.0, 2.5)
    rng = np.random.default_rng(5)
    coarse = rng.normal(scale=0.8, size=(3, 4, 5, 3))
    from scipy.ndimage import zoom

    vec = np.stack([zoom(coarse[..., c], np.divide(shape_zyx, coarse.shape[:3]), order=3)
                    for c in range(3)], axis=-1).astype(np.float64)
    image = itk.image_from_array(np.ascontiguousarray(vec), is_vector=True)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    dft = itk.DisplacementFieldTransform[itk.D, 3].New()
    dft.SetDisplacementField(image)
    path = "coordinateTransformations/warp"
    t, field = ngff_zarr.itk_displacement_field_to_ngff_transform(dft, ["z", "y", "x"],
                                                                  path=path)
    ngff_zarr.to_ngff_zarr(str(store / path), ngff_zarr.to_multiscales(field, scale_factors=[]),
                           version="0.6")
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    item = {"type": "displacements", "path": t.path, "interpolation": t.interpolation or "linear"}
    attrs = {"ome": {"version": "0.6", "scene": {
        "coordinateSystems": [{"name": "fixed", "axes": axes}, {"name": "moving", "axes": axes}],
        "coordinateTransformations": [{**item, "input": {"name": "fixed"},
                                       "output": {"name": "moving"}}]}}}
    meta = store / "zarr.json"
    meta.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    return dft, item


def test_ngff_zarr_field_maps_as_ngff_zarrs_itk_conversion(tmp_path, ngff_zarr_stage_to_itk):
    pytest.importorskip("ngff_zarr")
    store = tmp_path / "ngffzarr.zarr"
    dft, item = _write_ngff_zarr_field(store)
    rng = np.random.default_rng(1)
    idx = rng.uniform(0.5, np.array([13, 11, 9]) - 0.5, (40, 3))  # x, y, z voxel
    spacing = np.array([0.9, 0.7, 0.5])
    pts = idx * spacing + np.array([-3.0, 1.0, 2.5])
    theirs = ngff_zarr_stage_to_itk(item, str(store), 3)
    want = np.array([theirs.TransformPoint([float(v) for v in p]) for p in pts])
    direct = np.array([dft.TransformPoint([float(v) for v in p]) for p in pts])
    got = scene_transform(str(store), "fixed", "moving")(pts[:, ::-1])[:, ::-1]
    assert np.abs((got - want) / spacing).max() < 1e-3
    assert np.abs((got - direct) / spacing).max() < 1e-3
    assert np.abs(got - pts).max() > 0.05  # the field moves points
    with pytest.raises(NonInvertibleTransformError, match="warp"):
        scene_transform(str(store), "moving", "fixed")


def test_the_registration_output_graph_lists_the_view_images(tmp_path):
    url, _ = _scene(tmp_path, False)
    graph = open_scene_graph(url)
    assert {"fixed", "moving"} <= set(graph.describe_names())


def _edit(store: Path, fn: Any) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    fn(doc["attributes"])
    meta.write_text(json.dumps(doc))


def test_paths_that_leave_the_store_and_bad_scenes_are_refused(tmp_path):
    url, _ = _scene(tmp_path, False)

    def escape(attrs: dict) -> None:
        t = attrs["ome"]["scene"]["coordinateTransformations"][0]
        t["forward"]["transformations"][0]["path"] = "../elsewhere"

    _edit(Path(url), escape)
    with pytest.raises(PathEscapeError, match=r"\.\./elsewhere"):
        scene_transform(url, "fixed", "moving")(np.zeros((1, 3)))

    def undeclared(attrs: dict) -> None:
        attrs["ome"]["scene"]["coordinateTransformations"][0]["output"] = {"name": "nowhere"}

    _edit(Path(url), undeclared)
    with pytest.raises(InvalidMetadataError, match=r"coordinateTransformations\[0\].*nowhere"):
        open_scene_graph(url)
    with pytest.raises(StoreAccessError):
        open_scene_graph(str(tmp_path / "absent.zarr"))


def test_scene_references_map_points_and_resample(tmp_path):
    from ngff_dreg.apply import apply_transform
    from ngff_dreg.geometry import Box
    from ngff_dreg.io.omezarr.image_writer import write_multiscale
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
    from ngff_dreg.io.omezarr.scene_reader import parse_scene_reference
    from ngff_dreg.points import transform_points

    assert parse_scene_reference("s3://bucket/x.zarr") is None
    assert parse_scene_reference("x.zarr") is None
    assert parse_scene_reference("s3://b/x.zarr:view/fixed:moving") == (
        "s3://b/x.zarr", "view/fixed", "moving")
    url, fixed = _scene(tmp_path, False)
    rng = np.random.default_rng(2)
    pts = fixed.array_index_to_physical(rng.uniform(1, np.asarray(fixed.shape) - 2, (30, 3)))
    np.testing.assert_allclose(transform_points(f"{url}:fixed:moving", pts),
                               read_transform(url).transform_points(pts), atol=1e-5)
    ys = read_transform(url).transform_points(pts)
    np.testing.assert_allclose(transform_points(f"{url}:fixed:moving", ys, inverse=True),
                               read_transform(url, inverse=True).transform_points(ys),
                               atol=1e-5)
    # apply through the scene reference resamples as through the scene itself
    img = str(tmp_path / "img.zarr")
    g = ImageGeometry((18, 20, 22), (0.4, 0.7, 1.0), (2.0, 0.5, -1.0))
    write_multiscale(img, rng.random(g.shape, dtype=np.float32), g, n_levels=1)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    apply_transform(img, img, url, a, n_levels=1)
    apply_transform(img, img, f"{url}:fixed:moving", b, n_levels=1)
    box = Box.full(g.shape)
    np.testing.assert_allclose(OMEZarrReaderConstructor(a)().read_box(box),
                               OMEZarrReaderConstructor(b)().read_box(box), atol=1e-4)


@pytest.mark.parametrize("kw", [
    {"system": "xyz", "field": "xyz"},
    {"system": "xyz", "field": "zyx"},  # the field's axes matched to the system's by name
    {"system": "zyx", "field": "xyz"},
    {"leading": "t"},
    {"leading": "c", "field": "zyx"},
], ids=["xyz", "xyz-field-zyx", "zyx-field-xyz", "time", "channel"])
def test_scenes_in_any_axis_order_map_points_like_itk(tmp_path, hand_scene, kw):
    from ngff_dreg.io.omezarr.scene_reader import SceneMap
    from ngff_dreg.points import transform_points

    case = hand_scene(tmp_path / "hand.zarr", **kw)
    pts = case.inside(40, seed=3, margin=0.2)
    got = transform_points(f"{case.url}:fixed:moving", pts)  # x, y, z, whatever the scene's
    assert np.abs((got - case.expected(pts)) / case.voxel).max() < 1e-6
    assert np.abs(got - pts).max() > 0.3  # the map moves points
    scene = SceneMap(case.url, "fixed", "moving")
    grid = scene.default_grid()
    if kw.get("leading"):
        assert grid is None  # the field sits inside a byDimension
    else:
        assert grid is not None and grid.is_axis_aligned
        np.testing.assert_allclose(grid.spacing, case.spacing)
        np.testing.assert_allclose(grid.origin, case.origin)
        assert grid.shape == case.size[::-1]


@pytest.mark.parametrize("dims", ["zyx", "xyz"])
def test_ngff_zarr_scenes_in_either_axis_order_map_like_itk(tmp_path, ngff_zarr_scene, dims):
    from ngff_dreg.points import transform_points

    case = ngff_zarr_scene(tmp_path / f"nz-{dims}.zarr", dims)
    pts = case.inside(40, seed=4, margin=0.2)
    got = transform_points(f"{case.url}:fixed:moving", pts)
    assert np.abs((got - case.expected(pts)) / case.voxel).max() < 1e-3


def test_points_that_do_not_fit_the_systems_are_refused(tmp_path, hand_scene):
    from ngff_dreg.ngff.scene_axes import AxisMismatchError
    from ngff_dreg.points import transform_points

    case = hand_scene(tmp_path / "hand.zarr")
    with pytest.raises(AxisMismatchError, match="'fixed'"):
        transform_points(f"{case.url}:fixed:moving", np.zeros((3, 2)))
    other = hand_scene(tmp_path / "ijk.zarr")  # (maps are cached by URL in a process)
    _edit(Path(other.url), lambda attrs: attrs["ome"]["scene"]["coordinateSystems"][1].update(
        axes=[{"name": n, "type": "space"} for n in "ijk"]))
    with pytest.raises(AxisMismatchError, match=r"'moving'.*i\[space\]"):
        transform_points(f"{other.url}:fixed:moving", np.zeros((3, 3)))
