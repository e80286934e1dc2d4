"""Peak memory of the chunked reduction when the displacement field grows 8x.

Runs ReduceToDisplacementField (blend + fold + inverse + Jacobian, written to
Zarr) on a small and a 2x-per-axis larger 3D problem (8x the field nodes and
blocks) and prints the traced peak allocation of each run and their ratio. A
reduction that materialised the whole field would show a ratio near 8; the
chunked one should stay near 1.

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
        res = BlockPairRegistrationResult(tx, metadata_image(fixed.sub(padded.slices)), None, None,
                                          BlockRegStatus.SUCCESS)
        results.append(LocatedBlockResult(res, BlockInfo(tuple(i // block for i in idx),
                                                         core.slices)))
        boxes.append(padded)
    return results, boxes


def run(n: int, scheduler: str, block: int = 32, chunk: int = 16) -> tuple[float, float, tuple]:
    fixed = ImageGeometry((n, n, n), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    results, boxes = _blocks(fixed, block, block // 4)
    with tempfile.TemporaryDirectory() as tmp:
        reducer = ReduceToDisplacementField(field_spacing_factor=2, field_chunk=chunk,
                                            output=f"{tmp}/f.zarr", scheduler=scheduler)
        import dask

        graph = reducer.build_graph([dask.delayed(r) for r in results], boxes, fixed, None)
        tracemalloc.start()
        t0 = time.perf_counter()
        out = graph.compute(scheduler=scheduler)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    shape = tuple(out.report["field_shape"])
    return peak / 2**20, elapsed, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=int, default=96, help="edge of the small fixed image")
    parser.add_argument("--scheduler", default="sync")
    args = parser.parse_args()
    rows = []
    for n in (args.base, 2 * args.base):
        peak, elapsed, shape = run(n, args.scheduler)
        nodes = int(np.prod(shape))
        field_mb = 3 * nodes * 4 / 2**20
        rows.append((n, shape, nodes, field_mb, peak, elapsed))
        print(f"fixed {n}^3  field {shape} ({nodes} nodes, {field_mb:.1f} MiB float32)  "
              f"peak traced {peak:.1f} MiB  time {elapsed:.1f} s")
    (_, _, v0, f0, p0, t0), (_, _, v1, f1, p1, t1) = rows
    print(f"field nodes x{v1 / v0:.2f}, field bytes x{f1 / f0:.2f}, "
          f"peak memory x{p1 / p0:.2f}, time x{t1 / t0:.2f}")


if __name__ == "__main__":
    main()
