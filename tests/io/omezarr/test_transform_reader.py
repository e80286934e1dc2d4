"""Reading transform scenes back: round trips, laziness, ITK export, ngff-zarr interop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import itk
import numpy as np
import pytest

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import ZarrFieldLoader, write_field_scene
from ngff_dreg.io.omezarr.transform_reader import export_itk, read_transform, to_itk_transform
from ngff_dreg.itk_bridge import transform_points as itk_points
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain

CASES = [
    (2, False, False), (2, True, True), (3, False, False), (3, False, True), (3, True, True),
]


def _setup(tmp_path: Path, ndim: int, oblique: bool, with_affine: bool
           ) -> tuple[str, TransformChain, TransformChain, ImageGeometry]:
    shape = (26, 30) if ndim == 2 else (18, 20, 22)
    fixed = ImageGeometry(shape, tuple(0.4 + 0.3 * i for i in range(ndim)),
                          tuple(2.0 - 1.5 * i for i in range(ndim)),
                          small_rotation(ndim, 25, 1 if ndim == 3 else 0) if oblique else None)
    fwd = smooth_displacement(fixed, 1.2, seed=ndim + 10)
    m = small_rotation(ndim, 7) @ np.diag(np.linspace(0.95, 1.05, ndim))
    a = (AffineTransform.from_arrays(m, np.linspace(-1, 1, ndim))
         if with_affine else AffineTransform.identity(ndim))
    f, i = TransformChain(a, fwd), TransformChain(a.inverse(), invert_field(fwd), affine_first=True)
    url = str(tmp_path / "reg.zarr")
    write_field_scene(url, f, i, chunks=8)
    return url, f, i, fixed


def _points(geom: ImageGeometry, n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return geom.array_index_to_physical(rng.uniform(0, np.asarray(geom.shape) - 1,
                                                    (n, geom.ndim)))


@pytest.mark.parametrize(("ndim", "oblique", "with_affine"), CASES)
def test_round_trip_forward_and_inverse(tmp_path, ndim, oblique, with_affine):
    url, f, i, fixed = _setup(tmp_path, ndim, oblique, with_affine)
    rf = read_transform(url)
    ri = read_transform(url, inverse=True)
    assert rf.field is not None and rf.field.data is None  # lazy
    assert isinstance(rf.field.loader, ZarrFieldLoader)
    pts = _points(fixed)
    np.testing.assert_allclose(rf.transform_points(pts), f.transform_points(pts), atol=1e-5)
    ys = f.transform_points(pts)
    np.testing.assert_allclose(ri.transform_points(ys), i.transform_points(ys), atol=1e-5)
    # the field grid keeps the fixed image's direction and spacing
    np.testing.assert_allclose(rf.field.geometry.direction_matrix,
                               f.field.geometry.direction_matrix, atol=1e-9)
    np.testing.assert_allclose(rf.field.geometry.spacing, f.field.geometry.spacing)
    # ITK composite from the stored scene maps the same way
    itx = to_itk_transform(url)
    np.testing.assert_allclose(itk_points(itx, pts[:50]), f.transform_points(pts[:50]), atol=1e-4)


def test_export_for_itk_tools(tmp_path):
    url, f, _, fixed = _setup(tmp_path, 3, True, True)
    pts = _points(fixed, 60)
    h5 = str(tmp_path / "t.h5")
    export_itk(url, h5)
    back = itk.transformread(h5)
    composite = itk.CompositeTransform[itk.D, 3].New()
    for t in back[::-1]:  # transformread lists the composite's members
        composite.AddTransform(t)
    tx = back[0] if len(back) == 1 else composite
    np.testing.assert_allclose(itk_points(tx, pts), f.transform_points(pts), atol=1e-4)
    nrrd = str(tmp_path / "t.nrrd")
    export_itk(f, nrrd)
    from ngff_dreg.itk_bridge import displacement_field_to_itk, field_from_itk

    field_tx = displacement_field_to_itk(*field_from_itk(itk.imread(nrrd)))
    # exact inside the grid (the total map is linear between nodes)
    g = f.field.geometry
    rng = np.random.default_rng(1)
    inner = g.index_to_physical(rng.uniform(0, np.asarray(g.size) - 1, (60, 3)))
    np.testing.assert_allclose(itk_points(field_tx, inner), f.transform_points(inner), atol=1e-3)


# ---------------------------------------------------------------- ngff-zarr interop
def _stages(t: dict[str, Any]) -> list[dict[str, Any]]:
    return t["transformations"] if t["type"] == "sequence" else [t]


@pytest.mark.parametrize(("ndim", "oblique", "with_affine"), CASES)
def test_ngff_zarr_reads_our_field_the_same_way(tmp_path, ndim, oblique, with_affine,
                                                ngff_zarr_stage_to_itk):
    url, f, i, fixed = _setup(tmp_path, ndim, oblique, with_affine)
    scene = json.loads((Path(url) / "zarr.json").read_text())["attributes"]["ome"]["scene"]
    bij = scene["coordinateTransformations"][0]
    voxel = min(fixed.spacing)
    for direction, ours, start in (("forward", f, _points(fixed)),
                                   ("inverse", i, f.transform_points(_points(fixed)))):
        pts = start.copy()
        for item in _stages(bij[direction]):
            pts = itk_points(ngff_zarr_stage_to_itk(item, url, ndim), pts)
        err = np.abs(pts - ours.transform_points(start)).max()
        assert err < 1e-3 * voxel, (direction, err)


# ---------------------------------------------------------------- paths stay inside the store
def _edit(path: Path, fn: Any) -> None:
    meta = json.loads(path.read_text())
    fn(meta["attributes"])
    path.write_text(json.dumps(meta))


def test_a_field_path_outside_the_scene_is_refused(tmp_path):
    from ngff_dreg.errors import PathEscapeError

    url, *_ = _setup(tmp_path / "a", 3, False, False)
    _setup(tmp_path / "b", 3, False, True)  # a real store next door
    rel = "../../b/reg.zarr/coordinateTransformations/fixed_to_moving"

    def point_outside(attrs: dict) -> None:
        attrs["ome"]["scene"]["coordinateTransformations"][0]["forward"]["path"] = rel

    _edit(Path(url) / "zarr.json", point_outside)
    with pytest.raises(PathEscapeError, match=r"displacements\.path"):
        read_transform(url)
    read_transform(url, inverse=True)  # the untouched inverse still reads


def test_a_field_level_path_outside_its_group_is_refused(tmp_path):
    from ngff_dreg.errors import PathEscapeError

    url, *_ = _setup(tmp_path, 3, False, False)

    def point_outside(attrs: dict) -> None:
        attrs["ome"]["multiscales"][0]["datasets"][0]["path"] = "../moving_to_fixed/s0"

    _edit(Path(url) / "coordinateTransformations/fixed_to_moving/zarr.json", point_outside)
    with pytest.raises(PathEscapeError, match="datasets"):
        read_transform(url)


def test_a_scene_whose_axes_are_not_zyx_is_refused_not_misread(tmp_path, ngff_zarr_scene):
    """This reader is positional: a scene in x, y, z goes through SCENE:SOURCE:TARGET."""
    from ngff_dreg.errors import InvalidMetadataError

    ours = ngff_zarr_scene(tmp_path / "zyx.zarr", "zyx")
    pts = ours.inside(20, seed=1)
    got = read_transform(ours.url).transform_points(pts)  # z, y, x: read positionally
    assert np.abs((got - ours.expected(pts)) / ours.voxel).max() < 1e-3
    theirs = ngff_zarr_scene(tmp_path / "xyz.zarr", "xyz")
    with pytest.raises(InvalidMetadataError, match=r"'fixed' has spatial axes x, y, z.*SOURCE"):
        read_transform(theirs.url)
