"""Quality kernel of a displacement field (pure NumPy): the Jacobian determinant."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box
from ngff_dreg.transforms import DisplacementField

__all__ = ["jacobian_chunk"]

FloatArray = npt.NDArray[np.float64]


def jacobian_chunk(chunk: Box, field: DisplacementField) -> FloatArray:
    """Jacobian determinant of ``x ↦ x + D(x)`` on a chunk's nodes.

    Reads the chunk with a one-node halo; central differences inside,
    one-sided at the grid edge. Derivatives are taken along the grid axes and
    turned into physical derivatives through the grid's direction and spacing,
    so any orientation is handled.
    """
    g = field.geometry
    ndim = g.ndim
    outer = chunk.pad((1,) * ndim).clip(g.shape)
    data = field.read(outer)  # (ndim, *outer.shape), components z,y,x
    comps = data[::-1]  # ITK order components
    # grads[c][k]: dD_c / d(index along NumPy axis k)
    grads = np.empty((ndim, ndim, *outer.shape))
    for c in range(ndim):
        for k in range(ndim):
            if outer.shape[k] < 2:
                grads[c, k] = 0.0
            else:
                grads[c, k] = np.gradient(comps[c], axis=k)
    # NumPy axis k is ITK index axis ndim-1-k; physical gradient = M^{-T} dD/d(index_itk)
    g_itk = grads[:, ::-1]
    minv_t = np.linalg.inv(g.index_to_physical_matrix).T  # (ndim, ndim)
    phys = np.einsum("ij,cj...->ci...", minv_t, g_itk)
    jac = np.moveaxis(phys, (0, 1), (-2, -1)) + np.eye(ndim)
    det = np.linalg.det(jac)
    return np.asarray(det[chunk.relative_to(outer)])
