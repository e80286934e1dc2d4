"""A cubic B-spline grid on a regular lattice of sample points.

When the samples of a block sit on a regular lattice that shares the grid's
direction, the B-spline weights are the tensor product of one small
``(samples, nodes)`` matrix per axis. The displacement of every sample, and
its transpose (lattice values gathered onto the nodes), are then a sequence
of matrix products (:func:`apply_axes`) whose cost grows with the number of
samples, not with samples x control points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.transforms.bspline import apply_axes, axis_basis

__all__ = [
    "BSplineLattice",
    "apply_axes",
    "axis_basis",
    "bending_operator",
    "lattice_strides",
    "physical_sigmas",
]

FloatArray = npt.NDArray[np.float64]


def bending_operator(sizes: Sequence[int], spacing: Sequence[float]) -> sparse.csr_matrix:
    """``Q`` such that ``c.T Q c`` is the mean squared second derivative over the nodes.

    ``sizes`` and ``spacing`` are the node counts and node spacings in NumPy
    axis order (nodes in C order). Pure second differences count once and
    mixed ones twice (the thin-plate bending energy), each divided by the
    spacings; with unit spacings the energy is measured in control cells.
    """
    nd = len(sizes)
    n = int(np.prod(sizes))

    def along(mats: dict[int, sparse.spmatrix]) -> sparse.csr_matrix:
        op: sparse.spmatrix = sparse.identity(1, format="csr")
        for a in range(nd):
            op = sparse.kron(op, mats.get(a, sparse.identity(sizes[a], format="csr")), "csr")
        return sparse.csr_matrix(op)

    q = sparse.csr_matrix((n, n))
    for a in range(nd):
        if sizes[a] >= 3:
            d2 = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(sizes[a] - 2, sizes[a]))
            op = along({a: d2 / spacing[a] ** 2})
            q = q + (op.T @ op) / n
    for a in range(nd):
        for b in range(a + 1, nd):
            if sizes[a] >= 2 and sizes[b] >= 2:
                da = sparse.diags([-1.0, 1.0], [0, 1], shape=(sizes[a] - 1, sizes[a]))
                db = sparse.diags([-1.0, 1.0], [0, 1], shape=(sizes[b] - 1, sizes[b]))
                op = along({a: da / spacing[a], b: db / spacing[b]})
                q = q + 2.0 * (op.T @ op) / n
    return sparse.csr_matrix(q)


def lattice_strides(factor: int, geom: ImageGeometry) -> list[int]:
    """Lattice strides (NumPy order): ``factor`` voxels of the finest axis, physically."""
    spacing = np.asarray(geom.spacing, dtype=np.float64)[::-1]
    return [max(1, round(int(factor) * float(spacing.min()) / float(s))) for s in spacing]


def physical_sigmas(sigma: float, geom: ImageGeometry) -> list[float]:
    """Gaussian sigmas (NumPy order, voxels): ``sigma`` voxels of the finest axis, physically."""
    spacing = np.asarray(geom.spacing, dtype=np.float64)[::-1]
    return [float(sigma) * float(spacing.min()) / float(s) for s in spacing]


@dataclass(frozen=True)
class BSplineLattice:
    """An ``itk.BSplineTransform``'s grid read from its fixed parameters.

    Attributes
    ----------
    sizes:
        Node counts, NumPy order.
    origin, spacing:
        Grid origin and node spacing (physical, ITK order).
    to_index:
        Physical offset -> continuous grid index (ITK order).

    """

    sizes: tuple[int, ...]
    origin: FloatArray
    spacing: FloatArray
    to_index: FloatArray

    @classmethod
    def from_fixed_parameters(cls, fixed_parameters: npt.ArrayLike, ndim: int) -> BSplineLattice:
        """The grid of ITK fixed parameters (size, origin, spacing, direction; ITK order)."""
        fp = np.asarray(fixed_parameters, dtype=np.float64)
        size = fp[:ndim].astype(int)
        spacing = fp[2 * ndim : 3 * ndim]
        direction = fp[3 * ndim :].reshape(ndim, ndim)
        return cls(
            tuple(int(s) for s in size[::-1]),
            fp[ndim : 2 * ndim],
            spacing,
            np.asarray(np.linalg.inv(direction * spacing[None, :]), dtype=np.float64),
        )

    @property
    def n_nodes(self) -> int:
        """Number of control points."""
        return int(np.prod(self.sizes))

    def coordinates(self, points: FloatArray) -> FloatArray:
        """Continuous grid indices (ITK order) of ``(N, ndim)`` physical points."""
        return np.asarray((points - self.origin) @ self.to_index.T)

    def axis_bases(self, geom: ImageGeometry, axes_idx: Sequence[FloatArray]) -> list[FloatArray]:
        """Per-axis weight matrices of the lattice ``axes_idx`` (voxel indices, NumPy order).

        The lattice must share the grid's direction, so that the grid
        coordinate along an axis depends on the voxel index along that axis
        only; a mismatch raises ``ValueError``.
        """
        nd = geom.ndim
        bases = []
        for a in range(nd):
            line = np.zeros((len(axes_idx[a]), nd))
            line[:, a] = axes_idx[a]
            coords = self.coordinates(geom.array_index_to_physical(line))
            others = [k for k in range(nd) if k != nd - 1 - a]
            if others and np.ptp(coords[:, others], axis=0).max(initial=0.0) > 1e-6:
                raise ValueError("the B-spline grid does not share the block's direction")
            bases.append(axis_basis(coords[:, nd - 1 - a], self.sizes[a]))
        return bases
