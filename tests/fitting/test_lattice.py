"""The lattice algebra: tensor-product B-spline evaluation, its transpose, bending energy."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.fitting.lattice import BSplineLattice, bending_operator, lattice_strides
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.synthetic import small_rotation
from ngff_dreg.transforms import BSplineGrid, apply_axes


def grid_parameters(geom: ImageGeometry, cells: int) -> np.ndarray:
    """ITK-style fixed parameters of a cubic grid of ``cells`` cells over ``geom``."""
    nd = geom.ndim
    spacing = (np.asarray(geom.size) - 1) * np.asarray(geom.spacing) / cells
    origin = np.asarray(geom.origin) - geom.direction_matrix @ spacing
    return np.concatenate([np.full(nd, cells + 3), origin, spacing,
                           geom.direction_matrix.ravel()])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("degrees", [0.0, 12.0])
def test_lattice_weights_match_pointwise_evaluation(ndim: int, degrees: float) -> None:
    direction = small_rotation(ndim, degrees) if degrees else np.eye(ndim)
    geom = ImageGeometry((20, 17, 23)[:ndim], (0.9, 1.1, 1.3)[:ndim], (3.0, -2.0, 1.0)[:ndim],
                         direction)
    fp = grid_parameters(geom, 4)
    lattice = BSplineLattice.from_fixed_parameters(fp, ndim)
    axes = [np.arange(1, n, 2).astype(float) for n in geom.shape]
    bases = lattice.axis_bases(geom, axes)
    rng = np.random.default_rng(0)
    coeffs = rng.standard_normal((ndim, *lattice.sizes))
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ndim)
    pts = geom.array_index_to_physical(idx)
    want = BSplineGrid(fp, coeffs.reshape(ndim, -1).T.copy()).displacement(pts)
    got = np.stack([apply_axes(coeffs[k], bases).ravel() for k in range(ndim)], 1)
    np.testing.assert_allclose(got, want, atol=1e-10)
    # the transpose: <B c, r> == <c, B^T r>
    r = rng.standard_normal(got.shape[0])
    lhs = float(np.dot(r, got[:, 0]))
    rhs = float(np.dot(apply_axes(r.reshape([len(a) for a in axes]), [b.T for b in bases])
                       .ravel(), coeffs[0].ravel()))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)


def test_a_grid_with_another_direction_is_refused() -> None:
    geom = ImageGeometry((20, 20), (1.0, 1.0), (0.0, 0.0))
    other = ImageGeometry((20, 20), (1.0, 1.0), (0.0, 0.0), small_rotation(2, 20.0))
    lattice = BSplineLattice.from_fixed_parameters(grid_parameters(other, 3), 2)
    with pytest.raises(ValueError, match="direction"):
        lattice.axis_bases(geom, [np.arange(20.0), np.arange(20.0)])


def test_apply_axes_is_a_tensor_product() -> None:
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((3, 4, 5))
    mats = [rng.standard_normal((6, 3)), rng.standard_normal((2, 4)), rng.standard_normal((7, 5))]
    want = np.einsum("ai,bj,ck,ijk->abc", *mats, arr)
    np.testing.assert_allclose(apply_axes(arr, mats), want, atol=1e-12)
    flat = rng.standard_normal((3, 4))
    np.testing.assert_allclose(apply_axes(flat, mats[:2]), mats[0] @ flat @ mats[1].T)


def test_bending_energy_vanishes_on_affine_fields_and_measures_curvature() -> None:
    sizes, h = (6, 7, 8), (2.0, 2.0, 2.0)
    q = bending_operator(sizes, h)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in sizes], indexing="ij")
    linear = (1.5 * x - 0.5 * y + 2.0 * z + 3.0).ravel()
    assert abs(linear @ q @ linear) < 1e-9
    quad = ((x * h[2]) ** 2).ravel()  # u = X^2: d2u/dX2 = 2 on the interior rows
    assert quad @ q @ quad == pytest.approx(4.0 * (sizes[2] - 2) / sizes[2], rel=1e-9)
    mixed = ((x * h[2]) * (y * h[1])).ravel()  # u = XY: only the mixed term, counted twice
    want = 2.0 * (sizes[2] - 1) * (sizes[1] - 1) * sizes[0] / np.prod(sizes)
    assert mixed @ q @ mixed == pytest.approx(want, rel=1e-9)


def test_lattice_strides_are_physical() -> None:
    geom = ImageGeometry((10, 100, 100), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0))
    assert lattice_strides(4, geom) == [1, 4, 4]
    assert lattice_strides(2, geom) == [1, 2, 2]
