"""Peak memory of the chunked reduction when the displacement field grows 8x.

Runs ReduceToDisplacementField (blend + fold + inverse + Jacobian + pyramid,
written to Zarr) on a small and a 2x-per-axis larger 3D problem (8x the field
nodes and blocks) with dask's synchronous scheduler, and prints two traced
(``tracemalloc``) figures per run and their ratios:

* **task peak**: the largest working memory of any single task (allocation
  peak during the task above what was live when it started). This is what a
  worker needs; a reduction that materialised the field would grow ~8x here.
* **process peak**: everything in this one process, including dask's own
  bookkeeping of the task graph, which grows with the number of tasks (on a
  cluster it lives in the scheduler, not the workers).

Usage: ``python benchmarks/bench_reduce.py [--base 96] [--scheduler sync]``
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
import tracemalloc

import numpy as np

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationResult,
    BlockRegStatus,
    LocatedBlockResult,
)
from ngff_dreg.itk_bridge import metadata_image
from ngff_dreg.reduce import ReduceToDisplacementField
from ngff_dreg.transforms import AffineTransform


def _blocks(fixed: ImageGeometry, block: int, pad: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    results, boxes = [], []
    for idx in itertools.product(*[range(0, n, block) for n in fixed.shape]):
        core = Box(idx, tuple(min(i + block, n) for i, n in zip(idx, fixed.shape)))
        padded = core.pad((pad,) * fixed.ndim).clip(fixed.shape)
        m = np.eye(fixed.ndim) + 0.01 * rng.standard_normal((fixed.ndim, fixed.ndim))
        tx = AffineTransform.from_arrays(m, rng.uniform(-1, 1, fixed.ndim))
        res = BlockPairRegistrationResult(
            tx, metadata_image(fixed.sub(padded.slices)), None, None, BlockRegStatus.SUCCESS
        )
        results.append(
            LocatedBlockResult(res, BlockInfo(tuple(i // block for i in idx), core.slices))
        )
        boxes.append(padded)
    return results, boxes


_TASK_PEAK = [0.0]
_PROCESS_PEAK = [0.0]
_TASK_NAME = [""]


def _instrument() -> None:
    """Record the working-memory peak of every reduction task."""
    import ngff_dreg.reduce.graph as graph_mod

    for name in dir(graph_mod):
        if not (name.startswith("_t_") or name == "_loader_field"):
            continue
        func = getattr(graph_mod, name)

        def wrapped(*args, _func=func, **kwargs):
            if not tracemalloc.is_tracing():
                return _func(*args, **kwargs)
            start, before = tracemalloc.get_traced_memory()
            _PROCESS_PEAK[0] = max(_PROCESS_PEAK[0], before / 2**20)
            tracemalloc.reset_peak()
            out = _func(*args, **kwargs)
            _, peak = tracemalloc.get_traced_memory()
            _PROCESS_PEAK[0] = max(_PROCESS_PEAK[0], peak / 2**20)
            if (peak - start) / 2**20 > _TASK_PEAK[0]:
                _TASK_PEAK[0] = (peak - start) / 2**20
                _TASK_NAME[0] = _func.__name__
            return out

        setattr(graph_mod, name, wrapped)


def run(
    n: int, scheduler: str, block: int = 32, chunk: int = 16
) -> tuple[float, float, float, tuple]:
    fixed = ImageGeometry((n, n, n), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    results, boxes = _blocks(fixed, block, block // 4)
    with tempfile.TemporaryDirectory() as tmp:
        reducer = ReduceToDisplacementField(
            field_spacing_factor=2, field_chunk=chunk, output=f"{tmp}/f.zarr", scheduler=scheduler
        )
        import dask

        graph = reducer.build_graph([dask.delayed(r) for r in results], boxes, fixed, None)
        _TASK_PEAK[0] = _PROCESS_PEAK[0] = 0.0
        tracemalloc.start()
        t0 = time.perf_counter()
        out = graph.compute(scheduler=scheduler)
        elapsed = time.perf_counter() - t0
        # the tasks reset the peak counter: fold in the running maximum they kept
        _, peak = tracemalloc.get_traced_memory()
        process_peak = max(_PROCESS_PEAK[0], peak / 2**20)
        tracemalloc.stop()
    shape = tuple(out.report["field_shape"])
    return _TASK_PEAK[0], process_peak, elapsed, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=int, default=96, help="edge of the small fixed image")
    parser.add_argument("--scheduler", default="sync")
    args = parser.parse_args()
    _instrument()
    rows = []
    for n in (args.base, 2 * args.base):
        task, proc, elapsed, shape = run(n, args.scheduler)
        nodes = int(np.prod(shape))
        field_mb = 3 * nodes * 4 / 2**20
        rows.append((nodes, field_mb, task, proc, elapsed))
        print(
            f"fixed {n}^3  field {shape} ({nodes} nodes, {field_mb:.1f} MiB float32)  "
            f"task peak {task:.2f} MiB ({_TASK_NAME[0]})  process peak {proc:.1f} MiB  "
            f"time {elapsed:.1f} s"
        )
    (v0, f0, k0, p0, t0), (v1, f1, k1, p1, t1) = rows
    print(
        f"ratios (large/small): field nodes x{v1 / v0:.2f}, field bytes x{f1 / f0:.2f}, "
        f"task peak x{k1 / k0:.2f}, process peak x{p1 / p0:.2f}, time x{t1 / t0:.2f}"
    )


if __name__ == "__main__":
    main()
