"""A cubic B-spline grid transform held as NumPy arrays, and its sparse weights.

The same map as ITK's cubic ``itk.BSplineTransform``: ``T(x) = x + sum_k w_k(x) c_k``
inside the grid's valid region, the identity outside it. Evaluating it needs
no ITK (only :meth:`BSplineGrid.from_itk` reads an ITK transform, through
:mod:`ngff_dreg.itk_bridge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import ImageGeometry

__all__ = [
    "BSplineGrid",
    "apply_axes",
    "axis_basis",
    "bspline_weight_matrix",
    "cubic_weights",
    "grid_coordinates",
]


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of the 4 nodes ``floor(g) - 1 .. floor(g) + 2`` (N, 4)."""
    t2, t3 = t * t, t * t * t
    w0 = (1.0 - t) ** 3 / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    return np.stack([w0, w1, w2, w3], axis=1)


def axis_basis(g: npt.ArrayLike, n_nodes: int) -> npt.NDArray[np.float64]:
    """Dense ``(len(g), n_nodes)`` cubic B-spline weights at grid coordinates ``g``.

    ITK's convention: nodes ``floor(g) - 1 .. floor(g) + 2`` support a point;
    coordinates are clamped to the valid region ``[1, n_nodes - 2)``.
    """
    lo, hi = 1.0, float(n_nodes) - 2.0
    gg = np.clip(np.asarray(g, dtype=np.float64), lo, np.nextafter(hi, -np.inf))
    base = np.floor(gg).astype(np.int64) - 1
    w = cubic_weights(gg - np.floor(gg))
    out = np.zeros((len(gg), n_nodes))
    rows = np.arange(len(gg))
    for k in range(4):
        out[rows, base + k] = w[:, k]
    return out


def apply_axes(arr: npt.NDArray[np.float64],
               mats: Sequence[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """``arr`` with its axis ``k`` multiplied by ``mats[k]`` (``out_k = M_k @ in_k``).

    The tensor-product evaluation of a B-spline on a lattice: with ``mats``
    the per-axis weights (:func:`axis_basis`), coefficients become values at
    every lattice point. 2-D and 3-D arrays use plain matrix products.
    """
    if arr.ndim == 2:
        return np.asarray(mats[0] @ arr @ mats[1].T)
    if arr.ndim == 3:
        a, b, _ = arr.shape
        t = arr.reshape(a * b, -1) @ mats[2].T
        t = mats[1] @ t.reshape(a, b, -1)
        y, x = t.shape[1], t.shape[2]
        return np.asarray((mats[0] @ t.reshape(a, y * x)).reshape(-1, y, x))
    for m in mats:
        arr = np.tensordot(arr, m, axes=([0], [1]))
    return arr


def grid_coordinates(
    fixed_parameters: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous grid indices of ``points`` on a cubic B-spline grid.

    ``fixed_parameters`` are an ``itk.BSplineTransform``'s fixed parameters
    (grid size, origin, spacing, direction; ITK order). Returns the grid
    indices ``g`` (N, ndim), the first support node ``floor(g) - 1`` and a
    mask of the points whose whole 4-node support lies on the grid (ITK's
    valid region ``1 <= g < size - 2``; outside it ITK returns the identity).
    Points within a hair of the region's edge count as inside and are clamped
    onto it, so nodes on a block's boundary do not flip with rounding.
    """
    ndim = points.shape[1]
    fixed = np.asarray(fixed_parameters, dtype=np.float64)
    size = fixed[:ndim].astype(np.int64)
    origin = fixed[ndim : 2 * ndim]
    spacing = fixed[2 * ndim : 3 * ndim]
    direction = fixed[3 * ndim :].reshape(ndim, ndim)
    to_index = np.linalg.inv(direction * spacing[None, :])
    g = (np.asarray(points, dtype=np.float64) - origin) @ to_index.T
    lo = 1.0
    hi = size.astype(np.float64) - 2.0
    tol = 1e-9
    inside = np.all((g >= lo - tol) & (g <= hi + tol), axis=1)
    # on the upper edge ITK evaluates just inside (floor(g) = size - 3, t -> 1)
    g = np.clip(g, lo, np.nextafter(hi, -np.inf))
    base = np.floor(g).astype(np.int64) - 1
    return g, base, inside


def bspline_weight_matrix(transform: Any, points: np.ndarray) -> Any:
    """Sparse ``(N, n_nodes)`` matrix of an ``itk.BSplineTransform``'s weights at ``points``.

    ``displacement(points) = W @ C`` with ``C[k, d]`` the coefficient of node
    ``k`` (ITK order, ``x`` fastest) along physical axis ``d``. Points whose
    support leaves the grid get no weight (ITK returns the identity there).
    """
    from scipy import sparse

    ndim = points.shape[1]
    fixed = np.asarray(transform.GetFixedParameters(), dtype=np.float64)
    size = fixed[:ndim].astype(int)
    g, base, inside = grid_coordinates(fixed, points)
    frac = g - (base + 1)
    n = points.shape[0]
    cols = np.zeros((n, 1), dtype=np.int64)
    vals = np.ones((n, 1))
    stride = 1
    for a in range(ndim):
        w = cubic_weights(frac[:, a])
        idx = base[:, a : a + 1] + np.arange(4)[None, :]
        cols = (cols[:, :, None] + stride * idx[:, None, :]).reshape(n, -1)
        vals = (vals[:, :, None] * w[:, None, :]).reshape(n, -1)
        stride *= int(size[a])
    vals[~inside] = 0.0
    cols[~inside] = 0
    rows = np.repeat(np.arange(n), cols.shape[1])
    return sparse.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=(n, int(np.prod(size))))


@dataclass(frozen=True)
class BSplineGrid:
    """A cubic B-spline transform held as NumPy arrays (no ITK needed to evaluate).

    The same map as the ``itk.BSplineTransform`` it was made from
    (:meth:`from_itk`): ``T(x) = x + sum_k w_k(x) c_k`` inside the grid's valid
    region, the identity outside it. Evaluation is vectorised, so a dense
    field of a block costs a fraction of ITK's point-by-point
    ``TransformPoint``. Pickles small.

    Attributes
    ----------
    fixed_parameters:
        The ITK fixed parameters (grid size, origin, spacing, direction).
    coefficients:
        ``(n_nodes, ndim)`` control-point displacements (ITK node order,
        ``x`` fastest; physical ITK-order components).

    """

    fixed_parameters: np.ndarray
    coefficients: np.ndarray

    @classmethod
    def from_itk(cls, transform: Any) -> BSplineGrid:
        """Copy an ``itk.BSplineTransform`` (cubic) into NumPy arrays."""
        from ngff_dreg.itk_bridge import bspline_parameters

        fixed, params, ndim = bspline_parameters(transform)
        return cls(fixed, params.reshape(ndim, -1).T.copy())

    @property
    def ndim(self) -> int:
        """Dimension."""
        return int(self.coefficients.shape[1])

    def displacement(self, points: npt.ArrayLike, batch: int = 32768) -> npt.NDArray[np.float64]:
        """``T(x) - x`` at ``(N, ndim)`` physical points (ITK order)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        ndim = self.ndim
        size = self.fixed_parameters[:ndim].astype(np.int64)
        strides = np.cumprod(np.concatenate([[1], size[:-1]]))
        out = np.zeros_like(pts)
        offsets = np.stack(
            np.meshgrid(*([np.arange(4)] * ndim), indexing="ij"), axis=-1
        ).reshape(-1, ndim)
        for s in range(0, len(pts), batch):
            g, base, inside = grid_coordinates(self.fixed_parameters, pts[s : s + batch])
            if not inside.any():
                continue
            g, base = g[inside], base[inside]
            weights = [cubic_weights(g[:, a] - (base[:, a] + 1)) for a in range(ndim)]
            first = base @ strides
            acc = np.zeros((len(g), ndim))
            for off in offsets:
                w = weights[0][:, off[0]]
                for a in range(1, ndim):
                    w = w * weights[a][:, off[a]]
                acc += w[:, None] * self.coefficients[first + int(off @ strides)]
            out[s : s + batch][inside] = acc
        return out

    def displacement_on_grid(self, grid: ImageGeometry) -> npt.NDArray[np.float64]:
        """``T(x) - x`` at every node of ``grid``: ``(ndim, *grid.shape)``, NGFF layout.

        When ``grid`` shares the B-spline grid's direction the weights are a
        tensor product of per-axis matrices and the whole lattice costs a few
        matrix products (:func:`apply_axes`); otherwise the points are
        evaluated one by one (:meth:`displacement`). Equal to
        :meth:`displacement` at the same points (identity outside the valid
        region) either way.
        """
        ndim = self.ndim
        fp = self.fixed_parameters
        size = fp[:ndim].astype(np.int64)
        origin, spacing = fp[ndim : 2 * ndim], fp[2 * ndim : 3 * ndim]
        to_index = np.linalg.inv(fp[3 * ndim :].reshape(ndim, ndim) * spacing[None, :])
        bases = []
        for a in range(ndim):  # NumPy axis a
            line = np.zeros((grid.shape[a], ndim))
            line[:, a] = np.arange(grid.shape[a])
            coords = (grid.array_index_to_physical(line) - origin) @ to_index.T
            others = [k for k in range(ndim) if k != ndim - 1 - a]
            if others and float(np.ptp(coords[:, others], axis=0).max()) > 1e-6:
                pts = grid.array_index_to_physical(
                    np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"),
                             -1).reshape(-1, ndim).astype(np.float64))
                return self.displacement(pts)[:, ::-1].T.reshape((ndim, *grid.shape))
            g = coords[:, ndim - 1 - a]
            n = int(size[ndim - 1 - a])
            inside = (g >= 1.0 - 1e-9) & (g <= n - 2.0 + 1e-9)
            bases.append(axis_basis(g, n) * inside[:, None])
        sizes_np = tuple(int(v) for v in size[::-1])
        out = np.empty((ndim, *grid.shape))
        for k in range(ndim):  # ITK component k is NGFF component ndim - 1 - k
            coef = np.ascontiguousarray(self.coefficients[:, k]).reshape(sizes_np)
            out[ndim - 1 - k] = apply_axes(coef, bases)
        return out

    def transform_points(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, ndim)`` physical points (ITK order) like ``TransformPoint``."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        return pts + self.displacement(pts)
