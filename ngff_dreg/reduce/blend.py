"""Blend per-block transforms into one dense displacement field, chunk by chunk.

The reduction runs as a dask graph with three kinds of small tasks:

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
   the metadata and returns the :class:`BlendedTransformResult`.

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

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    BlockRegStatus,
    LocatedBlockResult,
    ReduceResultsMethod,
    RegistrationTransformResult,
    SupportsTransformPoints,
)
from ngff_dreg.transforms import AffineTransform, TransformChain, map_points

__all__ = [
    "ReduceToDisplacementField",
    "BlendedTransformResult",
    "BlockSample",
    "sample_block",
    "blend_chunk",
    "field_geometry_for",
    "linear_part",
]

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]

#: Amplitude of the hole-filling weights (where the primary weights vanish).
FILL_BETA = 1.0
#: Smallest primary weight inside a block's domain (keeps Σw > 0 there).
WEIGHT_FLOOR = 1e-6


@dataclass
class BlendedTransformResult(RegistrationTransformResult):
    """A :class:`RegistrationTransformResult` with the reduction's quality report.

    Attributes
    ----------
    report:
        Figures: ``inverse_residual_max``/``_p95`` (physical units, and
        ``_vox`` in fixed voxels), ``jacobian_min``, ``folded_fraction``,
        ``max_displacement``, ``n_blocks``, ``n_success``, ``field_shape``.
    status_map:
        Block status codes shaped like the block grid (NumPy order).
    jacobian:
        Jacobian-determinant map of ``x ↦ x + D_tot(x)`` on the field grid (in
        memory when no ``output`` was given, else ``None``: it is stored at
        ``<output>/quality/jacobian``).
    field_geometry:
        Grid of the forward and inverse fields.

    """

    report: dict[str, Any] = field(default_factory=dict)
    status_map: npt.NDArray[np.integer[Any]] | None = None
    jacobian: npt.NDArray[np.float32] | None = None
    field_geometry: ImageGeometry | None = None


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
        f = np.broadcast_to(np.asarray(4 if factor is None else factor, dtype=np.float64),
                            (fixed.ndim,))
        sp = np.asarray(fixed.spacing) * f
    if sp.shape != (fixed.ndim,) or np.any(sp <= 0):
        raise ValueError(f"field spacing must be {fixed.ndim} positive values, got {sp}")
    return fixed.with_spacing(tuple(sp))


def linear_part(transform: Any, ndim: int) -> AffineTransform:
    """The affine ``A`` a total field is expressed after (see module docstring)."""
    if transform is None:
        return AffineTransform.identity(ndim)
    if isinstance(transform, TransformChain):
        return transform.affine
    if isinstance(transform, AffineTransform):
        return transform
    try:
        from ngff_dreg.itk_bridge import itk_to_affine

        return AffineTransform.from_arrays(*itk_to_affine(transform))
    except (TypeError, AttributeError):
        return AffineTransform.identity(ndim)


def _ratio(fixed: ImageGeometry, fgeom: ImageGeometry) -> FloatArray:
    """Field spacing / fixed spacing, NumPy order (field node j ↔ fixed index j·ratio)."""
    return (np.asarray(fgeom.spacing) / np.asarray(fixed.spacing))[::-1]


def _node_range(lo: FloatArray, hi: FloatArray, ratio: FloatArray,
                shape: Sequence[int]) -> Box:
    """Field nodes needed to interpolate anywhere in ``[lo, hi]`` (fixed index, NumPy order).

    That is every node inside the range plus the first node beyond each end,
    so linear interpolation of the field inside a block's domain uses only
    values the block itself sampled.
    """
    a = np.floor(lo / ratio + 1e-9).astype(int)
    b = np.ceil(hi / ratio - 1e-9).astype(int) + 1
    return Box(tuple(a), tuple(b)).clip(shape)


def _box_bounds(box: Box) -> tuple[FloatArray, FloatArray]:
    """Continuous index extent (voxel edges) of a voxel box."""
    return np.asarray(box.start, float) - 0.5, np.asarray(box.stop, float) - 0.5


def _domain_bounds(domain: Any, fixed: ImageGeometry) -> tuple[FloatArray, FloatArray]:
    """Continuous fixed-index bounds (NumPy order) of an oriented domain image."""
    import itertools

    from ngff_dreg.itk_bridge import geometry_of

    g = geometry_of(domain)
    corners = np.asarray(list(itertools.product(*[(-0.5, n - 0.5) for n in g.shape])))
    pts = g.array_index_to_physical(corners)
    idx = fixed.physical_to_index(pts)[:, ::-1]
    return idx.min(axis=0), idx.max(axis=0)


def _fill_reach(lo: FloatArray, hi: FloatArray, fixed: ImageGeometry,
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
        The block transform (``None`` unless SUCCESS).

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
    transform: Any = None

    @property
    def ok(self) -> bool:
        """True when the block has a usable transform."""
        return (self.status == BlockRegStatus.SUCCESS and self.transform is not None
                and not self.nodes.is_empty)

    def residual_at(self, box: Box, fgeom: ImageGeometry) -> FloatArray:
        """``T_b(x) - x`` (NGFF layout) at the field nodes of ``box``."""
        axes = [np.arange(a, b) for a, b in zip(box.start, box.stop)]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, fgeom.ndim)
        pts = fgeom.array_index_to_physical(mesh.astype(np.float64))
        moved = _map_block_points(self.transform, pts)
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


def _map_block_points(transform: Any, pts: FloatArray) -> FloatArray:
    """Map points through a block transform, vectorised for linear transforms."""
    if isinstance(transform, SupportsTransformPoints):
        return np.asarray(transform.transform_points(pts), dtype=np.float64)
    from ngff_dreg.itk_bridge import class_name, itk_to_affine, transform_points

    name = class_name(transform)
    if name not in ("DisplacementFieldTransform", "BSplineTransform", "CompositeTransform"):
        try:
            m, o = itk_to_affine(transform)
        except (TypeError, AttributeError):
            pass
        else:
            return pts @ m.T + o
    return transform_points(transform, pts)


def sample_block(located: LocatedBlockResult, block_box: Box | None,
                 fixed: ImageGeometry, fgeom: ImageGeometry, *,
                 use_quality: bool = False, fill_distance: float = 1.0) -> BlockSample:
    """Summarise one block result for the field-chunk tasks.

    Parameters
    ----------
    located:
        The block result and where it came from.
    block_box:
        Padded fixed box (voxel indices, NumPy order) of the block; the
        domain used is the result's ``transform_domain`` clipped to it.
        ``None``: the domain alone (or the unpadded block).
    fixed, fgeom:
        Fixed-level geometry and field grid.
    use_quality:
        Multiply the weight by :func:`quality_factor` of the result's metric.
    fill_distance:
        Hole-filling reach in multiples of the block extent.

    """
    res = located.result
    core = Box.from_slices(located.fixed_info.array_slice, fixed.shape)
    lo, hi = _box_bounds(block_box if block_box is not None else core)
    if res.transform_domain is not None:
        dlo, dhi = _domain_bounds(res.transform_domain, fixed)
        if block_box is None:
            lo, hi = dlo, dhi
        else:
            lo, hi = np.maximum(lo, dlo), np.minimum(hi, dhi)
    nodes = _node_range(lo, hi, _ratio(fixed, fgeom), fgeom.shape)
    clo, chi = _box_bounds(core)
    quality = quality_factor(res.metric) if use_quality else 1.0
    status = int(res.status)
    return BlockSample(
        status, located.fixed_info.chunk_index, nodes, lo, hi,
        np.maximum(clo - lo, 0.0), np.maximum(hi - chi, 0.0), quality,
        _fill_reach(lo, hi, fixed, fill_distance),
        _vectorised(res.transform) if status == BlockRegStatus.SUCCESS else None,
    )


def _vectorised(transform: Any) -> Any:
    """A cubic ``itk.BSplineTransform`` as a NumPy :class:`BSplineGrid` (the same map).

    The chunk tasks evaluate block transforms at every field node they cover;
    ITK's ``TransformPoint`` does that one point at a time. Other transforms
    are returned unchanged.
    """
    from ngff_dreg.itk_bridge import is_cubic_bspline

    if not is_cubic_bspline(transform):
        return transform
    from ngff_dreg.transforms import BSplineGrid

    return BSplineGrid.from_itk(transform)


# ---------------------------------------------------------------- chunk task
def _fill_nodes(reach: float, fspacing_zyx: FloatArray) -> npt.NDArray[np.int64]:
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
    ratio = _ratio(fixed, fgeom)
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
            ext = chunk.intersect(s.nodes.pad(tuple(_fill_nodes(s.reach, sp))))
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


def fold_chunk(chunk: Box, residual: FloatArray, fgeom: ImageGeometry, initial: Any,
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


# ---------------------------------------------------------------- the method
@dataclass
class ReduceToDisplacementField(ReduceResultsMethod):
    """Reduce block results to one dense fixed→moving displacement field (+ inverse).

    Parameters
    ----------
    field_spacing_factor:
        Field grid spacing as a multiple of the fixed level spacing.
    field_spacing:
        Physical field spacing (ITK order); overrides the factor.
    output:
        Zarr URL of the NGFF scene group the fields are written to (see
        :mod:`ngff_dreg.io.field_writer`). ``None``: keep the field in memory
        (small cases).
    storage_options:
        fsspec options for ``output`` (never logged).
    field_chunk:
        Field chunk shape in nodes (per axis or one value).
    use_quality:
        Weight blocks by :func:`quality_factor` of their metric.
    fill_distance:
        Reach of hole filling from a successful block, in padded-block extents
        (0.5 fills a single failed block completely from two or more
        neighbours; larger values reach across bigger holes at the price of
        more dependencies per field chunk).
    compute_inverse:
        Also compute the inverse field by fixed-point iteration.
    inverse_iterations:
        Maximum fixed-point iterations per chunk.
    overwrite:
        Replace a complete existing ``output``.
    n_levels:
        Pyramid levels of the written fields (``None``: automatic).
    scheduler:
        dask scheduler used by :meth:`__call__` (``"threads"`` or ``"synchronous"``).

    Examples
    --------
    >>> reduce = ReduceToDisplacementField(field_spacing_factor=4)
    >>> result = reduce(block_results=results, fixed_reader_ctor=ctor,
    ...                 initial_transform=None)  # doctest: +SKIP
    >>> result.report["inverse_residual_p95"]  # doctest: +SKIP

    """

    field_spacing_factor: float | Sequence[float] = 4
    field_spacing: Sequence[float] | None = None
    output: str | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    field_chunk: int | Sequence[int] = 64
    use_quality: bool = False
    fill_distance: float = 0.5
    compute_inverse: bool = True
    inverse_iterations: int = 30
    overwrite: bool = False
    n_levels: int | None = None
    scheduler: str = "threads"
    fixed_url: str | None = None
    moving_url: str | None = None

    # -- itk-dreg entry point ------------------------------------------
    def __call__(
        self,
        block_results: Iterable[LocatedBlockResult],
        fixed_reader_ctor: Any,
        initial_transform: Any,
        **kwargs: Any,
    ) -> BlendedTransformResult:
        """Reduce in-process (the itk-dreg way), running the chunked graph locally.

        Parameters
        ----------
        block_results:
            Located block results.
        fixed_reader_ctor:
            Fixed reader constructor; its ``geometry`` attribute, or
            ``geometry_of(fixed_reader_ctor().GetOutput())``, gives the grid.
        initial_transform:
            Fixed→moving transform the block transforms act before.

        Returns
        -------
        BlendedTransformResult
            Total fixed→moving transform (initial folded in), inverse and report.

        """
        import dask

        from ngff_dreg.itk_bridge import reader_geometry

        fixed = reader_geometry(fixed_reader_ctor)
        results = list(block_results)
        boxes = [_padded_box(r, fixed) for r in results]
        delayed_results = [dask.delayed(r, pure=False) for r in results]
        graph = self.build_graph(delayed_results, boxes, fixed, initial_transform)
        return graph.compute(scheduler=self.scheduler)

    # -- engine entry point ----------------------------------------------
    def build_graph(
        self,
        block_results: Sequence[Any],
        block_boxes: Sequence[Box],
        fixed_geometry: ImageGeometry,
        initial_transform: Any,
        **kwargs: Any,
    ) -> Any:
        """Build the chunked reduction graph.

        Parameters
        ----------
        block_results:
            ``dask.delayed`` objects resolving to :class:`LocatedBlockResult`
            (or the results themselves).
        block_boxes:
            Padded fixed box of each block (voxel indices at the fixed level,
            NumPy order), known at build time, so each field chunk depends only
            on the blocks that can reach it.
        fixed_geometry:
            Fixed image geometry at the registered level.
        initial_transform:
            Fixed→moving transform the block transforms act before.

        Returns
        -------
        dask.delayed.Delayed
            Resolves to a :class:`BlendedTransformResult`.

        """
        from ngff_dreg.reduce._graph import build_reduction_graph

        if len(block_results) != len(block_boxes):
            raise ValueError("block_results and block_boxes must have the same length")
        return build_reduction_graph(self, list(block_results), list(block_boxes),
                                     fixed_geometry, initial_transform)

    def field_geometry(self, fixed: ImageGeometry) -> ImageGeometry:
        """The field grid for a fixed geometry."""
        return field_geometry_for(fixed, factor=self.field_spacing_factor,
                                  spacing=self.field_spacing)


def _padded_box(located: LocatedBlockResult, fixed: ImageGeometry) -> Box:
    """Padded fixed box of a concrete result: its domain's box, else the block."""
    core = Box.from_slices(located.fixed_info.array_slice, fixed.shape)
    dom = located.result.transform_domain
    if dom is None:
        return core
    lo, hi = _domain_bounds(dom, fixed)
    box = Box(tuple(np.floor(lo + 0.5 + 1e-6).astype(int)),
              tuple(np.ceil(hi + 0.5 - 1e-6).astype(int)))
    return Box(tuple(np.minimum(box.start, core.start)), tuple(np.maximum(box.stop, core.stop)))
