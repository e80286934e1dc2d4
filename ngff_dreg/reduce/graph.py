"""The reduction's dask graph: one thin task per kernel call, and the builder.

Task layout (B blocks, C field write units: chunks, or shards)::

    sample-<b>      B tasks   BlockSample of one block (small arrays)
    status-<b>      B tasks   (chunk_index, status) — for the status grid
    blend-<c>       C tasks   blend + fold + write forward unit c; deps: blocks reaching c
    fwd-ready       1 task    barrier + stats (max |D|), no field data
    invert-<c>      C tasks   inverse unit c (reads D with a halo), written once
    check-<c>       C tasks   Jacobian unit c and inverse residuals at random points
    finalize        1 task    pyramids + metadata (writer) / assembly (memory), result

A write unit (:class:`~ngff_dreg.io.omezarr.shards.WriteUnit`) is one field chunk, or,
when the writer stores its arrays sharded
(:class:`~ngff_dreg.interfaces.ShardedFieldWriter`), one whole shard: its task
computes the shard's inner chunks one after the other, exactly as the chunk
tasks would (same blocks, same kernels, same order), and writes the shard
once, so no two tasks ever write one shard object. Such a task holds one
shard of the stored field plus one chunk's working set.

:func:`build_reduction_graph` wires these tasks into one graph from the
pieces of a :class:`ReductionPlan`; a stage in slabs
(:mod:`ngff_dreg.slab_stage`) computes the same pieces a part at a time, and
finalizes once from the parts' small figures (:func:`summarize_statuses`,
:func:`summarize_checks`).

The kernels (:mod:`~ngff_dreg.reduce.blend`, :mod:`~ngff_dreg.reduce.inverse`,
:mod:`~ngff_dreg.reduce.quality`) are pure NumPy. The tasks here adapt what
they are given to them: ITK block transforms and domains become NumPy-evaluable
objects (:func:`sample_block`), and field chunks go to the
:class:`~ngff_dreg.interfaces.FieldWriter` the reducer was handed. Only in the
in-memory mode (no writer) is a whole field ever held by one task
(``assemble-*``), which is the point of that mode.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from dask import delayed
from dask.base import tokenize
from dask.delayed import Delayed

from ngff_dreg.blocks import status_grid
from ngff_dreg.geometry import Box, ImageGeometry, one_per_axis
from ngff_dreg.interfaces import (
    BlockRegStatus,
    FieldWriter,
    LocatedBlockResult,
    ShardedFieldWriter,
    SupportsTransformPoints,
)
from ngff_dreg.io.omezarr.shards import WriteUnit, WriteUnits, write_units
from ngff_dreg.itk_bridge import ItkPointMap, class_name, geometry_of, is_cubic_bspline
from ngff_dreg.reduce.blend import (
    BlockSample,
    blend_chunk,
    block_sample,
    box_bounds,
    domain_bounds,
    fill_nodes,
    fill_reach,
    fold_chunk,
    ncc_figures,
    ncc_sums,
    node_range,
    node_ratio,
)
from ngff_dreg.reduce.inverse import inverse_residuals, invert_chunk
from ngff_dreg.reduce.quality import jacobian_chunk
from ngff_dreg.reduce.result import BlendedTransformResult
from ngff_dreg.task_args import Layer, one_task
from ngff_dreg.transforms import AffineTransform, BSplineGrid, DisplacementField, TransformChain

if TYPE_CHECKING:
    from ngff_dreg.reduce.reducer import ReduceToDisplacementField

__all__ = [
    "ReductionPlan",
    "build_reduction_graph",
    "linear_part",
    "merge_status_summaries",
    "padded_box",
    "reduction_plan",
    "sample_block",
    "summarize_checks",
    "summarize_statuses",
]

logger = logging.getLogger(__name__)

#: ITK transforms evaluated point by point (no matrix form).
_NONLINEAR = ("DisplacementFieldTransform", "BSplineTransform", "CompositeTransform")


# ------------------------------------------------------------------ adapters
def numpy_transform(transform: Any) -> SupportsTransformPoints:
    """A block transform the kernels can evaluate with NumPy (the same map).

    ngff-dreg transforms pass through; a cubic ``itk.BSplineTransform``
    becomes a :class:`~ngff_dreg.transforms.BSplineGrid` and a linear ITK
    transform an :class:`~ngff_dreg.transforms.AffineTransform` (vectorised);
    any other ITK transform is evaluated point by point.
    """
    if isinstance(transform, SupportsTransformPoints):
        return transform
    if is_cubic_bspline(transform):
        return BSplineGrid.from_itk(transform)
    if class_name(transform) not in _NONLINEAR:
        try:
            return AffineTransform.from_itk(transform)
        except (TypeError, AttributeError):
            pass
    return ItkPointMap(transform)


def pointwise(transform: Any) -> Any:
    """``transform`` made evaluable by the kernels without changing its arithmetic."""
    if transform is None or isinstance(transform, SupportsTransformPoints):
        return transform
    return ItkPointMap(transform)


def linear_part(transform: Any, ndim: int) -> AffineTransform:
    """The affine ``A`` a total field is expressed after (see :mod:`~ngff_dreg.reduce.blend`)."""
    if transform is None:
        return AffineTransform.identity(ndim)
    if isinstance(transform, TransformChain):
        return transform.affine
    if isinstance(transform, AffineTransform):
        return transform
    try:
        return AffineTransform.from_itk(transform)
    except (TypeError, AttributeError):
        return AffineTransform.identity(ndim)


def sample_block(located: LocatedBlockResult, block_box: Box | None,
                 fixed: ImageGeometry, fgeom: ImageGeometry, *,
                 use_quality: bool = False, fill_distance: float = 1.0) -> BlockSample:
    """Summarise one block result for the field-chunk tasks.

    The result's domain (an ITK image) and transform (ITK or ngff-dreg) are
    turned into a grid and a NumPy-evaluable map, then handed to the kernel
    :func:`~ngff_dreg.reduce.blend.block_sample` (see it for the parameters).
    """
    res = located.result
    status = int(res.status)
    domain = geometry_of(res.transform_domain) if res.transform_domain is not None else None
    transform = numpy_transform(res.transform) if status == BlockRegStatus.SUCCESS else None
    core = Box.from_slices(located.fixed_info.array_slice, fixed.shape)
    figures = getattr(res, "figures", None)  # itk-dreg's own result records have none
    message = getattr(res, "message", "")
    return block_sample(status, located.fixed_info.chunk_index, core, block_box, domain,
                        transform, res.metric, fixed, fgeom, use_quality=use_quality,
                        fill_distance=fill_distance,
                        figures=figures if isinstance(figures, dict) else None,
                        message=message if isinstance(message, str) else "")


def padded_box(located: LocatedBlockResult, fixed: ImageGeometry) -> Box:
    """Padded fixed box of a concrete result: its domain's box, else the block."""
    core = Box.from_slices(located.fixed_info.array_slice, fixed.shape)
    dom = located.result.transform_domain
    if dom is None:
        return core
    lo, hi = domain_bounds(geometry_of(dom), fixed)
    box = Box(tuple(np.floor(lo + 0.5 + 1e-6).astype(int)),
              tuple(np.ceil(hi + 0.5 - 1e-6).astype(int)))
    return Box(tuple(np.minimum(box.start, core.start)), tuple(np.maximum(box.stop, core.stop)))


# ------------------------------------------------------------------ tasks
def _t_sample(located: Any, box: Box, fixed: ImageGeometry, fgeom: ImageGeometry,
              use_quality: bool, fill_distance: float) -> BlockSample:
    """Kernel :func:`~ngff_dreg.reduce.blend.block_sample`, on one located result."""
    return sample_block(located, box, fixed, fgeom, use_quality=use_quality,
                        fill_distance=fill_distance)


#: refused blocks listed by name, with the method's reason, in a stage's report
MAX_REFUSED_LISTED = 50

Status = tuple[tuple[int, ...], int, dict[str, float], str]


def _t_status(sample: BlockSample) -> Status:
    """``(chunk_index, status, figures, message)`` of one block, for the status grid and report."""
    return sample.chunk_index, sample.status, sample.figures, sample.message


def refused_blocks(statuses: list[Status]) -> list[dict[str, Any]]:
    """The refused blocks, each with its status name and the method's reason.

    Blocks without signal are left out (nothing to register there); at most
    :data:`MAX_REFUSED_LISTED`, in block order.
    """
    out = []
    for index, s, _, message in sorted(statuses, key=lambda t: tuple(t[0])):
        if s in (BlockRegStatus.SUCCESS, BlockRegStatus.NO_SIGNAL):
            continue
        try:
            name = BlockRegStatus(s).name
        except ValueError:  # a plug-in's own code
            name = str(s)
        out.append({"block": [int(i) for i in index], "status": name, "reason": message})
        if len(out) == MAX_REFUSED_LISTED:
            break
    return out


def _write_field(writer: FieldWriter, name: str, geometry: ImageGeometry, unit: WriteUnit,
                 parts: Iterator[tuple[Box, Any]]) -> None:
    """Write a unit's parts: one chunk as such, a shard's chunks with one write."""
    if len(unit.chunks) == 1:
        writer.write_chunk(name, geometry, unit.box, next(parts)[1])
    else:
        assert isinstance(writer, ShardedFieldWriter)
        writer.write_chunks(name, geometry, unit.box, parts)


def _single(unit: WriteUnit, parts: Iterator[tuple[Box, Any]]) -> Any:
    """The one part of an in-memory unit (units are chunks without a writer)."""
    if len(unit.chunks) != 1:
        raise AssertionError("only a writer's fields are written by shards")
    return next(parts)[1]


def _t_blend(unit: WriteUnit, samples: list[BlockSample], picks: list[list[int]],
             fgeom: ImageGeometry, fixed: ImageGeometry, initial: Any, affine: AffineTransform,
             writer: FieldWriter | None, prep: Any) -> dict[str, Any]:
    """Kernels :func:`blend_chunk` and :func:`fold_chunk` per chunk; the unit is written once.

    ``picks[k]`` are the positions in ``samples`` of the blocks reaching chunk ``k``.
    """
    figures: list[tuple[float, float, int, int]] = []

    def parts() -> Iterator[tuple[Box, Any]]:
        for chunk, pick in zip(unit.chunks, picks):
            residual, coverage = blend_chunk(chunk, [samples[i] for i in pick], fgeom, fixed)
            total = fold_chunk(chunk, residual, fgeom, initial, affine)
            norm = np.linalg.norm(total, axis=0)
            figures.append((
                float(norm.max()) if norm.size else 0.0,
                float(np.linalg.norm(residual, axis=0).max()) if residual.size else 0.0,
                int((coverage <= 0).sum()), int(coverage.size)))
            yield chunk, total

    stats: dict[str, Any] = {"box": unit.box}
    if writer is not None:
        _write_field(writer, writer.forward_name, fgeom, unit, parts())
    else:
        stats["data"] = _single(unit, parts()).astype(np.float32)
    stats.update(max_disp=max(f[0] for f in figures), max_resid=max(f[1] for f in figures),
                 uncovered=sum(f[2] for f in figures), n=sum(f[3] for f in figures))
    return stats


def _t_ready(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Barrier after the forward chunks: their summed figures (no field data)."""
    return {
        "max_disp": max((s["max_disp"] for s in stats), default=0.0),
        "max_resid": max((s["max_resid"] for s in stats), default=0.0),
        "uncovered": sum(s["uncovered"] for s in stats),
        "n": sum(s["n"] for s in stats),
    }


def _t_assemble(parts: list[dict[str, Any]], fgeom: ImageGeometry, key: str = "data"
                ) -> DisplacementField:
    """The in-memory mode's whole field, from its chunks."""
    data = np.zeros((fgeom.ndim, *fgeom.shape), dtype=np.float32)
    for p in parts:
        data[(slice(None), *p["box"].slices)] = p[key]
    return DisplacementField(fgeom, data=data)


def _t_invert(unit: WriteUnit, forward: DisplacementField, ready: dict[str, Any],
              iterations: int, writer: FieldWriter | None) -> dict[str, Any]:
    """Kernel :func:`~ngff_dreg.reduce.inverse.invert_chunk` per chunk; the unit is written once."""
    changes: list[float] = []

    def parts() -> Iterator[tuple[Box, Any]]:
        for chunk in unit.chunks:
            u, change = invert_chunk(chunk, forward, ready["max_disp"], iterations=iterations)
            changes.append(change)
            yield chunk, u

    out: dict[str, Any] = {"box": unit.box}
    if writer is not None:
        _write_field(writer, writer.inverse_name, forward.geometry, unit, parts())
    else:
        out["data"] = _single(unit, parts()).astype(np.float32)
    out["change"] = max(changes)
    return out


def _t_check(unit: WriteUnit, forward: DisplacementField, inverse: DisplacementField | None,
             affine: AffineTransform, within: tuple[Any, Any], writer: FieldWriter | None,
             inv_ready: Any) -> dict[str, Any]:
    """Kernels :func:`jacobian_chunk` and :func:`inverse_residuals` per chunk of a unit."""
    figures: list[tuple[float, int, int]] = []
    residuals: list[Any] = []
    chains = None
    if inverse is not None:
        chains = (TransformChain(affine, forward),
                  TransformChain(affine.inverse(), inverse, affine_first=True))

    def parts() -> Iterator[tuple[Box, Any]]:
        for chunk in unit.chunks:
            jac = jacobian_chunk(chunk, forward)
            figures.append((float(jac.min()) if jac.size else 1.0, int((jac <= 0).sum()),
                            int(jac.size)))
            if chains is not None:
                # a small float32 sample per chunk keeps the final task's input light
                residuals.append(inverse_residuals(chunk, *chains, n_points=128,
                                                   within=within).astype(np.float32))
            yield chunk, jac

    out: dict[str, Any] = {"box": unit.box}
    if writer is None:
        out["jac"] = _single(unit, parts()).astype(np.float32)
    elif len(unit.chunks) == 1:
        writer.write_quality_chunk("jacobian", unit.box, next(parts())[1])
    else:
        assert isinstance(writer, ShardedFieldWriter)
        writer.write_quality_chunks("jacobian", unit.box, parts())
    out.update(jac_min=min(f[0] for f in figures), folded=sum(f[1] for f in figures),
               n=sum(f[2] for f in figures))
    if chains is not None:
        out["residuals"] = np.concatenate(residuals)
    return out


def _t_prepare(writer: FieldWriter, geoms: dict[str, ImageGeometry],
               chunks: tuple[int, ...]) -> bool:
    """Create the output's arrays before any chunk is written."""
    writer.begin(geoms, chunks=chunks)
    fgeom = next(iter(geoms.values()))
    writer.create_quality_array("jacobian", fgeom.shape, chunks)
    return True


def summarize_statuses(statuses: list[Status]) -> dict[str, Any]:
    """The small figures the report needs of some blocks' statuses (mergeable).

    ``n_blocks``, ``n_success``, ``ncc`` (:func:`~ngff_dreg.reduce.blend.ncc_sums`
    of the successful blocks) and ``refused`` (:func:`refused_blocks`); the
    summaries of consecutive parts of a grid merge with
    :func:`merge_status_summaries`.
    """
    return {
        "n_blocks": len(statuses),
        "n_success": sum(1 for _, s, _, _ in statuses if s == BlockRegStatus.SUCCESS),
        "ncc": list(ncc_sums(f for _, s, f, _ in statuses if s == BlockRegStatus.SUCCESS)),
        "refused": refused_blocks(statuses),
    }


def merge_status_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of the :func:`summarize_statuses` of parts of a grid, given in block order."""
    ncc = [0.0, 0.0, 0.0, 0]
    for p in parts:
        ncc = [a + b for a, b in zip(ncc, p["ncc"])]
    return {
        "n_blocks": sum(p["n_blocks"] for p in parts),
        "n_success": sum(p["n_success"] for p in parts),
        "ncc": ncc,
        "refused": [r for p in parts for r in p["refused"]][:MAX_REFUSED_LISTED],
    }


def summarize_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of some check units that the report needs, as one check's (no maps)."""
    out: dict[str, Any] = {
        "jac_min": min((c["jac_min"] for c in checks), default=1.0),
        "folded": sum(c["folded"] for c in checks),
        "n": sum(c["n"] for c in checks),
    }
    if any("residuals" in c for c in checks):
        out["residuals"] = np.concatenate([c["residuals"] for c in checks if "residuals" in c])
    return out


def _report(fgeom: ImageGeometry, fixed: ImageGeometry, ready: dict[str, Any],
            checks: list[dict[str, Any]], summary: dict[str, Any],
            inverse_change: float | None) -> dict[str, Any]:
    """The reduction's report figures (``inverse_change``: ``None`` without an inverse)."""
    report: dict[str, Any] = {
        "n_blocks": summary["n_blocks"],
        "n_success": summary["n_success"],
        "field_shape": list(fgeom.shape),
        "field_spacing": list(fgeom.spacing),
        "max_displacement": ready["max_disp"],
        "max_residual_displacement": ready["max_resid"],
        "uncovered_fraction": ready["uncovered"] / max(ready["n"], 1),
        "jacobian_min": min((c["jac_min"] for c in checks), default=1.0),
        "folded_fraction": sum(c["folded"] for c in checks) / max(sum(c["n"] for c in checks), 1),
        **ncc_figures(summary["ncc"]),
        "refused": summary["refused"],
    }
    if inverse_change is not None:
        vox = float(min(fixed.spacing))
        samples = [c["residuals"] for c in checks if "residuals" in c]
        res = np.concatenate(samples) if samples else np.zeros(0)
        report["inverse_residual_max"] = float(res.max()) if res.size else 0.0
        report["inverse_residual_p95"] = float(np.percentile(res, 95)) if res.size else 0.0
        report["inverse_residual_max_vox"] = report["inverse_residual_max"] / vox
        report["inverse_residual_p95_vox"] = report["inverse_residual_p95"] / vox
        report["inverse_last_change"] = inverse_change
    return report


def _finish(n_levels: int | None, fgeom: ImageGeometry, affine: AffineTransform,
            report: dict[str, Any], smap: Any, has_inverse: bool, writer: FieldWriter | None,
            forward_mem: DisplacementField | None, inverse_mem: DisplacementField | None,
            checks: list[dict[str, Any]]) -> BlendedTransformResult:
    """Status map, pyramids and metadata (the writer's ``finish``, last); the result record."""
    jac_map = None
    if writer is not None:
        geoms = {writer.forward_name: fgeom}
        if has_inverse:
            geoms[writer.inverse_name] = fgeom
        if smap.size:
            writer.create_quality_array("block_status", smap.shape, smap.shape, dtype="int16")
            writer.write_quality_chunk("block_status", Box.full(smap.shape), smap)
        writer.finish(affine, geoms, n_levels=n_levels,
                      extra={"report": report, "status_map": smap.tolist()})
        forward = DisplacementField(fgeom, loader=writer.loader(writer.forward_name, fgeom))
        inverse = (DisplacementField(fgeom, loader=writer.loader(writer.inverse_name, fgeom))
                   if has_inverse else None)
    else:
        assert forward_mem is not None
        forward, inverse = forward_mem, inverse_mem
        jac_map = np.zeros(fgeom.shape, dtype=np.float32)
        for c in checks:
            jac_map[c["box"].slices] = c["jac"]
    logger.info(
        "reduction: %d/%d blocks succeeded, field %s, max |D| %.4g, Jacobian min %.4g "
        "(folded %.3g%%), inverse residual p95 %s",
        report["n_success"], report["n_blocks"], fgeom.shape, report["max_displacement"],
        report["jacobian_min"], 100 * report["folded_fraction"],
        report.get("inverse_residual_p95"),
    )
    chain = TransformChain(affine, forward)
    inv_chain = (TransformChain(affine.inverse(), inverse, affine_first=True)
                 if inverse is not None else None)
    return BlendedTransformResult(chain, inv_chain, report=report, status_map=smap,
                                  jacobian=jac_map, field_geometry=fgeom)


def _t_finalize(n_levels: int | None, fgeom: ImageGeometry,
                affine: AffineTransform, fixed: ImageGeometry, ready: dict[str, Any],
                inv_parts: list[dict[str, Any]] | None, checks: list[dict[str, Any]],
                statuses: list[Status],
                writer: FieldWriter | None,
                forward_mem: DisplacementField | None) -> BlendedTransformResult:
    """Report, status grid, pyramids and metadata (written last); the result record."""
    smap = status_grid([(index, s) for index, s, _, _ in statuses])
    change = max((p["change"] for p in inv_parts), default=0.0) if inv_parts is not None else None
    report = _report(fgeom, fixed, ready, checks, summarize_statuses(statuses), change)
    inverse_mem = (_t_assemble(inv_parts, fgeom)
                   if inv_parts is not None and writer is None else None)
    return _finish(n_levels, fgeom, affine, report, smap, inv_parts is not None, writer,
                   forward_mem, inverse_mem, checks)


def _t_finalize_parts(n_levels: int | None, fgeom: ImageGeometry, affine: AffineTransform,
                      fixed: ImageGeometry, ready: dict[str, Any],
                      inverse_change: float | None, checks: list[dict[str, Any]],
                      summary: dict[str, Any], smap: Any,
                      writer: FieldWriter) -> BlendedTransformResult:
    """:func:`_t_finalize` of a reduction computed in parts: their figures, summed."""
    report = _report(fgeom, fixed, ready, checks, summary, inverse_change)
    return _finish(n_levels, fgeom, affine, report, smap, inverse_change is not None, writer,
                   None, None, checks)


# ------------------------------------------------------------------ builder
class ReachIndex:
    """Which blocks' reach boxes meet a field box, found through a grid of field chunks.

    Testing every reach box against every chunk of a unit costs units × blocks
    box tests (days of client time for a 10 TB level's slab); the index buckets
    each reach box by the field chunks it covers, so a lookup tests only the
    boxes that share a chunk with it.
    """

    def __init__(self, reach_boxes: Sequence[Box], chunks: Sequence[int]) -> None:
        self.boxes = list(reach_boxes)
        self.chunks = tuple(int(c) for c in chunks)
        self.cells: dict[tuple[int, ...], list[int]] = {}
        for i, box in enumerate(self.boxes):
            if box.is_empty:
                continue
            for cell in self._cells(box):
                self.cells.setdefault(cell, []).append(i)

    def _cells(self, box: Box) -> Iterator[tuple[int, ...]]:
        ranges = [range(max(0, a) // c, max(0, b - 1) // c + 1)
                  for a, b, c in zip(box.start, box.stop, self.chunks)]
        return itertools.product(*ranges)

    def reaching(self, box: Box) -> list[int]:
        """Indices (ascending) of the reach boxes that meet ``box``."""
        found = {i for cell in self._cells(box) for i in self.cells.get(cell, ())}
        return sorted(i for i in found if not self.boxes[i].intersect(box).is_empty)


@dataclass
class ReductionPlan:
    """What every piece of a reduction's graph shares: the field grid, its write units, keys.

    Made by :func:`reduction_plan`; its methods add one kind of task each
    (:func:`build_reduction_graph` wires them into one graph, a reduction in
    slabs computes them a part at a time).

    Attributes
    ----------
    reducer, writer:
        The reducer and where its fields go (``None``: memory).
    fixed, fgeom:
        The fixed level and the field grid.
    affine:
        The linear part of the initial transform.
    units:
        The field write units (chunks, or shards), in C order.
    initial:
        The initial transform as the chunk tasks evaluate it (one key).
    token:
        Names the reduction's tasks.

    """

    reducer: ReduceToDisplacementField
    writer: FieldWriter | None
    fixed: ImageGeometry
    fgeom: ImageGeometry
    affine: AffineTransform
    chunks: tuple[int, ...]
    units: WriteUnits
    initial: Any
    token: str

    @property
    def ratio(self) -> Any:
        """Field spacing / fixed spacing (NumPy order)."""
        return node_ratio(self.fixed, self.fgeom)

    def reach_box(self, box: Box) -> Box:
        """Field nodes a block of padded box ``box`` can contribute to (hole filling included)."""
        lo, hi = box_bounds(box)
        nodes = node_range(lo, hi, self.ratio, self.fgeom.shape)
        reach = fill_reach(lo, hi, self.fixed, self.reducer.fill_distance)
        return nodes.pad(tuple(fill_nodes(reach, np.asarray(self.fgeom.spacing)[::-1])))

    def prepare(self) -> Any:
        """The task creating the writer's arrays (``None`` without a writer)."""
        writer = self.writer
        if writer is None:
            return None
        geoms = {writer.forward_name: self.fgeom}
        if self.reducer.compute_inverse:
            geoms[writer.inverse_name] = self.fgeom
        return delayed(_t_prepare, pure=True)(writer, geoms, self.chunks,
                                              dask_key_name=f"prepare-{self.token}")

    def samples(self, block_results: list[Any], block_boxes: list[Box], ids: list[int]
                ) -> tuple[list[Any], list[Any]]:
        """Sample and status tasks of blocks ``ids`` (their keys' numbers)."""
        layer = Layer(f"samples-{self.token}-{_first(ids)}")
        for i, res, box in zip(ids, block_results, block_boxes):
            layer.add(f"sample-{self.token}-{i}", _t_sample, res, box, self.fixed, self.fgeom,
                      self.reducer.use_quality, self.reducer.fill_distance)
        samples = layer.build()
        layer = Layer(f"statuses-{self.token}-{_first(ids)}")
        for i, s in zip(ids, samples):
            layer.add(f"status-{self.token}-{i}", _t_status, s)
        return samples, layer.build()

    def reach_index(self, reach_boxes: Sequence[Box]) -> ReachIndex:
        """The :class:`ReachIndex` of ``reach_boxes`` over this plan's field chunks."""
        return ReachIndex(reach_boxes, self.chunks)

    def blends(self, units: Iterable[int], samples: list[Any], reach: ReachIndex,
               prep: Any) -> list[Delayed]:
        """The blend tasks of ``units``, each from the blocks (in block order) that reach it.

        They are made as one graph layer of tasks that name their samples by
        key: a :func:`dask.delayed` call per unit walks each sample it is
        given, about 6 ms a unit, half a minute of client time for a slab of
        a 10 TB level's stage.
        """
        layer = Layer(f"blends-{self.token}-{_first(units)}")
        for c in units:
            unit = self.units[c]
            reaching = [reach.reaching(cbox) for cbox in unit.chunks]
            used = sorted({i for r in reaching for i in r})
            pos = {i: k for k, i in enumerate(used)}
            layer.add(f"blend-{self.token}-{c}", _t_blend, unit, [samples[i] for i in used],
                      [[pos[i] for i in r] for r in reaching], self.fgeom, self.fixed,
                      self.initial, self.affine, self.writer, prep)
        return layer.build()

    def field(self, name: str, barrier: Any) -> Any:
        """The writer's field ``name`` (``"fwd"``/``"inv"``), loaded lazily after ``barrier``."""
        assert self.writer is not None
        stored = self.writer.forward_name if name == "fwd" else self.writer.inverse_name
        return delayed(_loader_field, pure=True)(
            self.fgeom, self.writer.loader(stored, self.fgeom), barrier,
            dask_key_name=f"{name}-field-{self.token}")

    def inverts(self, units: Iterable[int], forward: Any, ready: Any) -> list[Delayed]:
        """The invert tasks of ``units`` (one graph layer)."""
        layer = Layer(f"inverts-{self.token}-{_first(units)}")
        for c in units:
            layer.add(f"invert-{self.token}-{c}", _t_invert, self.units[c], forward, ready,
                      self.reducer.inverse_iterations, self.writer)
        return layer.build()

    def checks(self, units: Iterable[int], forward: Any, inverse: Any) -> list[Delayed]:
        """The check tasks of ``units`` (one graph layer)."""
        within = (np.zeros(self.fixed.ndim), (np.asarray(self.fixed.shape) - 1) / self.ratio)
        layer = Layer(f"checks-{self.token}-{_first(units)}")
        for c in units:
            layer.add(f"check-{self.token}-{c}", _t_check, self.units[c], forward, inverse,
                      self.affine, within, self.writer, inverse)
        return layer.build()


def _first(units: Iterable[int]) -> int:
    """The first of ``units`` (-1 for none): names a layer of their tasks."""
    return next(iter(units), -1)


def reduction_plan(reducer: ReduceToDisplacementField, writer: FieldWriter | None,
                   fixed: ImageGeometry, initial: Any, *identity: Any) -> ReductionPlan:
    """The :class:`ReductionPlan` of a reduction; ``identity`` names its blocks in the keys."""
    fgeom = reducer.field_geometry(fixed)
    ndim = fixed.ndim
    chunks = tuple(int(c) for c in one_per_axis(reducer.field_chunk, ndim, "field_chunk"))
    # a sharded writer's arrays are written one whole shard per task (no two
    # tasks write one shard object); otherwise one chunk per task
    shards = (writer.shard_shape(fgeom.shape, chunks)
              if isinstance(writer, ShardedFieldWriter) else None)
    token = tokenize(writer.url if writer is not None else None, fixed, fgeom, chunks, shards,
                     *identity)
    # one key, shared by every chunk task
    initial_task = delayed(pointwise(initial), pure=False) if initial is not None else None
    return ReductionPlan(reducer, writer, fixed, fgeom, linear_part(initial, ndim), chunks,
                         write_units(fgeom.shape, chunks, shards), initial_task, token)


def build_reduction_graph(reducer: ReduceToDisplacementField, writer: FieldWriter | None,
                          block_results: list[Any], block_boxes: list[Box],
                          fixed: ImageGeometry, initial: Any) -> Any:
    """Wire the reduction's tasks (see the module docstring) into one delayed result.

    ``writer`` is where the fields go (``None``: they stay in memory); see
    :meth:`ReduceToDisplacementField.build_graph` for the rest.
    """
    # The block results' keys name their inputs (readers, method, initial
    # transform): a reduction of other blocks never shares a key with this one.
    plan = reduction_plan(reducer, writer, fixed, initial, len(block_boxes),
                          [tuple(b.start) + tuple(b.stop) for b in block_boxes],
                          [getattr(r, "key", None) for r in block_results])
    prep = plan.prepare()
    samples, statuses = plan.samples(block_results, block_boxes, list(range(len(block_boxes))))
    reach_boxes = [plan.reach_box(box) for box in block_boxes]
    # blend tasks: each depends only on the blocks that can reach its chunks
    reach = plan.reach_index(reach_boxes)
    units = range(len(plan.units))
    blends = plan.blends(units, samples, reach, prep)
    ready = one_task(f"fwd-ready-{plan.token}", _t_ready, blends)

    if writer is not None:
        forward: Any = plan.field("fwd", ready)
        forward_mem = None
    else:
        forward = one_task(f"assemble-fwd-{plan.token}", _t_assemble, blends, plan.fgeom)
        forward_mem = forward

    inv_parts = None
    inverse: Any = None
    if reducer.compute_inverse:
        inv_parts = plan.inverts(units, forward, ready)
        if writer is not None:
            inverse = plan.field("inv", one_task(f"inverted-{plan.token}", _t_barrier, inv_parts))
        else:
            inverse = one_task(f"assemble-inv-{plan.token}", _t_assemble, inv_parts, plan.fgeom)
    checks = plan.checks(units, forward, inverse)
    return one_task(f"finalize-{plan.token}", _t_finalize, reducer.n_levels, plan.fgeom,
                    plan.affine, fixed, ready, inv_parts, checks, statuses, writer, forward_mem)


def _t_barrier(parts: list[Any]) -> None:
    """Nothing: a task that runs once ``parts`` have (one dependency instead of many)."""
    return None


def _loader_field(fgeom: ImageGeometry, loader: Any, barrier: Any) -> DisplacementField:
    """A lazily loaded field, available once ``barrier`` (its writes) is done."""
    return DisplacementField(fgeom, loader=loader)
