"""Jacobian determinant statistics of a dense displacement field, slab by slab.

Shared by ``bench_pipeline.py`` (whole-image elastix) and ``itkdreg_runner.py``
(itk-dreg's venv, numpy<2): NumPy only. The field is processed in slabs along
the slowest array axis (with a one-slice halo, so the central differences
match ``np.gradient`` on the whole array), so a 512³ field needs a few hundred
MB instead of the ~20 GB of a whole-array ``(3, 3, z, y, x)`` float64 gradient.
"""

from __future__ import annotations

import numpy as np


def jacobian_stats(field: np.ndarray, spacing: np.ndarray, slab: int = 8) -> dict[str, float]:
    """Min of det(I + grad u) and the fraction of points where it is <= 0.

    Parameters
    ----------
    field:
        Displacements shaped ``(*grid, ndim)``: grid in NumPy order (``z, y, x``),
        vector components in ITK order (``x, y, z``), as ITK images give them.
    spacing:
        Grid spacing in ITK order.
    slab:
        Slices of the slowest axis processed at a time.
    """
    ndim = field.shape[-1]
    n0 = field.shape[0]
    spacing = np.asarray(spacing, dtype=np.float64)
    det_min, folded, total = np.inf, 0, 0
    for start in range(0, n0, slab):
        stop = min(n0, start + slab)
        lo, hi = max(0, start - 1), min(n0, stop + 1)
        f = np.asarray(field[lo:hi], dtype=np.float64)
        jac = np.zeros((*f.shape[:-1], ndim, ndim))
        for i in range(ndim):  # component, ITK order
            for j in range(ndim):  # derivative along ITK axis j = array axis ndim-1-j
                axis = ndim - 1 - j
                if f.shape[axis] > 1:
                    jac[..., i, j] = np.gradient(f[..., i], spacing[j], axis=axis)
            jac[..., i, i] += 1.0
        det = np.linalg.det(jac[start - lo:start - lo + (stop - start)])
        det_min = min(det_min, float(det.min()))
        folded += int((det <= 0).sum())
        total += det.size
    return {"jacobian_min": det_min, "folded_fraction": folded / max(total, 1)}


def det_jacobian_lattice(mapped: np.ndarray, lattice_shape: tuple[int, ...],
                         spacing: np.ndarray, mask: np.ndarray | None = None
                         ) -> dict[str, float]:
    """det J of a point map known only by its values on a regular lattice.

    The same finite differences for every method (whatever its transform
    model): ``mapped`` holds ``phi(x)`` (ITK order, physical) at the lattice
    nodes, flattened in NumPy order; ``J[i, j] = d phi_i / d x_j`` by central
    differences (one-sided at the lattice edges, like ``np.gradient``) with
    ``spacing`` (ITK order). Min and folded fraction (det J <= 0) are taken
    over the nodes where ``mask`` is true (all nodes without one).
    """
    ndim = len(lattice_shape)
    phi = np.asarray(mapped, dtype=np.float64).reshape(*lattice_shape, ndim)
    spacing = np.asarray(spacing, dtype=np.float64)
    sel = np.ones(lattice_shape, bool) if mask is None else np.asarray(mask, bool)
    if not sel.any():
        return {"jacobian_min": float("nan"), "folded_fraction": float("nan")}
    jac = np.zeros((int(sel.sum()), ndim, ndim))
    for i in range(ndim):
        for j in range(ndim):
            axis = ndim - 1 - j
            if lattice_shape[axis] > 1:
                jac[:, i, j] = np.gradient(phi[..., i], spacing[j], axis=axis)[sel]
            elif i == j:
                jac[:, i, j] = 1.0
    det = np.linalg.det(jac)
    return {"jacobian_min": float(det.min()), "folded_fraction": float((det <= 0).mean())}
