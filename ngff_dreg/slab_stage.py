"""A block stage in slabs: a grid too large for one graph, a bounded part of it at a time.

A stage whose block grid has more blocks than ``ngff-dreg.stage.slab-blocks``
(:func:`ngff_dreg.config.slab_blocks`) is cut into slabs of at most that many
blocks (:class:`~ngff_dreg.blocks.GridSlabs`): runs of whole grid layers
along axis 0 (its slowest) when a layer fits, else runs of whole rows of one
layer, and so on. Each is computed on its own, with the block size the
schedule asked for, so a graph never holds more than a slab's blocks at any
level size:

1. **Forward, slab by slab.** Only the slab's blocks are planned
   (:func:`~ngff_dreg.engine.plan_block_tasks` with ``grid_slab``), registered
   and sampled; then every forward field unit is blended and written whose
   reaching blocks (:meth:`ReductionPlan.reach_box
   <ngff_dreg.reduce.graph.ReductionPlan.reach_box>`) all lie in this slab or
   an earlier one. A unit near the slab's far side waits for the next slab.
   The samples of the few pieces (a slab's layers, or rows) a later slab's
   units still need stay on the cluster: they are persisted
   (:meth:`distributed.Client.persist`) with the slab's graph, handed to the
   later slabs' graphs as futures, and released once no later slab needs them.
   Nothing of them is written to a store. The client keeps per slab only its
   status grid and a few figures, which are recorded in the run's manifest
   (:class:`SlabRecords`): a rerun after an interruption starts at the first
   slab not recorded. The kept samples died with the interrupted run, so that
   slab registers the earlier pieces it needs again (its graph plans each
   piece's box of blocks, registers and samples them) and keeps those a later
   slab still needs. That costs the blocks of the pieces the slab reaches back
   into (usually a layer or a row or two), once per resume; nothing else is
   registered twice.
2. **Inverse, then checks, slab by slab.** The same units per slab; the
   inverse reads the written forward field, the checks both fields.
   Each inverse slab is recorded too, so a rerun inverts only those not
   recorded (the checks run again).
3. **One finalize**: the report from the slabs' figures, the status map, the
   pyramids and the metadata (the writer's ``finish``, last).

Every unit is blended with the same blocks, in the same order, as in the
stage's one-graph reduction (:func:`~ngff_dreg.reduce.graph.build_reduction_graph`),
so the fields are the same.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from dask import delayed

from ngff_dreg.blocks import NO_BLOCK, GridSlabs, padded_intervals, status_grid
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
from ngff_dreg.task_args import one_task

__all__ = ["Piece", "SlabLayout", "SlabRecords", "SlabbedStage", "UnitRuns", "slab_layout"]

logger = logging.getLogger(__name__)


class SlabRecords(Protocol):
    """Where a slabbed stage records its finished forward slabs (the run's manifest)."""

    def finished_slabs(self, layout: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """The entries of the slabs finished with this ``layout``, by slab number."""
        ...

    def record_slab(self, layout: dict[str, Any], index: int, entry: dict[str, Any]) -> None:
        """Record forward slab ``index`` as finished (its units all written)."""
        ...


#: A piece of a slab (:class:`~ngff_dreg.blocks.GridSlabs`): its block-index prefix.
Piece = tuple[int, ...]


@dataclass
class UnitRuns:
    """Field unit numbers as ascending runs (a slab's units, without a list of them all)."""

    runs: list[range] = field(default_factory=list)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self.runs)

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)


@dataclass(frozen=True)
class SlabLayout:
    """How a block grid is cut into slabs, and which field units each slab writes.

    Attributes
    ----------
    slabs:
        The cut (:class:`~ngff_dreg.blocks.GridSlabs`).
    units:
        The field write units each slab writes (numbers of the plan's units, as runs).
    held:
        For each slab, the pieces of earlier slabs whose samples its units need.
    kept:
        For each slab, its own pieces whose samples a later slab needs.
    until:
        For each kept piece, the last slab that needs its samples.

    """

    slabs: GridSlabs
    units: list[UnitRuns]
    held: list[list[Piece]]
    kept: list[list[Piece]]
    until: dict[Piece, int]


def _axis_reach(plan: ReductionPlan, chunks: Sequence[Sequence[int]],
                overlap_factors: Sequence[float] | float | None) -> list[Any]:
    """Per grid axis, the field-node interval that each block index along it reaches.

    A block's reach box (:meth:`ReductionPlan.reach_box`) is taken for a box
    with the block's padded interval along the axis and, along every other
    axis, the longest padded interval there: the widest hole-filling reach,
    so each interval holds that of every block of that index (a superset of
    the exact dependencies, which the blend tasks then select).
    """
    axes = padded_intervals(plan.fixed.shape, chunks, overlap_factors)
    longest = [max(axis, key=lambda iv: iv[1] - iv[0]) for axis in axes]
    reach = []
    for a, axis in enumerate(axes):
        per = []
        for iv in axis:
            ivs = [*longest[:a], iv, *longest[a + 1:]]
            rb = plan.reach_box(Box(tuple(v[0] for v in ivs), tuple(v[1] for v in ivs)))
            per.append((rb.start[a], rb.stop[a]))
        reach.append(np.asarray(per, dtype=np.int64).reshape(-1, 2))
    return reach


def slab_layout(plan: ReductionPlan, chunks: Sequence[Sequence[int]],
                overlap_factors: Sequence[float] | float | None,
                slabs: GridSlabs) -> SlabLayout:
    """Assign each field unit to the first slab after which every block reaching it is done.

    Along each grid axis up to the cut axis, the blocks whose reach
    (:func:`_axis_reach`) meets a unit form a run of indices; the last slab
    of a block in their product is that of its highest corner, since a
    block's slab number never falls as its indices grow. Units sharing
    their extent along those axes are assigned together.
    """
    cut = slabs.axis
    reach = _axis_reach(plan, chunks, overlap_factors)
    spans: dict[tuple[int, int, int], tuple[int, int]] = {}  # (axis, a, b): block index run

    def run(axis: int, a: int, b: int) -> tuple[int, int]:
        if (axis, a, b) not in spans:
            hit = np.nonzero((reach[axis][:, 0] < b) & (reach[axis][:, 1] > a))[0]
            spans[axis, a, b] = (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 1)
        return spans[axis, a, b]

    # the units sharing their unit-grid indices along axes 0..cut are a run of
    # unit numbers (C order); each such run is assigned whole
    field_units = plan.units
    inner = math.prod(field_units.grid[cut + 1:])
    groups: dict[tuple[tuple[int, int], ...], list[range]] = {}
    axis_spans = [field_units.spans(axis) for axis in range(cut + 1)]
    for flat, prefix in enumerate(itertools.product(*axis_spans)):
        key = tuple(run(axis, a, b) for axis, (a, b) in enumerate(prefix))
        groups.setdefault(key, []).append(range(flat * inner, (flat + 1) * inner))
    n = len(slabs)
    units: list[UnitRuns] = [UnitRuns() for _ in range(n)]
    held_sets: list[set[Piece]] = [set() for _ in range(n)]
    for key, members in groups.items():
        s = slabs.slab_of([b - 1 for _, b in key])
        units[s].runs.extend(members)
        for piece in itertools.product(*(range(a, b) for a, b in key)):
            if slabs.slab_of(piece) < s:
                held_sets[s].add(tuple(int(i) for i in piece))
    kept_sets: list[set[Piece]] = [set() for _ in range(n)]
    until: dict[Piece, int] = {}
    for s, held in enumerate(held_sets):
        for piece in held:
            kept_sets[slabs.slab_of(piece)].add(piece)
            until[piece] = s
    for u in units:
        u.runs.sort(key=lambda r: r.start)
    return SlabLayout(slabs, units, [sorted(h) for h in held_sets],
                      [sorted(k) for k in kept_sets], until)


# ------------------------------------------------------------------ tasks
def _t_slab_summary(first: tuple[int, ...], shape: tuple[int, ...], statuses: list[Any],
                    blends: list[dict[str, Any]], prep: Any) -> dict[str, Any]:
    """A forward slab's small figures: its status grid, status summary and blend figures.

    ``first`` is the slab's first block index. ``prep`` (the output's arrays
    created, even by a slab that writes no unit) is a barrier.
    """
    grid = status_grid([(tuple(i - f for i, f in zip(index, first)), s)
                        for index, s, _, _ in statuses], shape)
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


def _needed_after(layout: SlabLayout, piece: Piece, s: int) -> bool:
    """Whether a slab after ``s`` needs the samples of ``piece``."""
    return layout.until.get(piece, -1) > s


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

    def _plan_slab(self, part: Box) -> Any:
        return plan_block_tasks(
            self.fixed_reader_ctor, self.moving_reader_ctor, self.block_registration_method,
            self.initial_transform, self.fixed_chunk_size, self.overlap_factors,
            block_options=self.block_options, grid_slab=part)

    def run(self) -> RegistrationResult:
        """Compute the stage; returns its forward/inverse transforms and status grid."""
        writer = self.reducer.field_writer()
        if writer is None:
            raise ValueError("a stage in slabs writes its fields: its reducer needs a writer")
        block, chunks, fixed = self.grid()
        grid_shape = tuple(len(c) for c in chunks)
        slabs = GridSlabs(grid_shape, self.slab_blocks)
        first = self._plan_slab(slabs.box(0))
        plan = reduction_plan(self.reducer, writer, fixed, self.initial_transform, "slabs",
                              first.token, chunks, self.overlap_factors, slabs.describe())
        layout = slab_layout(plan, chunks, self.overlap_factors, slabs)
        # what the recorded slabs were computed on (the run's fingerprint covers the rest)
        ident = {"grid": list(grid_shape), "block": list(block), "slabs": slabs.describe(),
                 "field": list(plan.fgeom.shape), "units": len(plan.units)}
        done = self.records.finished_slabs(ident)
        logger.info("%s: %d blocks (grid %s, block %s) in %d slabs of at most %d blocks "
                    "(cut along grid axis %d, %d at a time)%s", self.desc,
                    int(np.prod(grid_shape)), grid_shape, block, len(slabs), self.slab_blocks,
                    slabs.axis, slabs.step,
                    f"; {sum(1 for s in done if s < len(slabs))} finished before" if done else "")
        entries: list[dict[str, Any]] = []
        live: dict[Piece, list[_Held]] = {}  # kept pieces' samples, persisted on the cluster
        try:
            for s in range(len(slabs)):
                if s in done:
                    entries.append(done[s])
                    continue
                tasks = first if s == 0 else self._plan_slab(slabs.box(s))
                entry = self._forward(plan, layout, s, tasks, grid_shape, live,
                                      prep=plan.prepare() if not done and not entries else None)
                self.records.record_slab(ident, s, entry)
                entries.append(entry)
                for piece in [p for p in live if not _needed_after(layout, p, s)]:
                    _release(live.pop(piece))
        finally:
            for held in live.values():
                _release(held)
            live.clear()
        ready = _t_ready([e["ready"] for e in entries])
        summary = merge_status_summaries([e["summary"] for e in entries])
        smap = np.full(grid_shape, NO_BLOCK, dtype=np.int16)
        for s, e in enumerate(entries):
            smap[slabs.box(s).slices] = np.asarray(e["status"], dtype=np.int16)
        change, checks = self._inverse_and_checks(plan, layout, ready, ident, dict(done))
        final = delayed(_t_finalize_parts, pure=True)(
            self.reducer.n_levels, plan.fgeom, plan.affine, fixed, ready, change, checks,
            summary, smap, writer, dask_key_name=f"finalize-{plan.token}")
        transforms = compute_with_progress(self.client, [], final, False, self.desc)
        return RegistrationResult(transforms=transforms, status=smap)

    def _forward(self, plan: ReductionPlan, layout: SlabLayout, s: int, tasks: Any,
                 grid_shape: tuple[int, ...], live: dict[Piece, list[_Held]],
                 prep: Any) -> dict[str, Any]:
        """Register slab ``s`` and write its units.

        The samples of the earlier pieces its units need are taken from
        ``live`` (persisted by an earlier slab of this run); those not there
        (a rerun) are registered again in this slab's graph. Every piece
        sampled here that a later slab needs is persisted into ``live``.
        """
        slabs = layout.slabs
        blocks = list(tasks.block_results)
        pieces: dict[Piece, list[_Held]] = {}
        fresh: list[Piece] = []  # pieces sampled in this graph

        def sample(planned: Any) -> list[Any]:
            ids = [int(np.ravel_multi_index(p.info.chunk_index, grid_shape))
                   for p in planned.plans]
            boxes = [p.padded for p in planned.plans]
            samples, statuses = plan.samples(planned.block_results, boxes, ids)
            for p, i, smp, b in zip(planned.plans, ids, samples, boxes):
                piece = tuple(int(v) for v in p.info.chunk_index[:slabs.axis + 1])
                if piece not in pieces:
                    pieces[piece] = []
                    fresh.append(piece)
                pieces[piece].append(_Held(i, smp, plan.reach_box(b)))
            return statuses

        statuses = sample(tasks)
        for piece in layout.held[s]:
            if piece in live:
                pieces[piece] = live[piece]
                continue
            logger.info("%s: registering the blocks %s again for slab %d (their kept samples "
                        "went with an interrupted run)", self.desc, slabs.piece_box(piece),
                        s + 1)
            again = self._plan_slab(slabs.piece_box(piece))
            blocks.extend(again.block_results)
            sample(again)
        candidates = sorted((h for piece in pieces for h in pieces[piece]), key=lambda h: h.id)
        cand_samples = [h.sample for h in candidates]
        reach = plan.reach_index([h.reach for h in candidates])
        blends = plan.blends(layout.units[s], cand_samples, reach, prep)
        box = slabs.box(s)
        summary = one_task(f"slab-{plan.token}-{s}", _t_slab_summary, box.start, box.shape,
                           statuses, blends, prep)
        # submitted before the slab's graph (which shares their tasks), so that
        # they are never released between the two
        keep = [piece for piece in fresh if _needed_after(layout, piece, s)]
        try:
            for piece in keep:
                persisted = self.client.persist([h.sample for h in pieces[piece]],
                                                optimize_graph=False)
                live[piece] = [_Held(h.id, smp, h.reach)
                               for h, smp in zip(pieces[piece], persisted)]
            desc = f"{self.desc} slab {s + 1}/{len(slabs)}"
            entry: dict[str, Any] = compute_with_progress(self.client, blocks, summary,
                                                          self.progress, desc)
        except BaseException:
            for piece in keep:
                if piece in live:
                    _release(live.pop(piece))
            raise
        return entry

    def _inverse_and_checks(self, plan: ReductionPlan, layout: SlabLayout, ready: dict[str, Any],
                            ident: dict[str, Any], done: dict[int, dict[str, Any]]
                            ) -> tuple[float | None, list[dict[str, Any]]]:
        """Invert the written forward field, then check both, slab by slab.

        Each inverse slab's figure is recorded as it is computed, under the
        slab numbers after the forward ones (:func:`_inverse_record`), so a rerun
        inverts only the slabs not recorded.
        """
        n = len(layout.slabs)
        forward = plan.field("fwd", None)
        change: float | None = None
        inverse: Any = None
        if self.reducer.compute_inverse:
            changes = []
            for s, units in enumerate(layout.units):
                index = _inverse_record(s, n)
                if index not in done:
                    parts = plan.inverts(units, forward, ready)
                    value = compute_with_progress(
                        self.client, [], one_task(f"inverted-{plan.token}-{s}", _t_max_change,
                                                  parts), False, self.desc)
                    done[index] = {"change": float(value)}
                    self.records.record_slab(ident, index, done[index])
                changes.append(done[index]["change"])
            change = max(changes, default=0.0)
            inverse = plan.field("inv", None)
        # the checks (reads, and the Jacobian map) are not recorded: their
        # figures hold the residual samples, too many for the manifest
        checks = []
        for s, units in enumerate(layout.units):
            parts = plan.checks(units, forward, inverse)
            checks.append(compute_with_progress(
                self.client, [], one_task(f"checked-{plan.token}-{s}", summarize_checks, parts),
                False, self.desc))
        return change, checks


def _inverse_record(s: int, n: int) -> int:
    """The number inverse slab ``s`` of a stage's ``n`` is recorded under.

    Forward slabs are recorded as ``0..n-1``, inverse ones as ``n..2n-1``.
    """
    return n + s
