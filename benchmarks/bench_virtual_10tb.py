"""The whole pipeline on a virtual 10 TB pair (issue #23): memory, tasks, time, accuracy.

The pair is generated chunk by chunk from its keys
(:class:`ngff_dreg.virtual_image.VirtualPair`, served by
:class:`ngff_dreg.io.storage.virtual_store.VirtualStore` under ``virtual://``
URLs), so nothing but the output is written. Every stage runs: the global
stage on a coarse level, then one block stage on a coarser-than-full level,
limited to a central region by a virtual mask (``fixed_mask``), so the run fits
the 2-core machine. The cluster is real and multi-process: a ``dask
scheduler`` process and ``dask worker`` processes (one thread each), so the
client, the scheduler and each worker are measured apart (peak RSS sampled
every 0.2 s with psutil, process trees included).

Reported (JSON at ``--out/results.json`` and a summary on stdout):

* peak RSS of the client, the scheduler and the largest worker;
* tasks per stage (finished on the scheduler) and the most tasks the
  scheduler held at once during each stage (the graph size);
* planning time of each block stage run in one graph (the engine's ``register_images``;
  a stage in slabs plans each slab inside its stage time);
* wall time per stage and in total;
* accuracy on the registered region: the final transform against the pair's
  known fixed→moving map at random points inside the mask, in level-0 voxels
  and in voxels of the block stage's level (and the same for the identity);
* a projection of a full block stage at the block level, and at level 0
  with the same block size, on 100 and 1000 workers, from this run's seconds
  per registered block (linear in the block count; I/O and reduction
  included as they were measured here).

Tiny check (a minute on 2 cores)::

    python benchmarks/bench_virtual_10tb.py --tiny --out /tmp/bv-tiny

The full 10 TB run (20000×20000×12500 uint16 per image; about 10-40 min on 2
cores, depending on load)::

    python benchmarks/bench_virtual_10tb.py --out /tmp/bv-10tb --workers 2

Options choose the shape, the levels, the block size and the region.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ngff_dreg.virtual_image import VirtualPair  # noqa: E402

TEN_TB = (12500, 20000, 20000)


# ------------------------------------------------------------------ measuring
class PeakRSS(threading.Thread):
    """Peak RSS (bytes) of each of a few process trees, sampled every ``period`` s."""

    def __init__(self, roots: dict[str, int], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.roots = {name: psutil.Process(pid) for name, pid in roots.items()}
        self.peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_worker = 0
        self.period = period
        self.stop_event = threading.Event()

    def sample(self) -> None:
        import psutil

        for name, root in self.roots.items():
            try:
                procs = [root, *root.children(recursive=True)] if name != "client" else [root]
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                continue
            self.peak[name] = max(self.peak[name], sum(rss))
            if name.startswith("workers"):
                self.peak_worker = max([self.peak_worker, *rss[1:]])  # one worker process

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.period)

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join()
        out = {f"peak_{k}_mb": v / 2**20 for k, v in self.peak.items()}
        out["peak_one_worker_mb"] = self.peak_worker / 2**20
        return out


class TaskCounter(SchedulerPlugin):  # type: ignore[misc]
    """A scheduler plugin counting finished tasks and the largest graph held, per stage."""

    name = "bench-task-counter"

    def __init__(self) -> None:
        self.finished = 0
        self.max_held = 0
        self.prefixes: dict[str, int] = {}
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory":
            self.finished += 1
            text = key[0] if isinstance(key, tuple) else str(key)
            prefix = text.split("-")[0]
            self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1
        if self.scheduler is not None:
            self.max_held = max(self.max_held, len(self.scheduler.tasks))

    def take(self) -> dict[str, Any]:
        out = {"tasks_finished": self.finished, "max_tasks_held": self.max_held,
               "by_prefix": dict(sorted(self.prefixes.items()))}
        self.finished, self.max_held, self.prefixes = 0, 0, {}
        return out


def _take_counts(dask_scheduler: Any) -> dict[str, Any]:
    result: dict[str, Any] = dask_scheduler.plugins[TaskCounter.name].take()
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(workers: int, work: Path) -> tuple[str, subprocess.Popen[bytes],
                                                     subprocess.Popen[bytes]]:
    """A scheduler process and ``workers`` one-thread worker processes on 127.0.0.1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = open(work / "cluster.log", "wb")  # noqa: SIM115 (kept open for the processes)
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                              "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                              "--dashboard-address", ":0"], env=env, stdout=log, stderr=log)
    work_dir = work / "worker-space"
    work_dir.mkdir(exist_ok=True)
    wk = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                           "--nworkers", str(workers), "--nthreads", "1",
                           "--local-directory", str(work_dir), "--dashboard-address", ":0"],
                          env=env, stdout=log, stderr=log)
    return address, sched, wk


# ------------------------------------------------------------------ the run
def default_levels(pair: VirtualPair) -> tuple[int, int]:
    """(global level, block level): the global at about 100-200 voxels a side, blocks 4× finer."""
    g = next(lv for lv in range(pair.levels) if max(pair.level_shape(lv)) <= 200)
    return g, max(0, g - 2)


def accuracy(pair: VirtualPair, transform: Any, level: int, n: int = 2000) -> dict[str, float]:
    """Errors of ``transform`` against the truth at random points inside the mask box."""
    rng = np.random.default_rng(0)
    box = np.asarray(pair.mask_box)
    lo, hi = box[: pair.ndim] * pair.extent, box[pair.ndim :] * pair.extent
    margin = 0.1 * (hi - lo)
    pts_np = rng.uniform(lo + margin, hi - margin, (n, pair.ndim))
    pts = pts_np[:, ::-1]  # ITK order
    truth = pair.fixed_to_moving(pts)
    err = np.linalg.norm(np.asarray(transform.transform_points(pts)) - truth, axis=1)
    ident = np.linalg.norm(pts - truth, axis=1)
    vox0, voxl = min(pair.spacing), min(pair.level_spacing(level))
    return {"mean_vox0": float(err.mean() / vox0), "p95_vox0": float(np.percentile(err, 95) / vox0),
            "max_vox0": float(err.max() / vox0), "mean_vox_level": float(err.mean() / voxl),
            "p95_vox_level": float(np.percentile(err, 95) / voxl),
            "identity_mean_vox0": float(ident.mean() / vox0), "points": n}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", default="x".join(map(str, TEN_TB)), help="z x y x x (level 0)")
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="96x160x160, chunks 32 (a check)")
    ap.add_argument("--global-level", type=int, default=None)
    ap.add_argument("--block-level", type=int, default=None)
    ap.add_argument("--block", type=int, default=64, help="block edge at the block level")
    ap.add_argument("--region", type=float, default=0.2,
                    help="edge of the central region registered, as a fraction of the extent")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slab-blocks", type=int, default=None,
                    help="ngff-dreg.stage.slab-blocks: a block stage of more blocks runs in "
                         "slabs (default: the setting's, 20000)")
    args = ap.parse_args(argv)
    if args.slab_blocks is not None:
        import dask.config

        dask.config.set({"ngff-dreg.stage.slab-blocks": args.slab_blocks})
    shape = (96, 160, 160) if args.tiny else tuple(int(v) for v in args.shape.split("x"))
    chunks = 32 if args.tiny else args.chunks
    half = args.region / 2
    pair = VirtualPair(shape=shape, chunks=(chunks,), mask_box=(0.5 - half,) * len(shape)
                       + (0.5 + half,) * len(shape))
    g_level, b_level = (2, 1) if args.tiny else default_levels(pair)
    if args.tiny:
        args.block = 32
    g_level = g_level if args.global_level is None else args.global_level
    b_level = b_level if args.block_level is None else args.block_level
    args.out.mkdir(parents=True, exist_ok=True)
    return run(pair, args, g_level, b_level)


def run(pair: VirtualPair, args: argparse.Namespace, g_level: int, b_level: int) -> dict[str, Any]:
    """Start the cluster, run the pipeline measured, score it, write the results."""
    import psutil
    from distributed import Client

    import ngff_dreg.block_stage as block_stage
    from ngff_dreg import register
    from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule

    address, sched_proc, worker_proc = start_cluster(args.workers, args.out)
    plan_seconds: list[float] = []
    original = block_stage.register_images

    def timed_register_images(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        planned = original(*a, **k)
        plan_seconds.append(time.perf_counter() - t0)
        return planned

    block_stage.register_images = timed_register_images  # type: ignore[assignment]
    stages: list[dict[str, Any]] = []
    try:
        with Client(address, set_as_default=False, timeout=120) as client:
            client.wait_for_workers(args.workers, timeout=300)
            client.register_plugin(TaskCounter(), name=TaskCounter.name)
            sampler = PeakRSS({"client": os.getpid(), "scheduler": sched_proc.pid,
                               "workers": worker_proc.pid})
            sampler.start()
            schedule = Schedule(GlobalStage(level=g_level), [BlockStage(
                level=b_level, block_size=args.block, overlap=0.5, method="bspline",
                method_options={"mesh_size": 3}, field_spacing_factor=4)])

            def stage_done(report: Any) -> None:
                counts = client.run_on_scheduler(_take_counts)
                stages.append({"stage": report.name, "level": report.fixed_level,
                               "seconds": report.seconds, **counts,
                               "blocks": None if report.status is None
                               else int(np.asarray(report.status).size),
                               "blocks_registered": None if report.status is None
                               else int((np.asarray(report.status) == 0).sum())})

            t0 = time.perf_counter()
            result = register(pair.url("fixed"), pair.url("moving"),
                              str(args.out / "out.zarr"), schedule=schedule, client=client,
                              progress=False, overwrite=True, fixed_mask=pair.url("mask"),
                              on_stage_done=stage_done)
            wall = time.perf_counter() - t0
            memory = sampler.stop()
    finally:
        block_stage.register_images = original  # type: ignore[assignment]
        for p in (worker_proc, sched_proc):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    acc = accuracy(pair, result.transforms.transform, b_level)
    block_stage_fig = stages[-1]
    per_block = block_stage_fig["seconds"] * args.workers / max(
        1, block_stage_fig["blocks_registered"] or 1)
    full_blocks = {lv: math.prod(math.ceil(s / args.block) for s in pair.level_shape(lv))
                   for lv in (b_level, 0)}
    projection = {
        f"level{lv}_{w}workers_hours": n * per_block / w / 3600
        for lv, n in full_blocks.items() for w in (100, 1000)
    }
    figures = {
        "pair": {"shape": pair.shape, "chunks": pair.chunks, "dtype": pair.dtype,
                 "tb_per_image": pair.nbytes() / 1e12, "levels": pair.levels,
                 "mask_box": pair.mask_box},
        "schedule": {"global_level": g_level, "block_level": b_level, "block": args.block,
                     "block_level_shape": pair.level_shape(b_level),
                     "slab_blocks": args.slab_blocks},
        "workers": args.workers, "wall_seconds": wall, "memory": memory,
        "stages": stages, "planning_seconds": plan_seconds, "accuracy": acc,
        "seconds_per_registered_block_per_worker": per_block,
        "full_block_counts": full_blocks, "projection": projection,
        "client_rss_now_mb": psutil.Process().memory_info().rss / 2**20,
    }
    (args.out / "results.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps({"wall_s": round(wall, 1), **{k: round(v) for k, v in memory.items()},
                      "block_grid": [math.ceil(s / args.block)
                                     for s in pair.level_shape(b_level)],
                      "planning_s": [round(s, 2) for s in plan_seconds],
                      "tasks": [(s["stage"], s["tasks_finished"], s["max_tasks_held"])
                                for s in stages],
                      "accuracy": {k: round(v, 3) for k, v in acc.items()},
                      "projection_h": {k: round(v, 2) for k, v in projection.items()}}, indent=1))
    return figures


if __name__ == "__main__":
    main()
