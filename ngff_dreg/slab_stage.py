"""A block stage in slabs: a grid too large for one graph, a few whole grid layers at a time.

A stage whose block grid has more blocks than ``ngff-dreg.stage.slab-blocks``
(:func:`ngff_dreg.config.slab_blocks`) is cut along the grid's axis 0 (its
slowest) into slabs of whole layers (:func:`~ngff_dreg.blocks.grid_slabs`),
each computed on its own, with the block size the schedule asked for:

1. **Forward, slab by slab.** Only the slab's blocks are planned
   (:func:`~ngff_dreg.engine.plan_block_tasks` with ``grid_slab``),
   registered and sampled; then every forward field unit is blended and
   written whose reaching blocks (:meth:`ReductionPlan.reach_box
   <ngff_dreg.reduce.graph.ReductionPlan.reach_box>`) all lie in this slab or
   an earlier one. A unit near the slab's far side waits for the next slab.
   The samples of the few layers a later slab's units still need stay on
   the cluster: they are persisted (:meth:`distributed.Client.persist`) with
   the slab's graph, handed to the later slabs' graphs as futures, and
   released once no later slab needs them. Nothing of them is written to a
   store. The client keeps per slab only its status grid and a few
   figures, which are recorded in the run's manifest
   (:class:`SlabRecords`): a rerun after an interruption starts at the first
   slab not recorded. The kept samples died with the interrupted run, so
   that slab registers the earlier layers it needs again (its graph plans
   them with ``grid_slab=(layer, layer + 1)``, registers and samples them)
   and keeps those a later slab still needs. That costs the blocks of the
   layers the slab reaches back into (usually a layer or two), once per
   resume; nothing else is registered twice.
2. **Inverse, then checks, slab by slab.** The same units per slab; the
   inverse reads the written forward field, the checks both fields.
3. **One finalize**: the report from the slabs' figures, the status map, the
   pyramids and the metadata (the writer's ``finish``, last).

Every unit is blended with the same blocks, in the same order, as in the
stage's one-graph reduction (:func:`~ngff_dreg.reduce.graph.build_reduction_graph`),
so the fields are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from dask import delayed

from ngff_dreg.blocks import grid_slabs, padded_intervals, status_grid
from ngff_dreg.cluster import compute_with_progress
from ngff_dreg.engine import BlockOptions, block_grid, plan_block_tasks
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import RegistrationResult
from ngff_dreg.itk_bridge import reader_geometry
from ngff_dreg.reduce.graph import (
    ReductionPlan,
    _t_finalize_parts,
    _t_ready,
    merge_status_summaries,
    reduction_plan,
    summarize_checks,
    summarize_statuses,
)
from ngff_dreg.reduce.reducer import ReduceToDisplacementField

__all__ = ["SlabLayout", "SlabRecords", "SlabbedStage", "slab_layout"]

logger = logging.getLogger(__name__)


class SlabRecords(Protocol):
    """Where a slabbed stage records its finished forward slabs (the run's manifest)."""

    def finished_slabs(self, layout: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """The entries of the slabs finished with this ``layout``, by slab number."""
        ...

    def record_slab(self, layout: dict[str, Any], index: int, entry: dict[str, Any]) -> None:
        """Record forward slab ``index`` as finished (its units all written)."""
        ...


@dataclass(frozen=True)
class SlabLayout:
    """How a block grid is cut into slabs, and which field units each slab writes.

    Attributes
    ----------
    slabs:
        ``(first, stop)`` grid layers of each slab.
    units:
        The field write units each slab writes (indices into the plan's units).
    held:
        For each slab, the earlier layers whose samples its units need.
    kept:
        For each slab, its own layers whose samples a later slab needs.

    """

    slabs: list[tuple[int, int]]
    units: list[list[int]]
    held: list[list[int]]
    kept: list[list[int]]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1])


def slab_layout(plan: ReductionPlan, chunks: Sequence[Sequence[int]],
                overlap_factors: Sequence[float] | float | None,
                slabs: list[tuple[int, int]]) -> SlabLayout:
    """Assign each field unit to the first slab after which every block reaching it is done.

    A layer's reach along axis 0 is the union of its blocks' reach boxes:
    their padded boxes share the layer's axis-0 interval, and the widest
    hole-filling reach is that of a box with, along every other axis, its
    longest padded interval. Only axis-0 intervals are compared (a
    superset of the exact dependencies, which the blend tasks then select).
    """
    axes = padded_intervals(plan.fixed.shape, chunks, overlap_factors)
    longest = [max(axis, key=lambda iv: iv[1] - iv[0]) for axis in axes[1:]]
    reach = []
    for a0, b0 in axes[0]:
        box = Box((a0, *(iv[0] for iv in longest)), (b0, *(iv[1] for iv in longest)))
        rb = plan.reach_box(box)
        reach.append((rb.start[0], rb.stop[0]))
    slab_of = np.zeros(len(reach), dtype=int)
    for s, (first, stop) in enumerate(slabs):
        slab_of[first:stop] = s
    # units sharing their axis-0 span (a row of units) go together
    spans = sorted({(u.box.start[0], u.box.stop[0]) for u in plan.units})
    row_slab = {}
    for span in spans:
        last = max((layer for layer, r in enumerate(reach) if _overlaps(r, span)), default=0)
        row_slab[span] = int(slab_of[last])
    units: list[list[int]] = [[] for _ in slabs]
    for c, u in enumerate(plan.units):
        units[row_slab[(u.box.start[0], u.box.stop[0])]].append(c)
    held: list[list[int]] = [[] for _ in slabs]
    kept: list[list[int]] = [[] for _ in slabs]
    for layer, r in enumerate(reach):
        own = int(slab_of[layer])
        later = sorted({row_slab[span] for span in spans
                        if row_slab[span] > own and _overlaps(r, span)})
        for s in later:
            held[s].append(layer)
        if later:
            kept[own].append(layer)
    return SlabLayout(slabs, units, held, kept)


# ------------------------------------------------------------------ tasks
def _t_slab_summary(first: int, shape: tuple[int, ...], statuses: list[Any],
                    blends: list[dict[str, Any]], prep: Any) -> dict[str, Any]:
    """A forward slab's small figures: its status grid, status summary and blend figures.

    ``prep`` (the output's arrays created, even by a slab that writes no
    unit) is a barrier.
    """
    grid = status_grid([((index[0] - first, *index[1:]), s) for index, s, _, _ in statuses],
                       shape)
    return {"status": grid.tolist(), "summary": summarize_statuses(statuses),
            "ready": _t_ready(blends)}


def _t_max_change(parts: list[dict[str, Any]]) -> float:
    return max((p["change"] for p in parts), default=0.0)


@dataclass(frozen=True)
class _Held:
    """A block's sample task (or its persisted future) and its reach box."""

    id: int
    sample: Any
    reach: Box


def _needed_after(layout: SlabLayout, layer: int, s: int) -> bool:
    """Whether a slab after ``s`` needs the samples of grid layer ``layer``."""
    return any(layer in held for held in layout.held[s + 1:])


def _release(held: list[_Held]) -> None:
    """Let the cluster forget persisted samples (released, not cancelled).

    See :func:`~ngff_dreg.cluster.compute_with_progress` on why not ``Client.cancel``.
    """
    from distributed import futures_of

    for future in futures_of([h.sample for h in held]):
        future.release()


# ------------------------------------------------------------------ the stage
@dataclass
class SlabbedStage:
    """One block stage computed in slabs on a ``distributed`` client (see the module docstring).

    Attributes
    ----------
    client:
        The run's client.
    fixed_reader_ctor, moving_reader_ctor, block_registration_method, initial_transform:
        As :func:`~ngff_dreg.engine.register_images` takes them.
    fixed_chunk_size, overlap_factors, block_options:
        Likewise.
    reducer:
        The stage's reducer; it must have a writer (its fields are written
        slab by slab).
    slab_blocks:
        Most blocks per slab (at least one grid layer per slab).
    records:
        Where finished slabs are recorded (and read back on a rerun).
    progress, desc:
        Progress bars, and their label.

    """

    client: Any
    fixed_reader_ctor: Any
    moving_reader_ctor: Any
    block_registration_method: Any
    initial_transform: Any
    fixed_chunk_size: Sequence[int] | None
    overlap_factors: Sequence[float] | float | None
    block_options: BlockOptions
    reducer: ReduceToDisplacementField
    slab_blocks: int
    records: SlabRecords
    progress: bool = False
    desc: str = "stage"

    def grid(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], ImageGeometry]:
        """``(block shape, grid chunks, fixed geometry)`` of the stage, as asked."""
        fixed = reader_geometry(self.fixed_reader_ctor)
        block, chunks = block_grid(self.fixed_reader_ctor, fixed,
                                   reader_geometry(self.moving_reader_ctor), self.fixed_chunk_size)
        return block, chunks, fixed

    def _plan_slab(self, slab: tuple[int, int]) -> Any:
        return plan_block_tasks(
            self.fixed_reader_ctor, self.moving_reader_ctor, self.block_registration_method,
            self.initial_transform, self.fixed_chunk_size, self.overlap_factors,
            block_options=self.block_options, grid_slab=slab)

    def run(self) -> RegistrationResult:
        """Compute the stage; returns its forward/inverse transforms and status grid."""
        writer = self.reducer.field_writer()
        if writer is None:
            raise ValueError("a stage in slabs writes its fields: its reducer needs a writer")
        block, chunks, fixed = self.grid()
        grid_shape = tuple(len(c) for c in chunks)
        slabs = grid_slabs(grid_shape, self.slab_blocks)
        first = self._plan_slab(slabs[0])
        plan = reduction_plan(self.reducer, writer, fixed, self.initial_transform, "slabs",
                              first.token, chunks, self.overlap_factors, slabs)
        layout = slab_layout(plan, chunks, self.overlap_factors, slabs)
        # what the recorded slabs were computed on (the run's fingerprint covers the rest)
        ident = {"grid": list(grid_shape), "block": list(block),
                 "slabs": [list(s) for s in slabs], "field": list(plan.fgeom.shape),
                 "units": len(plan.units)}
        done = self.records.finished_slabs(ident)
        logger.info("%s: %d blocks (grid %s, block %s) in %d slabs of at most %d blocks%s",
                    self.desc, int(np.prod(grid_shape)), grid_shape, block, len(slabs),
                    self.slab_blocks, f"; {len(done)} finished before" if done else "")
        entries: list[dict[str, Any]] = []
        live: dict[int, list[_Held]] = {}  # kept layers' samples, persisted on the cluster
        try:
            for s, slab in enumerate(slabs):
                if s in done:
                    entries.append(done[s])
                    continue
                tasks = first if s == 0 else self._plan_slab(slab)
                entry = self._forward(plan, layout, s, tasks, grid_shape, live,
                                      prep=plan.prepare() if not done and not entries else None)
                self.records.record_slab(ident, s, entry)
                entries.append(entry)
                for layer in [layer for layer in live if not _needed_after(layout, layer, s)]:
                    _release(live.pop(layer))
        finally:
            for held in live.values():
                _release(held)
            live.clear()
        ready = _t_ready([e["ready"] for e in entries])
        summary = merge_status_summaries([e["summary"] for e in entries])
        smap = np.concatenate([np.asarray(e["status"], dtype=np.int16) for e in entries])
        change, checks = self._inverse_and_checks(plan, layout, ready)
        final = delayed(_t_finalize_parts, pure=True)(
            self.reducer.n_levels, plan.fgeom, plan.affine, fixed, ready, change, checks,
            summary, smap, writer, dask_key_name=f"finalize-{plan.token}")
        transforms = compute_with_progress(self.client, [], final, False, self.desc)
        return RegistrationResult(transforms=transforms, status=smap)

    def _forward(self, plan: ReductionPlan, layout: SlabLayout, s: int, tasks: Any,
                 grid_shape: tuple[int, ...], live: dict[int, list[_Held]],
                 prep: Any) -> dict[str, Any]:
        """Register slab ``s`` and write its units.

        The samples of the earlier layers its units need are taken from
        ``live`` (persisted by an earlier slab of this run); those not there
        (a rerun) are registered again in this slab's graph. Every layer
        sampled here that a later slab needs is persisted into ``live``.
        """
        blocks = list(tasks.block_results)
        layers: dict[int, list[_Held]] = {}
        fresh: list[int] = []  # layers sampled in this graph

        def sample(planned: Any) -> list[Any]:
            ids = [int(np.ravel_multi_index(p.info.chunk_index, grid_shape))
                   for p in planned.plans]
            boxes = [p.padded for p in planned.plans]
            samples, statuses = plan.samples(planned.block_results, boxes, ids)
            for p, i, smp, b in zip(planned.plans, ids, samples, boxes):
                layer = int(p.info.chunk_index[0])
                if layer not in layers:
                    layers[layer] = []
                    fresh.append(layer)
                layers[layer].append(_Held(i, smp, plan.reach_box(b)))
            return statuses

        statuses = sample(tasks)
        for layer in layout.held[s]:
            if layer in live:
                layers[layer] = live[layer]
                continue
            logger.info("%s: registering grid layer %d again for slab %d (its kept samples "
                        "went with an interrupted run)", self.desc, layer, s + 1)
            again = self._plan_slab((layer, layer + 1))
            blocks.extend(again.block_results)
            sample(again)
        candidates = sorted((h for layer in layers for h in layers[layer]), key=lambda h: h.id)
        cand_samples = [h.sample for h in candidates]
        reach = plan.reach_index([h.reach for h in candidates])
        blends = [plan.blend(c, cand_samples, reach, prep) for c in layout.units[s]]
        first_layer, stop = layout.slabs[s]
        summary = delayed(_t_slab_summary, pure=True)(
            first_layer, (stop - first_layer, *grid_shape[1:]), statuses, blends, prep,
            dask_key_name=f"slab-{plan.token}-{s}")
        # submitted before the slab's graph (which shares their tasks), so that
        # they are never released between the two
        keep = [layer for layer in fresh if _needed_after(layout, layer, s)]
        try:
            for layer in keep:
                persisted = self.client.persist([h.sample for h in layers[layer]],
                                                optimize_graph=False)
                live[layer] = [_Held(h.id, smp, h.reach)
                               for h, smp in zip(layers[layer], persisted)]
            desc = f"{self.desc} slab {s + 1}/{len(layout.slabs)}"
            entry: dict[str, Any] = compute_with_progress(self.client, blocks, summary,
                                                          self.progress, desc)
        except BaseException:
            for layer in keep:
                if layer in live:
                    _release(live.pop(layer))
            raise
        return entry

    def _inverse_and_checks(self, plan: ReductionPlan, layout: SlabLayout,
                            ready: dict[str, Any]) -> tuple[float | None, list[dict[str, Any]]]:
        """Invert the written forward field, then check both, slab by slab."""
        forward = plan.field("fwd", None)
        change: float | None = None
        inverse: Any = None
        if self.reducer.compute_inverse:
            changes = []
            for s, units in enumerate(layout.units):
                parts = [plan.invert(c, forward, ready) for c in units]
                changes.append(compute_with_progress(
                    self.client, [], delayed(_t_max_change, pure=True)(
                        parts, dask_key_name=f"inverted-{plan.token}-{s}"), False, self.desc))
            change = max(changes, default=0.0)
            inverse = plan.field("inv", None)
        checks = []
        for s, units in enumerate(layout.units):
            parts = [plan.check(c, forward, inverse) for c in units]
            checks.append(compute_with_progress(
                self.client, [], delayed(summarize_checks, pure=True)(
                    parts, dask_key_name=f"checked-{plan.token}-{s}"), False, self.desc))
        return change, checks
