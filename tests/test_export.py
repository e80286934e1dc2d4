"""Exporting a registration output or any RFC-5 scene: for ITK tools (read back with plain
ITK) and for BigWarp (read back as its Java reader does)."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import numpy as np
import pytest

from ngff_dreg.errors import (
    InvalidMetadataError,
    NgffDregError,
    OutputExistsError,
    StoreNotFoundError,
    UnsupportedFormatError,
)
from ngff_dreg.export import export_kind, export_transform
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.transform_reader import read_transform, to_itk_transform
from ngff_dreg.ngff.scene_graph import NonInvertibleTransformError
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain

FIXED = ImageGeometry((14, 16, 18), (0.5, 0.7, 0.9), (2.0, 0.5, -1.0), small_rotation(3, 20, 1))
VOXEL = min(FIXED.spacing)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registration output: an oblique field and an affine, forward and inverse."""
    fwd = smooth_displacement(FIXED, 1.5, seed=4)
    m = small_rotation(3, 6) @ np.diag([0.97, 1.02, 1.04])
    a = AffineTransform.from_arrays(m, np.array([1.0, -0.5, 0.8]))
    url = str(tmp_path_factory.mktemp("scene") / "out.zarr")
    write_field_scene(
        url,
        TransformChain(a, fwd),
        TransformChain(a.inverse(), invert_field(fwd), affine_first=True),
        chunks=8,
    )
    return url


def _map(transform, points: np.ndarray) -> np.ndarray:
    return np.array([np.asarray(transform.TransformPoint(p.tolist())) for p in points])


def _read_transform_file(path: Path):
    """An ITK transform file as one transform (``transformread`` lists a composite's parts)."""
    parts = itk.transformread(str(path))
    if len(parts) == 1:
        return parts[0]
    composite = itk.CompositeTransform[itk.D, 3].New()
    for t in parts[::-1]:
        composite.AddTransform(t)
    return composite


def _read_field_image(path: Path):
    """A displacement field image as a ``DisplacementFieldTransform``, and the image."""
    image = itk.imread(str(path))
    vectors = np.asarray(itk.array_from_image(image), dtype=np.float64)
    assert vectors.ndim == 4 and vectors.shape[-1] == 3  # z, y, x, components x/y/z
    field = itk.image_from_array(np.ascontiguousarray(vectors), is_vector=True)
    field.SetOrigin(image.GetOrigin())
    field.SetSpacing(image.GetSpacing())
    field.SetDirection(image.GetDirection())
    transform = itk.DisplacementFieldTransform[itk.D, 3].New()
    transform.SetDisplacementField(field)
    return transform, field


def _inside(field, n: int, seed: int, nodes: bool) -> np.ndarray:
    """Physical points inside the field grid (its nodes, or anywhere strictly inside)."""
    size = np.asarray(field.GetLargestPossibleRegion().GetSize())  # x, y, z
    rng = np.random.default_rng(seed)
    idx = rng.integers(1, size - 1, (n, 3)) if nodes else rng.uniform(1, size - 2, (n, 3))
    origin = np.asarray(field.GetOrigin())
    direction = itk.array_from_matrix(field.GetDirection())
    return origin + (idx * np.asarray(field.GetSpacing())) @ direction.T


def _start_points(scene: str, inverse: bool, n: int = 80) -> np.ndarray:
    rng = np.random.default_rng(7)
    pts = FIXED.array_index_to_physical(rng.uniform(0, np.asarray(FIXED.shape) - 1, (n, 3)))
    if inverse:  # moving-space points: where the forward map sends fixed points
        return _map(to_itk_transform(scene), pts)
    return pts


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
def test_transform_file_maps_like_the_in_memory_transform(scene, tmp_path, suffix, inverse):
    path = export_transform(scene, tmp_path / f"t{suffix}", inverse=inverse)
    assert path.is_file()
    back = _read_transform_file(path)
    expected = to_itk_transform(scene, inverse=inverse)
    pts = _start_points(scene, inverse)
    err = np.abs(_map(back, pts) - _map(expected, pts)).max()
    assert err < 1e-3 * VOXEL, err
    # one composite: the affine and the displacement field
    assert type(back).__name__ == "itkCompositeTransformD3"
    names = sorted(back.GetNthTransform(i).GetNameOfClass()
                   for i in range(back.GetNumberOfTransforms()))
    assert names == ["AffineTransform", "DisplacementFieldTransform"], names


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_forward_field_image_maps_like_the_in_memory_transform(scene, tmp_path, suffix):
    path = export_transform(scene, tmp_path / f"field{suffix}")
    back, field = _read_field_image(path)
    grid = read_transform(scene).field.geometry  # the image sits on the stored field's grid
    assert itk.size(field) == itk.Size[3](grid.size)
    np.testing.assert_allclose(itk.array_from_matrix(field.GetDirection()),
                               grid.direction_matrix, atol=1e-6)
    np.testing.assert_allclose(itk.spacing(field), grid.spacing, rtol=1e-6)
    expected = to_itk_transform(scene)
    pts = _inside(field, 80, seed=2, nodes=False)  # exact between nodes for the forward map
    err = np.abs(_map(back, pts) - _map(expected, pts)).max()
    assert err < 1e-3 * VOXEL, err


def test_inverse_field_image_maps_like_the_in_memory_transform_at_its_nodes(scene, tmp_path):
    path = export_transform(scene, tmp_path / "inverse.nii.gz", inverse=True)
    back, field = _read_field_image(path)
    expected = to_itk_transform(scene, inverse=True)
    # Exact at the nodes: the inverse applies its affine first, so between
    # nodes its total displacement is not linear (the .h5 export is exact there).
    pts = _inside(field, 80, seed=3, nodes=True)
    err = np.abs(_map(back, pts) - _map(expected, pts)).max()
    assert err < 1e-3 * VOXEL, err


def test_export_kind_follows_the_extension():
    assert export_kind("a/b/T.H5") == "transform"
    assert export_kind("x.tfm") == "transform"
    assert export_kind("warp.nii.gz") == "field"
    assert export_kind("warp.nrrd") == "field"
    with pytest.raises(UnsupportedFormatError, match=r"warp\.png.*\.h5.*\.nii\.gz"):
        export_kind("warp.png")


def test_bad_destinations_are_our_errors(scene, tmp_path):
    with pytest.raises(UnsupportedFormatError, match=r"t\.json"):
        export_transform(scene, tmp_path / "t.json")
    with pytest.raises(UnsupportedFormatError, match="local"):
        export_transform(scene, "s3://bucket/t.h5")
    existing = tmp_path / "t.h5"
    existing.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"t\.h5"):
        export_transform(scene, existing)
    assert existing.read_bytes() == b"old"
    export_transform(scene, existing, overwrite=True)
    assert existing.read_bytes() != b"old"
    nested = export_transform(scene, tmp_path / "new" / "dir" / "t.nrrd")
    assert nested.is_file()


def test_bad_outputs_are_our_errors(tmp_path, make_test_image):
    with pytest.raises(StoreNotFoundError):
        export_transform(str(tmp_path / "missing.zarr"), tmp_path / "t.h5")
    image = str(tmp_path / "image.ome.zarr")
    make_test_image(image, shape=(8, 8, 8), version="0.5")
    with pytest.raises(NgffDregError, match=r"image\.ome\.zarr"):
        export_transform(image, tmp_path / "t.h5")
    fwd = smooth_displacement(FIXED, 1.0, seed=1)
    forward_only = str(tmp_path / "forward_only.zarr")
    write_field_scene(forward_only, TransformChain(AffineTransform.identity(3), fwd), chunks=8)
    with pytest.raises(InvalidMetadataError, match=r"forward_only\.zarr.*no inverse"):
        export_transform(forward_only, tmp_path / "t.h5", inverse=True)
    assert not (tmp_path / "t.h5").exists()


# --------------------------------------------- any RFC-5 scene: SCENE[:SOURCE:TARGET]
def _scene_error(case, back, pts) -> float:
    """Largest difference, in field voxels, between a read-back transform and the scene."""
    return float(np.abs((_map(back, pts) - case.expected(pts)) / case.voxel).max())


@pytest.mark.parametrize("dims", ["zyx", "xyz"])
@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_a_scene_written_by_ngff_zarr_exports_as_it_maps(tmp_path, ngff_zarr_scene, dims,
                                                         suffix):
    case = ngff_zarr_scene(tmp_path / f"nz-{dims}.zarr", dims)
    pts = case.inside(60, seed=1)
    path = export_transform(f"{case.url}:fixed:moving", tmp_path / f"t{suffix}")
    back = _read_transform_file(path) if suffix == ".h5" else _read_field_image(path)[0]
    assert _scene_error(case, back, pts) < 1e-3
    # the scene holds one transform: its two systems are found without naming them
    again = export_transform(case.url, tmp_path / f"again{suffix}")
    back = _read_transform_file(again) if suffix == ".h5" else _read_field_image(again)[0]
    assert _scene_error(case, back, pts) < 1e-3


@pytest.mark.parametrize("suffix", [".h5", ".nrrd"])
def test_a_hand_written_xyz_scene_exports_as_it_maps(tmp_path, hand_scene, suffix):
    """Systems x, y, z, a field stored z, y, x, then an affine: sampled on the field's grid."""
    case = hand_scene(tmp_path / "hand.zarr", system="xyz", field="zyx")
    path = export_transform(f"{case.url}:fixed:moving", tmp_path / f"t{suffix}")
    back = _read_transform_file(path) if suffix == ".h5" else _read_field_image(path)[0]
    pts = case.inside(60, seed=2, margin=0.0)  # anywhere on the grid: exact between nodes
    assert _scene_error(case, back, pts) < 1e-3
    with pytest.raises(NonInvertibleTransformError, match="fields/warp"):
        export_transform(f"{case.url}:fixed:moving", tmp_path / "inv.h5", inverse=True)


def test_a_map_without_a_field_grid_is_sampled_on_the_grid_given(tmp_path, hand_scene,
                                                                  make_test_image):
    case = hand_scene(tmp_path / "time.zarr", leading="t")  # the field inside a byDimension
    with pytest.raises(UnsupportedFormatError, match="no grid"):
        export_transform(f"{case.url}:fixed:moving", tmp_path / "t.h5")
    image = str(tmp_path / "grid.ome.zarr")
    make_test_image(image, shape=(10, 12, 14), version="0.5")
    grid = ImageGeometry((10, 12, 14), case.spacing, case.origin)
    path = export_transform(f"{case.url}:fixed:moving", tmp_path / "t.nii.gz", grid=grid)
    assert _scene_error(case, _read_field_image(path)[0], case.inside(40, seed=5)) < 1e-3
    path = export_transform(f"{case.url}:fixed:moving", tmp_path / "img.nii.gz", grid=image)
    _, field = _read_field_image(path)
    assert itk.size(field) == itk.Size[3]((14, 12, 10))


def _linear_scene(store: Path) -> tuple[str, np.ndarray]:
    """Two systems x, y, z joined by an affine (given in x, y, z order)."""
    m = np.hstack([small_rotation(3, 8) * 1.05, [[1.0], [-2.0], [0.5]]])
    axes = [{"name": a, "type": "space"} for a in "xyz"]
    attrs = {"ome": {"version": "0.6", "scene": {
        "coordinateSystems": [{"name": n, "axes": axes} for n in ("a", "b")],
        "coordinateTransformations": [{"type": "affine", "affine": m.tolist(),
                                       "input": {"name": "a"}, "output": {"name": "b"}}]}}}
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    return str(store), m


def test_a_linear_scene_map_exports_as_an_affine_and_as_a_field_on_a_grid(tmp_path):
    url, m = _linear_scene(tmp_path / "linear.zarr")
    pts = np.random.default_rng(3).uniform(0, 5, (20, 3))
    want = pts @ m[:, :3].T + m[:, 3]
    back = _read_transform_file(export_transform(f"{url}:a:b", tmp_path / "t.h5"))
    parts = [back] if back.GetNameOfClass() != "CompositeTransform" else [
        back.GetNthTransform(i) for i in range(back.GetNumberOfTransforms())]
    assert [t.GetNameOfClass() for t in parts] == ["AffineTransform"]  # no field
    np.testing.assert_allclose(_map(back, pts), want, atol=1e-9)
    inv = _read_transform_file(export_transform(f"{url}:a:b", tmp_path / "i.tfm",
                                                inverse=True))
    np.testing.assert_allclose(_map(inv, want), pts, atol=1e-9)
    with pytest.raises(UnsupportedFormatError, match=r"linear.*grid"):
        export_transform(f"{url}:a:b", tmp_path / "t.nii.gz")
    grid = ImageGeometry((8, 8, 8), (1.0, 1.0, 1.0), (-1.0, -1.0, -1.0))
    field, _ = _read_field_image(export_transform(f"{url}:a:b", tmp_path / "t.nii.gz",
                                                  grid=grid))
    np.testing.assert_allclose(_map(field, pts), want, atol=1e-4)


def test_the_export_command_takes_scene_references(tmp_path, hand_scene):
    from click.testing import CliRunner

    from ngff_dreg.cli import app

    case = hand_scene(tmp_path / "hand.zarr")
    out = tmp_path / "cli.h5"
    res = CliRunner().invoke(app, ["export", f"{case.url}:fixed:moving", str(out)])
    assert res.exit_code == 0, res.output
    assert _scene_error(case, _read_transform_file(out), case.inside(30, seed=6)) < 1e-3
    res = CliRunner().invoke(app, ["export", f"{case.url}:fixed:nowhere", str(out),
                                   "--overwrite"])
    assert res.exit_code == 2 and "nowhere" in res.output


# ---------------------------------------------------------------------- BigWarp
def test_bigwarp_export_of_a_registration_keeps_its_field_and_affine(tmp_path, bigwarp_map):
    straight = ImageGeometry((12, 14, 16), (0.5, 0.7, 0.9), (2.0, 0.5, -1.0))
    fwd = smooth_displacement(straight, 1.5, seed=4)
    a = AffineTransform.from_arrays(small_rotation(3, 6) * 1.02, np.array([1.0, -0.5, 0.8]))
    url = str(tmp_path / "out.zarr")
    write_field_scene(url, TransformChain(a, fwd), chunks=8)
    dest = export_transform(url, tmp_path / "bw.zarr", format="bigwarp")
    attrs = json.loads((dest / "dfield" / ".zattrs").read_text())
    np.testing.assert_allclose(np.reshape(attrs["affine"], (3, 4)), a.homogeneous[:3])
    grid = read_transform(url).field.geometry  # the stored field's own grid
    assert attrs["spacing"] == list(grid.spacing) and attrs["offset"] == list(grid.origin)
    pts = straight.array_index_to_physical(
        np.random.default_rng(1).uniform(0, np.asarray(straight.shape) - 1, (80, 3)))
    want = read_transform(url).transform_points(pts)
    assert np.abs((bigwarp_map(dest, pts) - want) / np.asarray(straight.spacing)).max() < 1e-3


def test_bigwarp_export_of_an_oblique_registration_is_sampled_axis_aligned(scene, tmp_path,
                                                                            bigwarp_map):
    dest = export_transform(scene, tmp_path / "bw.zarr", format="bigwarp")
    attrs = json.loads((dest / "dfield" / ".zattrs").read_text())
    assert "affine" not in attrs  # the total displacement, on an axis-aligned cover
    grid = read_transform(scene).field.geometry  # coarse (stride 4) and rotated by 20 deg
    rng = np.random.default_rng(2)
    inner = FIXED.array_index_to_physical(  # away from the oblique grid's edges
        rng.uniform(3, np.asarray(FIXED.shape) - 4, (80, 3)))
    want = read_transform(scene).transform_points(inner)
    err = np.abs(bigwarp_map(dest, inner) - want).max() / min(grid.spacing)
    assert err < 0.2, err  # resampled from one coarse grid to another: interpolation only
    fine = ImageGeometry((30, 40, 60), (0.5, 0.5, 0.5), (-3.0, 0.0, -1.0))
    dest = export_transform(scene, tmp_path / "fine.zarr", format="bigwarp", grid=fine)
    assert json.loads((dest / "dfield" / ".zarray").read_text())["shape"] == [30, 40, 60, 3]
    err = np.abs(bigwarp_map(dest, inner) - want).max() / min(grid.spacing)
    assert err < 0.02, err


@pytest.mark.parametrize("dims", ["zyx", "xyz"])
def test_bigwarp_export_of_a_scene_maps_as_the_scene(tmp_path, ngff_zarr_scene, hand_scene,
                                                     bigwarp_map, dims):
    for case in (ngff_zarr_scene(tmp_path / f"nz-{dims}.zarr", dims),
                 hand_scene(tmp_path / f"hand-{dims}.zarr", system=dims)):
        dest = export_transform(f"{case.url}:fixed:moving", tmp_path / f"{dims}-bw.zarr",
                                format="bigwarp", overwrite=True)
        pts = case.inside(60, seed=7, margin=0.0)
        err = np.abs((bigwarp_map(dest, pts) - case.expected(pts)) / case.voxel).max()
        assert err < 1e-3, (case.url, err)


def test_bigwarp_needs_a_zarr_path_and_the_format_named(scene, tmp_path):
    with pytest.raises(UnsupportedFormatError, match=r"\.zarr"):
        export_transform(scene, tmp_path / "bw.n5", format="bigwarp")
    with pytest.raises(UnsupportedFormatError, match="bigwarp"):
        export_transform(scene, tmp_path / "bw.zarr")
    with pytest.raises(UnsupportedFormatError, match="unknown export format"):
        export_kind("bw.zarr", "n5")
    assert export_kind("bw.zarr", "bigwarp") == "bigwarp"
    assert export_kind("t.h5", "auto") == "transform"
