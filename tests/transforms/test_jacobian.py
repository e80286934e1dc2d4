"""det J of a sampled displacement against closed forms."""

from __future__ import annotations

import numpy as np

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.transforms.jacobian import jacobian_determinant


def _field(grid: ImageGeometry, fn) -> np.ndarray:  # type: ignore[no-untyped-def]
    nd = grid.ndim
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    pts = grid.array_index_to_physical(idx.reshape(-1, nd).astype(float))
    disp = fn(pts)  # (N, nd), ITK order
    return disp[:, ::-1].T.reshape((nd, *grid.shape))


def test_linear_displacement_gives_the_determinant_of_its_matrix() -> None:
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    grid = ImageGeometry((6, 7, 8), (0.5, 1.0, 2.0), (1.0, -2.0, 3.0), direction=rot)
    a = np.array([[1.2, 0.1, 0.0], [0.05, 0.9, 0.2], [0.0, -0.1, 1.1]])
    det = jacobian_determinant(_field(grid, lambda p: p @ (a - np.eye(3)).T), grid)
    assert det.shape == grid.shape
    np.testing.assert_allclose(det, np.linalg.det(a), rtol=1e-9)


def test_a_fold_is_negative() -> None:
    grid = ImageGeometry((40, 30), (1.0, 1.0), (0.0, 0.0))
    # x -> x + D with dDx/dx = -2 around x = 15: the map turns back on itself
    det = jacobian_determinant(
        _field(grid, lambda p: np.stack([-2.0 * np.exp(-((p[:, 0] - 15) / 3) ** 2) * 3,
                                         0 * p[:, 1]], 1)), grid)
    assert det.min() < 0 < det.max()
