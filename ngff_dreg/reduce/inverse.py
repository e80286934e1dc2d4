"""Chunk-wise inverse of a displacement field by fixed-point iteration.

For the forward chain ``T(x) = A(x + D(x))`` the inverse is
``T⁻¹(y) = z + U(z)`` with ``z = A⁻¹ y`` (a :class:`TransformChain` with
``affine_first=True``), where ``U`` solves ``U(z) = -D(z + U(z))`` (iterated
with per-point step relaxation where the plain iteration would oscillate). ``U`` lives
on the same grid as ``D``. Each chunk of ``U`` needs ``D`` only over the chunk
grown by the largest displacement, so the iteration is local.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, chunk_boxes
from ngff_dreg.transforms import DisplacementField, TransformChain

__all__ = ["invert_chunk", "inverse_residuals", "invert_field"]

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]


def _nodes(chunk: Box, field: DisplacementField) -> FloatArray:
    axes = [np.arange(a, b) for a, b in zip(chunk.start, chunk.stop)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, chunk.ndim)
    return field.geometry.array_index_to_physical(mesh.astype(np.float64))


def invert_chunk(chunk: Box, forward: DisplacementField, max_displacement: float, *,
                 iterations: int = 30, tol: float | None = None) -> tuple[FloatArray, float]:
    """Inverse displacement ``U`` over one grid chunk.

    Parameters
    ----------
    chunk:
        Node box of the field grid (NumPy order).
    forward:
        The forward field ``D`` (in memory or lazily loaded).
    max_displacement:
        Largest ``|D|`` (physical); sets the halo read around the chunk.
    iterations:
        Maximum fixed-point iterations.
    tol:
        Stop when the update is below this (physical); default 1e-4 x the
        smallest grid spacing.

    Returns
    -------
    U:
        ``(ndim, *chunk.shape)`` (NGFF layout).
    change:
        Largest update of the last iteration (a convergence figure).

    """
    sp = np.asarray(forward.geometry.spacing)[::-1]
    halo = np.ceil(max_displacement / sp).astype(int) + 2
    local = forward.crop(chunk.pad(tuple(halo)))
    z = _nodes(chunk, forward)
    tol = 1e-4 * float(sp.min()) if tol is None else tol
    u = -local.sample(z)
    change = np.inf
    # relaxed fixed point: a point whose update grows has its step halved, so
    # strongly sheared regions (|grad D| near or above 1) still converge; only
    # the points not yet converged are iterated further
    alpha = np.ones(len(z))
    prev = np.full(len(z), np.inf)
    active = np.arange(len(z))
    for _ in range(max(1, iterations)):
        za, ua = z[active], u[active]
        step = -local.sample(za + ua) - ua
        size = np.linalg.norm(step, axis=1)
        change = float(size.max()) if size.size else 0.0
        if change < tol:
            break
        a = np.where(size > prev[active], np.maximum(alpha[active] * 0.5, 1.0 / 64),
                     alpha[active])
        u[active] = ua + a[:, None] * step
        alpha[active], prev[active] = a, size
        active = active[size >= tol]
    return u[:, ::-1].T.reshape((chunk.ndim, *chunk.shape)), change


def inverse_residuals(chunk: Box, forward: TransformChain, inverse: TransformChain, *,
                      n_points: int = 256, seed: int = 0,
                      within: tuple[FloatArray, FloatArray] | None = None) -> FloatArray:
    """``|T⁻¹(T(x)) - x|`` at random points inside a field chunk.

    Points whose image ``T(x)`` leaves the inverse field's grid (where the
    inverse can only be extrapolated) are left out.

    Parameters
    ----------
    chunk:
        Node box of the forward field grid.
    forward, inverse:
        The two chains.
    n_points:
        Number of random points (uniform over the chunk's node span).
    seed:
        Random seed (combined with the chunk position).
    within:
        Optional continuous node-index bounds (lo, hi), NumPy order, to keep
        points inside (e.g. the fixed image's extent).

    """
    assert forward.field is not None
    geom = forward.field.geometry
    rng = np.random.default_rng([seed, *chunk.start])
    lo = np.asarray(chunk.start, float)
    hi = np.asarray(chunk.stop, float) - 1.0
    if within is not None:
        lo, hi = np.maximum(lo, within[0]), np.minimum(hi, within[1])
    if np.any(hi < lo):
        return np.zeros(0)
    idx = rng.uniform(lo, hi, size=(n_points, chunk.ndim))
    pts = geom.array_index_to_physical(idx)
    moved = forward.transform_points(pts)
    # only points whose image stays on the inverse grid (beyond it U is clamped)
    assert inverse.field is not None
    w = inverse.affine.transform_points(moved) if inverse.affine_first else moved
    widx = inverse.field.geometry.physical_to_index(w)
    keep = np.all((widx >= 0) & (widx <= np.asarray(inverse.field.geometry.size) - 1), axis=1)
    back = inverse.transform_points(moved[keep])
    return np.asarray(np.linalg.norm(back - pts[keep], axis=1))


def invert_field(forward: DisplacementField, *, iterations: int = 30,
                 chunk: int = 64) -> DisplacementField:
    """In-memory inverse field of a (small) forward field, chunk by chunk."""
    data = forward.read()
    maxd = float(np.linalg.norm(data, axis=0).max()) if data.size else 0.0
    out = np.empty_like(data)
    for box in chunk_boxes(forward.geometry.shape, (chunk,) * forward.ndim):
        out[(slice(None), *box.slices)] = invert_chunk(box, forward, maxd,
                                                       iterations=iterations)[0]
    return DisplacementField(forward.geometry, data=out)
