"""Jacobian determinant of ``x -> x + D(x)`` for a displacement sampled on a grid (NumPy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import ImageGeometry

__all__ = ["jacobian_determinant"]

FloatArray = npt.NDArray[np.float64]


def jacobian_determinant(displacement: FloatArray, grid: ImageGeometry) -> FloatArray:
    """``det(I + dD/dx)`` at every node of ``grid``.

    ``displacement`` is ``(ndim, *grid.shape)`` in the NGFF layout (components
    in NumPy axis order, physical units). Central differences inside, one-sided
    at the edges, along the grid axes, turned into physical derivatives through
    the grid's direction and spacing.
    """
    ndim = grid.ndim
    comps = np.asarray(displacement, dtype=np.float64)[::-1]  # ITK order components
    grads = np.zeros((ndim, ndim, *grid.shape))
    for c in range(ndim):
        for k in range(ndim):
            if grid.shape[k] >= 2:
                grads[c, k] = np.gradient(comps[c], axis=k)
    g_itk = grads[:, ::-1]  # NumPy axis k is ITK index axis ndim-1-k
    minv_t = np.linalg.inv(grid.index_to_physical_matrix).T
    phys = np.einsum("ij,cj...->ci...", minv_t, g_itk)
    jac = np.moveaxis(phys, (0, 1), (-2, -1)) + np.eye(ndim)
    return np.asarray(np.linalg.det(jac))
