"""Kernels of the reduction (pure NumPy): block samples, cosine blending, hole filling, fold.

Each function here works on arrays, boxes and NumPy-evaluable transforms
(:class:`~ngff_dreg.interfaces.SupportsTransformPoints`) only; the dask
wrappers that call them, one task per kernel call, are in
:mod:`ngff_dreg.reduce.graph`. The reduction runs as a graph with three kinds
of small tasks:

1. **block tasks** (one per block): sample the block's residual
   ``r_b(x) = T_b(x) - x`` on the field-grid nodes inside its padded domain,
   with a cosine weight that falls to zero across the overlap;
2. **field-chunk tasks** (one per field chunk): depend only on the blocks
   whose domain (plus the hole-filling reach) meets the chunk. They blend
   ``r = Σ w_b r_b / Σ w_b`` (renormalised, so image edges are not damped),
   fill failed blocks from their successful neighbours by normalised
   convolution, fold the initial transform in, and write the chunk once;
3. **inverse / quality tasks** per chunk (see :mod:`ngff_dreg.reduce.inverse`
   and :mod:`ngff_dreg.reduce.quality`), then one finalising task that writes
   the metadata and returns the
   :class:`~ngff_dreg.reduce.result.BlendedTransformResult`.

Hole filling. Each successful block also contributes its *edge-extended*
samples with a wide weight ``v_b(d)`` that decays smoothly (cosine) to zero at
distance ``fill_distance x block extent`` from its domain::

    W = Σ w_b,   V = Σ v_b,   f = min(V, 1) · Σ v_b e_b / V
    β = (1 - 2W)² for W < 1/2, else 0
    r = (Σ w_b r_b + β f) / (W + β)

Where blocks succeeded (``W ≥ 1/2``: the cosine weights form a partition of
unity across overlaps) the fill plays no part and the blend is exact; inside
a failed block (``W = 0``) the fill gives a smooth interpolation of the
neighbours, and it fades in continuously as ``W`` falls. Beyond a successful
block the filled residual decays like ``v_b`` (a cosine over the reach) to
zero, i.e. to the initial transform. There is never a sudden zero.

Fold. With ``I`` the initial transform and ``A`` its linear part (a
:class:`TransformChain`'s affine, an affine itself, or identity for a
non-linear ITK transform), the total field is
``D_tot(x) = A⁻¹(I(x + r(x))) - x`` so that ``A(x + D_tot(x)) = I(x + r(x))``.
For ``I = TransformChain(A, D_prev)`` this is ``r(x) + D_prev(x + r(x))``,
computed by reading only the part of ``D_prev`` the chunk needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, ImageGeometry, one_per_axis
from ngff_dreg.interfaces import BlockRegStatus, SupportsTransformPoints
from ngff_dreg.transforms import AffineTransform, BSplineGrid, map_points

__all__ = [
    "FILL_BETA",
    "WEIGHT_FLOOR",
    "BlockSample",
    "blend_chunk",
    "block_sample",
    "box_bounds",
    "domain_bounds",
    "field_geometry_for",
    "fill_nodes",
    "fill_reach",
    "fold_chunk",
    "node_range",
    "node_ratio",
    "quality_factor",
    "stage_figures",
    "ncc_sums",
    "ncc_figures",
]

FloatArray = npt.NDArray[np.float64]

#: Amplitude of the hole-filling weights (where the primary weights vanish).
FILL_BETA = 1.0
#: Smallest primary weight inside a block's domain (keeps Σw > 0 there).
WEIGHT_FLOOR = 1e-6


# ---------------------------------------------------------------- helpers
def field_geometry_for(fixed: ImageGeometry, *, factor: float | Sequence[float] | None = 4,
                       spacing: Sequence[float] | None = None) -> ImageGeometry:
    """Field grid over ``fixed``: same origin and direction, coarser spacing.

    Parameters
    ----------
    fixed:
        Fixed image geometry at the registered level.
    factor:
        Field spacing as a multiple of the fixed spacing (scalar or per ITK axis).
    spacing:
        Physical field spacing (ITK order); overrides ``factor``.

    """
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64)
    else:
        f = one_per_axis(4 if factor is None else factor, fixed.ndim, "field_spacing_factor")
        sp = np.asarray(fixed.spacing) * np.asarray(f, dtype=np.float64)
    if sp.shape != (fixed.ndim,) or np.any(sp <= 0):
        raise ValueError(f"field spacing must be {fixed.ndim} positive values, got {sp}")
    return fixed.with_spacing(tuple(sp))


def node_ratio(fixed: ImageGeometry, fgeom: ImageGeometry) -> FloatArray:
    """Field spacing / fixed spacing, NumPy order (field node j ↔ fixed index j·ratio)."""
    ratio: FloatArray = (np.asarray(fgeom.spacing) / np.asarray(fixed.spacing))[::-1]
    return ratio


def node_range(lo: FloatArray, hi: FloatArray, ratio: FloatArray,
                shape: Sequence[int]) -> Box:
    """Field nodes needed to interpolate anywhere in ``[lo, hi]`` (fixed index, NumPy order).

    That is every node inside the range plus the first node beyond each end,
    so linear interpolation of the field inside a block's domain uses only
    values the block itself sampled.
    """
    a = np.floor(lo / ratio + 1e-9).astype(int)
    b = np.ceil(hi / ratio - 1e-9).astype(int) + 1
    return Box(tuple(a), tuple(b)).clip(shape)


def box_bounds(box: Box) -> tuple[FloatArray, FloatArray]:
    """Continuous index extent (voxel edges) of a voxel box."""
    return np.asarray(box.start, float) - 0.5, np.asarray(box.stop, float) - 0.5


def domain_bounds(domain: ImageGeometry, fixed: ImageGeometry) -> tuple[FloatArray, FloatArray]:
    """Continuous fixed-index bounds (NumPy order) of an oriented domain grid."""
    corners = np.asarray(list(itertools.product(*[(-0.5, n - 0.5) for n in domain.shape])))
    pts = domain.array_index_to_physical(corners)
    idx = fixed.physical_to_index(pts)[:, ::-1]
    return idx.min(axis=0), idx.max(axis=0)


def fill_reach(lo: FloatArray, hi: FloatArray, fixed: ImageGeometry,
                fill_distance: float) -> float:
    """Physical reach of a block's hole-filling weight."""
    extent = (hi - lo) * np.asarray(fixed.spacing)[::-1]
    return float(fill_distance * max(float(extent.max()), 1e-12))


def _cos_ramp(s: FloatArray) -> FloatArray:
    return 0.5 * (1.0 - np.cos(np.pi * np.clip(s, 0.0, 1.0)))


def quality_factor(metric: float | None) -> float:
    """Weight factor from a block's final metric (lower is better).

    Correlation-like metrics in ``[-1, 0]`` give ``-metric`` (clipped to
    ``[0.05, 1]``); positive metrics (mean squares, MI surrogates) give
    ``1 / (1 + metric)``. ``None`` gives 1.
    """
    if metric is None or not math.isfinite(float(metric)):
        return 1.0
    m = float(metric)
    if m <= 0.0:
        return float(np.clip(-m, 0.05, 1.0))
    return 1.0 / (1.0 + m)


# ---------------------------------------------------------------- block task
@dataclass
class BlockSample:
    """What the field-chunk tasks need to know about one block (small, picklable).

    The residual ``T_b(x) - x`` is *not* stored at field resolution: each chunk
    task samples ``transform`` on just the nodes it needs (:meth:`residual_at`),
    so no block's full sample waits in memory for its consumers.

    Attributes
    ----------
    status:
        The block's status code.
    chunk_index:
        Block index in the block grid (NumPy order).
    nodes:
        Field-node box needed to interpolate inside the block's domain.
    lo, hi:
        Continuous fixed-index bounds (NumPy order) of the domain.
    pad_lo, pad_hi:
        Overlap padding (fixed voxels) on each side; the cosine weight ramps
        over twice that width from the domain edge.
    quality:
        Weight factor (1 unless quality weighting is on).
    reach:
        Physical reach of the hole-filling weight.
    transform:
        The block transform, evaluable with NumPy (``None`` unless SUCCESS).
    figures:
        The method's own figures for the block (see
        :attr:`~ngff_dreg.interfaces.BlockPairRegistrationResult.figures`).
    message:
        Why the block was refused (the method's message; empty on SUCCESS).

    """

    status: int
    chunk_index: tuple[int, ...]
    nodes: Box
    lo: FloatArray
    hi: FloatArray
    pad_lo: FloatArray
    pad_hi: FloatArray
    quality: float
    reach: float
    transform: SupportsTransformPoints | None = None
    figures: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the block has a usable transform."""
        return (self.status == BlockRegStatus.SUCCESS and self.transform is not None
                and not self.nodes.is_empty)

    def residual_at(self, box: Box, fgeom: ImageGeometry) -> FloatArray:
        """``T_b(x) - x`` (NGFF layout) at the field nodes of ``box``.

        A B-spline block transform is evaluated on the whole node lattice at
        once (:meth:`~ngff_dreg.transforms.BSplineGrid.displacement_on_grid`).
        """
        if isinstance(self.transform, BSplineGrid):
            return self.transform.displacement_on_grid(fgeom.sub(box.slices))
        axes = [np.arange(a, b) for a, b in zip(box.start, box.stop)]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, fgeom.ndim)
        pts = fgeom.array_index_to_physical(mesh.astype(np.float64))
        if self.transform is None:
            raise ValueError(f"block {self.chunk_index} has no transform to sample")
        moved = np.asarray(self.transform.transform_points(pts), dtype=np.float64)
        return (moved - pts)[:, ::-1].T.reshape((fgeom.ndim, *box.shape))

    def weight_at(self, box: Box, ratio: FloatArray) -> FloatArray:
        """Separable cosine blending weight at the field nodes of ``box``."""
        weight = np.ones(box.shape)
        ndim = box.ndim
        for ax in range(ndim):
            c = np.arange(box.start[ax], box.stop[ax]) * ratio[ax]
            ext = self.hi[ax] - self.lo[ax]
            w = np.ones(c.shape)
            for dist, pad in ((c - self.lo[ax], self.pad_lo[ax]),
                              (self.hi[ax] - c, self.pad_hi[ax])):
                width = min(2.0 * pad, ext / 2.0)
                if width > 0:
                    w = w * _cos_ramp(dist / width)
            shape = [1] * ndim
            shape[ax] = c.size
            weight = weight * w.reshape(shape)
        return np.maximum(weight, WEIGHT_FLOOR) * self.quality


def block_sample(
    status: int,
    chunk_index: tuple[int, ...],
    core: Box,
    block_box: Box | None,
    domain: ImageGeometry | None,
    transform: SupportsTransformPoints | None,
    metric: float | None,
    fixed: ImageGeometry,
    fgeom: ImageGeometry,
    *,
    use_quality: bool = False,
    fill_distance: float = 1.0,
    figures: dict[str, float] | None = None,
    message: str = "",
) -> BlockSample:
    """Summarise one block result for the field-chunk tasks.

    Parameters
    ----------
    status, chunk_index:
        The block's status code and grid index.
    core:
        The unpadded block (fixed voxel indices, NumPy order).
    block_box:
        Padded fixed box of the block; the domain used is ``domain`` clipped
        to it. ``None``: the domain alone (or the unpadded block).
    domain:
        Grid of the result's ``transform_domain`` (``None``: no domain).
    transform:
        The block transform (used when ``status`` is SUCCESS).
    metric:
        The block's final metric (for quality weighting).
    fixed, fgeom:
        Fixed-level geometry and field grid.
    use_quality:
        Multiply the weight by :func:`quality_factor` of ``metric``.
    fill_distance:
        Hole-filling reach in multiples of the block extent.
    figures:
        The method's figures for the block, passed through.
    message:
        The method's message, kept for a refused block (why it was refused).

    """
    lo, hi = box_bounds(block_box if block_box is not None else core)
    if domain is not None:
        dlo, dhi = domain_bounds(domain, fixed)
        if block_box is None:
            lo, hi = dlo, dhi
        else:
            lo, hi = np.maximum(lo, dlo), np.minimum(hi, dhi)
    nodes = node_range(lo, hi, node_ratio(fixed, fgeom), fgeom.shape)
    clo, chi = box_bounds(core)
    quality = quality_factor(metric) if use_quality else 1.0
    return BlockSample(
        status, chunk_index, nodes, lo, hi,
        np.maximum(clo - lo, 0.0), np.maximum(hi - chi, 0.0), quality,
        fill_reach(lo, hi, fixed, fill_distance),
        transform if status == BlockRegStatus.SUCCESS else None,
        dict(figures or {}),
        "" if status == BlockRegStatus.SUCCESS else str(message),
    )


def ncc_sums(figures: Iterable[dict[str, float]]) -> tuple[float, float, float, int]:
    """``(sum w·before, sum w·after, sum w, blocks)`` of the blocks' NCC figures.

    Sums of parts of a stage's blocks add up to the stage's
    (:func:`ncc_figures` of the total is :func:`stage_figures` of all).
    """
    num_b = num_a = den = 0.0
    blocks = 0
    for f in figures:
        b, a = f.get("ncc_before"), f.get("ncc_after")
        if b is None or a is None or not (math.isfinite(b) and math.isfinite(a)):
            continue
        w = float(f.get("samples", 1.0))
        num_b, num_a, den, blocks = num_b + w * b, num_a + w * a, den + w, blocks + 1
    return num_b, num_a, den, blocks


def ncc_figures(sums: Sequence[float]) -> dict[str, float]:
    """The weighted NCC before/after of :func:`ncc_sums` (empty when no block measured it)."""
    num_b, num_a, den, blocks = sums
    if den <= 0:
        return {}
    return {"ncc_before": num_b / den, "ncc_after": num_a / den, "blocks_measured": int(blocks)}


def stage_figures(figures: Iterable[dict[str, float]]) -> dict[str, float]:
    """The stage's NCC before/after: the blocks' figures weighted by their sample counts.

    Only blocks that report both ``ncc_before`` and ``ncc_after`` count;
    empty when none does (a method that reports no figures).
    """
    return ncc_figures(ncc_sums(figures))


# ---------------------------------------------------------------- chunk task
def fill_nodes(reach: float, fspacing_zyx: FloatArray) -> npt.NDArray[np.int64]:
    """Field nodes (per axis, NumPy order) a hole-filling weight of ``reach`` spans."""
    return np.ceil(reach / fspacing_zyx).astype(np.int64) + 1


def blend_chunk(chunk: Box, samples: Iterable[BlockSample], fgeom: ImageGeometry,
                fixed: ImageGeometry) -> tuple[FloatArray, FloatArray]:
    """Blended residual over one field chunk.

    Each block is sampled only on the nodes this chunk needs: its nodes inside
    the chunk, and (for hole filling, only if some node of the chunk is thinly
    covered) its edge nodes facing the chunk.

    Returns
    -------
    residual:
        ``(ndim, *chunk.shape)`` residual (NGFF layout).
    coverage:
        ``chunk.shape`` sum of primary weights (0 where no successful block
        covers a node: filled or initial-transform nodes).

    """
    ndim = fgeom.ndim
    ratio = node_ratio(fixed, fgeom)
    sp = np.asarray(fgeom.spacing)[::-1]
    good = [s for s in samples if s.ok]
    num = np.zeros((ndim, *chunk.shape))
    den = np.zeros(chunk.shape)
    for s in good:
        inter = chunk.intersect(s.nodes)
        if inter.is_empty:
            continue
        sl_c = inter.relative_to(chunk)
        w = s.weight_at(inter, ratio)
        num[(slice(None), *sl_c)] += w * s.residual_at(inter, fgeom)
        den[sl_c] += w
    # the fill takes part only where the blocks' own weights are thin (W < 1/2)
    beta = FILL_BETA * np.clip(1.0 - 2.0 * den, 0.0, 1.0) ** 2
    fill = np.zeros_like(num)
    if np.any(beta > 0):
        fnum = np.zeros_like(num)
        fden = np.zeros(chunk.shape)
        for s in good:
            ext = chunk.intersect(s.nodes.pad(tuple(fill_nodes(s.reach, sp))))
            if ext.is_empty:
                continue
            d2 = np.zeros(ext.shape)
            uniq, inv = [], []
            for ax in range(ndim):
                j = np.arange(ext.start[ax], ext.stop[ax])
                a, b = s.nodes.start[ax], s.nodes.stop[ax] - 1
                d = np.maximum(np.maximum(a - j, j - b), 0) * sp[ax]
                shape = [1] * ndim
                shape[ax] = j.size
                d2 = d2 + (d**2).reshape(shape)
                u, k = np.unique(np.clip(j, a, b), return_inverse=True)
                uniq.append(u)
                inv.append(k)
            dist = np.sqrt(d2)
            v = np.where(dist < s.reach, 0.5 * (1.0 + np.cos(np.pi * dist / s.reach)), 0.0)
            v = v * s.quality
            # edge-extended values: sample only the distinct clamped nodes
            src = Box(tuple(int(u[0]) for u in uniq), tuple(int(u[-1]) + 1 for u in uniq))
            vals = s.residual_at(src, fgeom)
            offs = [u - u[0] for u in uniq]
            e = vals[(slice(None), *np.ix_(*[o[k] for o, k in zip(offs, inv)]))]
            sl_c = ext.relative_to(chunk)
            fnum[(slice(None), *sl_c)] += v * e
            fden[sl_c] += v
        # normalised convolution of the neighbours, tapered to zero (the initial
        # transform) as the summed fill weight fades out
        fill = fnum / np.where(fden > 0, fden, 1.0) * np.minimum(fden, 1.0)
    total = den + beta
    residual = (num + beta * fill) / np.where(total > 0, total, 1.0)
    return residual, den


def fold_chunk(chunk: Box, residual: FloatArray, fgeom: ImageGeometry,
               initial: SupportsTransformPoints | None,
               affine: AffineTransform) -> FloatArray:
    """Total field ``A⁻¹(I(x + r(x))) - x`` on the chunk's nodes (NGFF layout)."""
    if initial is None:
        return residual
    ndim = fgeom.ndim
    axes = [np.arange(a, b) for a, b in zip(chunk.start, chunk.stop)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, ndim)
    pts = fgeom.array_index_to_physical(mesh.astype(np.float64))
    r_itk = residual.reshape(ndim, -1)[::-1].T
    if isinstance(initial, AffineTransform) and np.allclose(
        initial.homogeneous, affine.homogeneous
    ):
        return residual
    moved = map_points(initial, pts + r_itk)
    back = affine.inverse().transform_points(moved)
    return (back - pts)[:, ::-1].T.reshape((ndim, *chunk.shape))
