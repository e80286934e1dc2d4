"""What export writes: a registration's chain, or a scene map kept linear or sampled on a grid."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.errors import UnsupportedFormatError
from ngff_dreg.export_source import (
    axis_aligned_cover,
    bigwarp_parts,
    export_chain,
    sample_on_grid,
)
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.synthetic import small_rotation
from ngff_dreg.transforms import AffineTransform, TransformChain


def test_sampling_a_map_on_a_grid_gives_its_total_displacement():
    a = AffineTransform.from_arrays(small_rotation(3, 10), np.array([1.0, 2.0, -0.5]))
    grid = ImageGeometry((7, 8, 9), (0.5, 0.6, 0.7), (1.0, 0.0, -2.0))
    chain = sample_on_grid(a, grid)
    assert chain.field is not None and chain.field.geometry == grid
    pts = np.random.default_rng(0).uniform(0, 1, (30, 3)) * np.array([5.6, 4.2, 3.0])
    pts += np.array([1.0, 0.0, -2.0])  # inside the grid: the affine is linear there
    np.testing.assert_allclose(chain.transform_points(pts), a.transform_points(pts), atol=1e-9)


def test_sampling_goes_slab_by_slab(monkeypatch):
    import ngff_dreg.export_source as es

    calls: list[int] = []

    class Counting:
        def transform_points(self, pts: np.ndarray) -> np.ndarray:
            calls.append(len(pts))
            return pts + 1.0

    monkeypatch.setattr(es, "_POINTS_PER_SLAB", 100)
    grid = ImageGeometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    chain = sample_on_grid(Counting(), grid)
    assert calls == [100, 20] and chain.field is not None
    np.testing.assert_allclose(chain.field.data, 1.0)


def test_an_oblique_grid_is_covered_by_an_axis_aligned_one():
    oblique = ImageGeometry((10, 12, 14), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                            small_rotation(3, 30, 1))
    cover = axis_aligned_cover(oblique)
    assert cover.is_axis_aligned
    corners = oblique.array_index_to_physical(
        np.array([[i, j, k] for i in (0, 9) for j in (0, 11) for k in (0, 13)], float))
    lo, hi = cover.physical_bounds()
    assert np.all(corners >= lo - 1e-9) and np.all(corners <= hi + np.asarray(cover.spacing))
    assert axis_aligned_cover(cover) is cover


def test_bigwarp_parts_split_a_forward_chain_and_sample_an_inverse_one():
    from ngff_dreg.synthetic import smooth_displacement

    grid = ImageGeometry((8, 9, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    field = smooth_displacement(grid, 1.0, seed=1)
    a = AffineTransform.from_arrays(np.eye(3) * 1.1, np.array([1.0, 0.0, 0.0]))
    vectors, g, affine = bigwarp_parts(TransformChain(a, field))
    assert affine is a and g == field.geometry
    assert vectors.shape == (*field.geometry.shape, 3)
    np.testing.assert_allclose(vectors[..., 0], field.read()[2])  # x first
    _, _, none = bigwarp_parts(TransformChain(a, field, affine_first=True))
    assert none is None
    with pytest.raises(UnsupportedFormatError, match="grid"):
        bigwarp_parts(TransformChain(a))


def test_a_registration_output_stays_exact_unless_a_field_grid_is_asked(tmp_path):
    from ngff_dreg.io.omezarr.field_writer import write_field_scene
    from ngff_dreg.synthetic import smooth_displacement

    grid = ImageGeometry((8, 9, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    chain = TransformChain(AffineTransform.identity(3), smooth_displacement(grid, 1.0, seed=2))
    url = str(tmp_path / "out.zarr")
    write_field_scene(url, chain, chunks=8)
    kept = export_chain(url)
    assert kept.field is not None and kept.field.loader is not None  # read lazily
    other = ImageGeometry((4, 4, 4), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))
    assert export_chain(url, grid=other).field.geometry != other  # a transform file: exact
    assert export_chain(url, grid=other, need_field=True).field.geometry == other
