"""Per-block wall time, peak memory and throughput of the block methods.

Usage: ``python benchmarks/bench_block_methods.py [--sizes 32 64 128] [--no-cluster]``

For each method and block size (3D, padding 8 voxels each side) a synthetic
block pair with a known smooth deformation is registered once (after one
warm-up call); the table gives wall time, peak traced Python/NumPy memory
(tracemalloc), RSS growth, throughput in block voxels per second and the
accuracy against the ground truth. The cluster part runs 8 blocks of 64³ on a
dask LocalCluster (processes, 1 ITK thread each) with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import psutil

from ngff_dreg import synthetic
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockInfo
from ngff_dreg.itk_bridge import image_from_array, preload_itk, set_itk_threads
from ngff_dreg.methods import (
    ElastixBlockRegistration,
    ItkBSplineRegistration,
    ItkLinearRegistration,
    PhaseCorrelationTranslation,
)
from ngff_dreg.transforms import AffineTransform, TransformChain


@dataclass
class Pair:
    fixed: Any
    moving: Any
    initial: Any
    info: BlockInfo
    truth: Any
    geom: ImageGeometry
    block: Box


def texture(shape: tuple[int, ...], seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
    img += 0.5 * ndimage.gaussian_filter(rng.standard_normal(shape), 6.0)
    img -= img.min()
    return (img / img.max()).astype(np.float32)


def plain_pair(block: int, pad: int = 8, seed: int = 0, deform: float = 2.5) -> dict[str, Any]:
    """3D block pair as plain arrays and geometries: truth = shift ∘ smooth warp."""
    ndim = 3
    full = block + 2 * pad + 8
    spacing = (1.0, 0.9, 1.2)
    shape = (full,) * ndim
    origin = -np.asarray(shape[::-1]) * np.asarray(spacing) / 2
    geom = ImageGeometry(shape, spacing, origin)
    field = synthetic.smooth_displacement(geom, deform, control_points=4, seed=seed + 1)
    initial = AffineTransform.from_arrays(np.eye(3), (1.5, -1.0, 0.5))
    truth = TransformChain(initial, field)
    bbox = Box((pad + 4,) * ndim, (pad + 4 + block,) * ndim)
    pbox = bbox.pad([pad] * ndim)
    pts = geom.sample_points(pbox, per_axis=5)
    lo = truth.transform_points(pts).min(axis=0) - 3 * pad
    hi = truth.transform_points(pts).max(axis=0) + 3 * pad
    mshape = tuple(int(v) for v in np.ceil(hi - lo)[::-1] + 1)
    mgeom = ImageGeometry(mshape, (1.0,) * ndim, lo)
    moving = texture(mshape, seed)
    fixed = synthetic.warp_to_fixed(moving, mgeom, geom.sub(pbox.slices), truth)
    return dict(
        fixed=fixed,
        geom=geom,
        pbox=pbox,
        bbox=bbox,
        moving=moving,
        mgeom=mgeom,
        initial=initial,
        truth=truth,
    )


def itk_pair(d: dict[str, Any]) -> Pair:
    """ITK block images (built where they are used: ITK images with a non-zero
    start index do not survive a pickle round trip intact)."""
    return Pair(
        image_from_array(d["fixed"], d["geom"], d["pbox"], requested=d["bbox"]),
        image_from_array(d["moving"], d["mgeom"]),
        d["initial"].to_itk(),
        BlockInfo((0, 0, 0), d["bbox"].slices),
        d["truth"],
        d["geom"],
        d["bbox"],
    )


def make_pair(block: int, pad: int = 8, seed: int = 0) -> Pair:
    return itk_pair(plain_pair(block, pad, seed))


def errors(pair: Pair, transform: Any) -> np.ndarray:
    pts = pair.geom.sample_points(pair.block, 5)
    want = pair.truth.transform_points(pts)
    got = np.array([pair.initial.TransformPoint(transform.TransformPoint(p.tolist())) for p in pts])
    return np.linalg.norm(got - want, axis=1)


METHODS = {
    "phase-corr translation": PhaseCorrelationTranslation(),
    "itk rigid (mattes)": ItkLinearRegistration(kind="rigid", metric="mattes"),
    "itk affine (correlation)": ItkLinearRegistration(kind="affine", metric="correlation"),
    "bspline numpy (corr)": ItkBSplineRegistration(mesh_size=4),
    "bspline itk (corr)": ItkBSplineRegistration(mesh_size=4, engine="itk"),
    "elastix bspline (light)": ElastixBlockRegistration(),
}


def run_one(method: Any, pair: Pair) -> SimpleNamespace:
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    t0 = time.perf_counter()
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = proc.memory_info().rss - rss0
    err = errors(pair, result.transform) if result.transform is not None else None
    return SimpleNamespace(wall=wall, peak=peak, rss=rss, status=result.status.name, err=err)


def block_table(sizes: list[int], threads: int, skip: set[str]) -> None:
    set_itk_threads(threads)
    print(f"\nPer-block cost ({threads} ITK thread(s); padded block = size + 16 per axis)")
    header = (
        f"{'method':26s} {'block':>6s} {'wall s':>7s} {'Mvox/s':>7s} {'py peak MB':>10s} "
        f"{'dRSS MB':>8s} {'status':>8s} {'err max':>8s} {'err mean':>8s}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        pair = make_pair(size)
        for name, method in METHODS.items():
            if name in skip or (size >= 128 and "itk (corr)" in name):
                continue
            method(pair.fixed, pair.moving, pair.initial, pair.info)  # warm-up
            r = run_one(method, pair)
            emax = f"{r.err.max():.3f}" if r.err is not None else "-"
            emean = f"{r.err.mean():.3f}" if r.err is not None else "-"
            print(
                f"{name:26s} {size:>5d}³ {r.wall:7.2f} {size**3 / r.wall / 1e6:7.2f} "
                f"{r.peak / 2**20:10.1f} {r.rss / 2**20:8.1f} {r.status:>8s} {emax:>8s} "
                f"{emean:>8s}"
            )


def _register_task(method: Any, plain: dict[str, Any]) -> float:
    preload_itk()
    set_itk_threads(1)
    pair = itk_pair(plain)
    t0 = time.perf_counter()
    method(pair.fixed, pair.moving, pair.initial, pair.info)
    return time.perf_counter() - t0


def cluster_throughput(block: int = 64, tasks: int = 8) -> None:
    from dask.distributed import Client, LocalCluster

    print(f"\nCluster throughput: {tasks} pre-built blocks of {block}³ (processes, 1 thread)")
    print(f"{'method':26s} {'workers':>7s} {'wall s':>7s} {'blocks/s':>8s} {'Mvox/s':>7s}")
    plains = [plain_pair(block, seed=i) for i in range(tasks)]
    for name in ("phase-corr translation", "itk rigid (mattes)", "bspline numpy (corr)"):
        method = METHODS[name]
        for workers in (1, 2):
            with (
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                client.run(preload_itk)
                data = client.scatter(plains, broadcast=True)
                warm = [
                    client.submit(_register_task, method, data[i], pure=False)
                    for i in range(workers)
                ]
                client.gather(warm)
                t0 = time.perf_counter()
                futures = [client.submit(_register_task, method, d, pure=False) for d in data]
                client.gather(futures)
                wall = time.perf_counter() - t0
            print(
                f"{name:26s} {workers:>7d} {wall:7.2f} {tasks / wall:8.2f} "
                f"{tasks * block**3 / wall / 1e6:7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[])
    args = parser.parse_args()
    preload_itk()
    block_table(args.sizes, args.threads, set(args.skip))
    if not args.no_cluster:
        cluster_throughput()


if __name__ == "__main__":
    main()
