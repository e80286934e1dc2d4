"""Client cost of a block stage's slab graphs at level 0 of a virtual 10 TB pair (issue #23).

A full-resolution block stage on the 10 TB pair (20000×20000×12500 uint16,
128³ blocks: a 98×156×156 grid, 2.4 million blocks) runs in slabs
(:mod:`ngff_dreg.slab_stage`). The client plans each slab while the cluster
waits for it, so its time per slab is paid 100-200 times in series. This
measures, without computing anything (so it runs on any machine):

* the cut: slabs, blocks and field write units per slab, and the earlier
  pieces a slab holds;
* one slab from the middle of the grid: the seconds to plan its block tasks,
  their sample and status tasks, its blend tasks and the slab's summary task,
  then to turn them into the graph the client sends (what
  ``Client.compute`` does first), and the tasks in that graph;
* a baseline in the same process: the same block, blend and (with
  ``--baseline-summary``, gigabytes at 20 000 blocks) summary tasks made
  with one :func:`dask.delayed` call each, their arguments walked by dask
  (how they were made before), and the ratios;
* the client's peak RSS, and its RSS before the baseline.

Run::

    python benchmarks/bench_slab_graph.py [--slab-blocks 20000] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dask import delayed  # noqa: E402
from dask.base import collections_to_expr  # noqa: E402

from ngff_dreg import slab_stage  # noqa: E402
from ngff_dreg.blocks import GridSlabs  # noqa: E402
from ngff_dreg.engine import block_grid, plan_block_tasks, register_block  # noqa: E402
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor  # noqa: E402
from ngff_dreg.itk_bridge import reader_geometry  # noqa: E402
from ngff_dreg.methods.translation import PhaseCorrelationTranslation  # noqa: E402
from ngff_dreg.reduce import ReduceToDisplacementField  # noqa: E402
from ngff_dreg.reduce.graph import _t_blend, reduction_plan  # noqa: E402
from ngff_dreg.slab_stage import _t_slab_summary  # noqa: E402
from ngff_dreg.task_args import one_task  # noqa: E402
from ngff_dreg.transforms import AffineTransform  # noqa: E402
from ngff_dreg.virtual_image import VirtualPair  # noqa: E402

TEN_TB = (12500, 20000, 20000)


def _baseline_blocks(tasks: Any) -> float:
    """Seconds to make the slab's block tasks with one walked delayed call each."""
    shared = tasks.shared
    t0 = time.perf_counter()
    for plan in tasks.plans:
        delayed(register_block, pure=True)(
            plan, options=None, method_kwargs={},
            dask_key_name=f"base-block-{'-'.join(map(str, plan.info.chunk_index))}", **shared)
    return time.perf_counter() - t0


def _baseline_blends(plan: Any, units: Any, samples: list[Any], reach: Any) -> float:
    """Seconds to make the slab's blend tasks with one walked delayed call each."""
    t0 = time.perf_counter()
    for c in units:
        unit = plan.units[c]
        reaching = [reach.reaching(cbox) for cbox in unit.chunks]
        used = sorted({i for r in reaching for i in r})
        pos = {i: k for k, i in enumerate(used)}
        delayed(_t_blend, pure=True)(
            unit, [samples[i] for i in used], [[pos[i] for i in r] for r in reaching],
            plan.fgeom, plan.fixed, plan.initial, plan.affine, None, None,
            dask_key_name=f"base-blend-{c}")
    return time.perf_counter() - t0


def measure(slab_blocks: int, block: int, slab: int | None,
            baseline_summary: bool = False) -> dict[str, Any]:
    """The figures of the module docstring, for one slab size."""
    pair = VirtualPair(shape=TEN_TB, chunks=(128,))
    fixed_ctor = OMEZarrReaderConstructor(pair.url("fixed"), level=0)
    moving_ctor = OMEZarrReaderConstructor(pair.url("moving"), level=0)
    fixed = reader_geometry(fixed_ctor)
    blk, chunks = block_grid(fixed_ctor, fixed, reader_geometry(moving_ctor), (block,) * 3)
    grid = tuple(len(c) for c in chunks)
    slabs = GridSlabs(grid, slab_blocks)
    s = len(slabs) // 2 if slab is None else slab
    box = slabs.box(s)

    t0 = time.perf_counter()
    tasks = plan_block_tasks(fixed_ctor, moving_ctor, PhaseCorrelationTranslation(),
                             AffineTransform.identity(3), (block,) * 3, 0.5, grid_slab=box)
    t_blocks = time.perf_counter() - t0
    reducer = ReduceToDisplacementField(field_spacing_factor=4)
    t0 = time.perf_counter()
    plan = reduction_plan(reducer, None, fixed, None, "slabs", tasks.token)
    layout = slab_stage.slab_layout(plan, chunks, 0.5, slabs)
    t_layout = time.perf_counter() - t0
    ids = [int(np.ravel_multi_index(p.info.chunk_index, grid)) for p in tasks.plans]
    boxes = [p.padded for p in tasks.plans]
    t0 = time.perf_counter()
    samples, statuses = plan.samples(tasks.block_results, boxes, ids)
    t_samples = time.perf_counter() - t0
    reach = plan.reach_index([plan.reach_box(b) for b in boxes])
    units = layout.units[s]
    t0 = time.perf_counter()
    blends = plan.blends(units, samples, reach, None)
    t_blends = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = one_task("slab-summary", _t_slab_summary, box.start, box.shape, statuses, blends,
                       None)
    t_summary = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = collections_to_expr([*tasks.block_results, summary], True).optimize()
    graph_tasks = len(graph.__dask_graph__())
    t_submit = time.perf_counter() - t0
    rss_before_baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base_blocks = _baseline_blocks(tasks)
    base_blends = _baseline_blends(plan, units, samples, reach)
    base: dict[str, float] = {"block_tasks": base_blocks, "blends": base_blends}
    if baseline_summary:
        t0 = time.perf_counter()
        delayed(_t_slab_summary, pure=True)(box.start, box.shape, statuses, blends, None)
        base["summary"] = time.perf_counter() - t0
    n = len(tasks.plans)
    return {
        "pair": {"shape": list(TEN_TB), "chunks": 128}, "level": 0, "block": list(blk),
        "grid": list(grid), "blocks": int(np.prod(grid)), "slab_blocks": slab_blocks,
        "slabs": len(slabs), "cut_axis": slabs.axis, "step": slabs.step,
        "field_units": len(plan.units),
        "most_units_per_slab": max(len(u) for u in layout.units),
        "most_held_pieces": max(len(h) for h in layout.held),
        "slab": s, "slab_box": [list(box.start), list(box.stop)], "slab_block_count": n,
        "slab_units": len(units), "slab_graph_tasks": graph_tasks,
        "seconds": {"block_tasks": t_blocks, "layout": t_layout, "samples": t_samples,
                    "blends": t_blends, "summary": t_summary, "graph_to_send": t_submit},
        "baseline_seconds": base,
        "client_rss_before_baseline_mb": rss_before_baseline,
        "client_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print, and write the JSON if asked."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slab-blocks", type=int, default=20000)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--slab", type=int, default=None, help="which slab (default: the middle)")
    ap.add_argument("--baseline-summary", action="store_true",
                    help="also the summary task made by one walked delayed call (GBs of RSS)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    fig = measure(args.slab_blocks, args.block, args.slab, args.baseline_summary)
    sec, base = fig["seconds"], fig["baseline_seconds"]
    print(f"level 0 of the virtual 10 TB pair: grid {fig['grid']} ({fig['blocks']:,} blocks "
          f"of {fig['block']}), {fig['field_units']:,} field units")
    print(f"slabs of at most {fig['slab_blocks']:,} blocks: {fig['slabs']} (cut along grid axis "
          f"{fig['cut_axis']}, {fig['step']} at a time); at most {fig['most_units_per_slab']:,} "
          f"units and {fig['most_held_pieces']} held pieces per slab")
    print(f"slab {fig['slab']}: {fig['slab_block_count']:,} blocks, {fig['slab_units']:,} units, "
          f"{fig['slab_graph_tasks']:,} tasks in its graph")
    for name, seconds in sec.items():
        versus = (f" (baseline {base[name]:.1f} s: {base[name] / max(seconds, 1e-9):.1f}x)"
                  if name in base else "")
        print(f"  {name}: {seconds:.2f} s{versus}")
    total = sum(sec.values())
    print(f"  client: {total:.1f} s per slab, {total * fig['slabs'] / 3600:.2f} h for the "
          f"{fig['slabs']} slabs; RSS {fig['client_rss_before_baseline_mb']:.0f} MB before the "
          f"baseline, {fig['client_peak_rss_mb']:.0f} MB peak")
    if args.out is not None:
        args.out.write_text(json.dumps(fig, indent=1) + "\n")
    return fig


if __name__ == "__main__":
    main()
