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

* peak RSS of the client, the scheduler and the largest worker, over the
  run and per stage;
* tasks per stage (finished on the scheduler) and the most tasks the
  scheduler held at once during each stage (the graph size); the tasks'
  compute seconds by key prefix, and the mean of a block task that
  registered and of one that was skipped (outside the mask);
* per stage, the GET requests and bytes that reached each image's store
  (the project's store counts, :mod:`ngff_dreg.io.storage.store_stats`: what
  ``register -v`` prints as ``I/O``), and the objects the stage added to the
  output (each one PUT at least);
* planning time of each block stage run in one graph (the engine's ``register_images``;
  a stage in slabs plans each slab inside its stage time);
* wall time per stage and in total;
* accuracy on the registered region: the final transform against the pair's
  known fixed→moving map at random points inside the mask, in level-0 voxels
  and in voxels of the block stage's level (and the same for the identity);
* a projection to the 10 TB pair of a full block stage on level 5 and on
  level 0, with this run's block (in voxels), on 100 and 1000 workers: hours,
  GETs, bytes, PUTs and the S3 request cost at list price, from this run's
  per-block figures (:func:`project`; ``--project-from results.json``
  prints it again without a run).

The region registered is a central cube (``--region``) or any box
(``--mask-box``); e.g. the same block stage on a virtual 1024³ pair's level 0
(``--shape 1024x1024x1024 --global-level 3 --block-level 0 --mask-box
0.4,0.4,0.4,0.55,0.55,0.55``: 27 of its 512 blocks) against the 10 TB pair's
level 5 (25 of 75) compares the worker memory of one block size at two image
sizes.

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
        self.since_mark: dict[str, int] = dict.fromkeys(roots, 0)
        self.since_mark_worker = 0
        self.lock = threading.Lock()
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
            with self.lock:
                self.peak[name] = max(self.peak[name], sum(rss))
                self.since_mark[name] = max(self.since_mark[name], sum(rss))
                if name.startswith("workers"):  # one worker process
                    self.peak_worker = max([self.peak_worker, *rss[1:]])
                    self.since_mark_worker = max([self.since_mark_worker, *rss[1:]])

    def mark(self) -> dict[str, float]:
        """The peaks since the last mark (a stage's), in MB; starts the next."""
        self.sample()
        with self.lock:
            out = {f"peak_{k}_mb": v / 2**20 for k, v in self.since_mark.items()}
            out["peak_one_worker_mb"] = self.since_mark_worker / 2**20
            self.since_mark = dict.fromkeys(self.since_mark, 0)
            self.since_mark_worker = 0
        return out

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.period)

    def high_water(self) -> dict[str, float]:
        """The kernel's peak RSS (``VmHWM``, Linux) of each process, MB: no sampling gaps."""
        out: dict[str, float] = {}
        for name, root in self.roots.items():
            try:
                procs = [root, *root.children(recursive=True)] if name != "client" else [root]
                for p in procs:
                    with open(f"/proc/{p.pid}/status") as f:
                        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                    out[f"{name}:{p.pid}"] = kb / 1024
            except (OSError, StopIteration):
                continue
        return out

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join()
        out = {f"peak_{k}_mb": v / 2**20 for k, v in self.peak.items()}
        out["peak_one_worker_mb"] = self.peak_worker / 2**20
        hwm = self.high_water()
        workers = [v for k, v in hwm.items() if k.startswith("workers:")]
        out["vmhwm_one_worker_mb"] = max(workers[1:], default=0.0)  # [0]: the nanny
        out["vmhwm_mb"] = hwm  # type: ignore[assignment]
        return out


class TaskCounter(SchedulerPlugin):  # type: ignore[misc]
    """A scheduler plugin counting finished tasks and the largest graph held, per stage."""

    name = "bench-task-counter"

    def __init__(self) -> None:
        self.finished = 0
        self.max_held = 0
        self.prefixes: dict[str, int] = {}
        self.compute_s: dict[str, float] = {}
        self.block_compute_s: dict[str, float] = {}
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory":
            self.finished += 1
            text = key[0] if isinstance(key, tuple) else str(key)
            prefix = text.split("-")[0]
            self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1
            seconds = sum(s["stop"] - s["start"] for s in kwargs.get("startstops", ())
                          if s.get("action") == "compute")
            self.compute_s[prefix] = self.compute_s.get(prefix, 0.0) + seconds
            if text.startswith("register-block-"):  # register-block-<i>-<j>[-<k>]-<token>
                self.block_compute_s[text] = seconds
        if self.scheduler is not None:
            self.max_held = max(self.max_held, len(self.scheduler.tasks))

    def take(self) -> dict[str, Any]:
        out = {"tasks_finished": self.finished, "max_tasks_held": self.max_held,
               "by_prefix": dict(sorted(self.prefixes.items())),
               "compute_s_by_prefix": dict(sorted(self.compute_s.items())),
               "block_compute_s": dict(self.block_compute_s)}
        self.finished, self.max_held, self.prefixes = 0, 0, {}
        self.compute_s, self.block_compute_s = {}, {}
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


def block_seconds(status: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """Compute seconds of the block tasks, registered and skipped apart, and of the rest.

    A block task's key names its grid index (``register-block-<i>-<j>-<k>-<token>``);
    the stage's status grid says whether it registered (0) or was skipped.
    """
    per_key = counts.pop("block_compute_s", {})
    if status is None:
        return {}
    grid = np.asarray(status)
    registered, skipped = [], []
    for key, seconds in per_key.items():
        index = tuple(int(v) for v in key.split("-")[2 : 2 + grid.ndim])
        (registered if grid[index] == 0 else skipped).append(seconds)
    total = sum(counts.get("compute_s_by_prefix", {}).values())
    return {"block_task_s": {"registered": registered and float(np.mean(registered)),
                             "skipped": skipped and float(np.mean(skipped)),
                             "registered_n": len(registered), "skipped_n": len(skipped)},
            "compute_s_blocks": float(sum(registered) + sum(skipped)),
            "compute_s_rest": float(total - sum(registered) - sum(skipped))}


def io_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """Requests (GETs) and bytes that reached the stores in one stage, by role.

    From a stage's :class:`~ngff_dreg.io.storage.store_stats.IOLedger` figures
    (what ``register -v`` prints as ``I/O``): counted below the chunk cache, so
    a chunk served from a worker's cache is no request.
    """
    out: dict[str, Any] = {}
    for url, part in summary.get("images", {}).items():
        role = url.split("://", 1)[1].split("?", 1)[0] if url.startswith("virtual://") else url
        out[role] = {"gets": int(part.get("requests", 0)),
                     "chunk_gets": int(part.get("chunk_requests", 0)),
                     "bytes": int(part.get("chunk_bytes", 0)),
                     "distinct_bytes": int(part.get("distinct_bytes", 0)),
                     "cache_hits": int(part.get("cache_hits", 0))}
    return out


def output_objects(root: Path) -> dict[str, Any]:
    """Objects (files: one PUT each, at least) and bytes of the output, by top group."""
    by: dict[str, list[int]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            top = path.relative_to(root).parts[0]
            row = by.setdefault(top, [0, 0])
            row[0] += 1
            row[1] += path.stat().st_size
    return {"objects": sum(r[0] for r in by.values()), "bytes": sum(r[1] for r in by.values()),
            "by_group": {k: {"objects": v[0], "bytes": v[1]} for k, v in sorted(by.items())}}


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
    ap.add_argument("--mask-box", default=None,
                    help="the registered region as its low then high corner, fractions of the "
                         "extent, z,y,x,z,y,x (instead of --region's central cube)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--project-from", type=Path, default=None,
                    help="print the projection of an earlier run's results.json (no run)")
    ap.add_argument("--slab-blocks", type=int, default=None,
                    help="ngff-dreg.stage.slab-blocks: a block stage of more blocks runs in "
                         "slabs (default: the setting's, 20000)")
    args = ap.parse_args(argv)
    if args.project_from is not None:
        figures: dict[str, Any] = json.loads(args.project_from.read_text())
        figures["projection"] = project(figures)
        print(projection_markdown(figures["projection"]))
        return figures
    if args.slab_blocks is not None:
        import dask.config

        dask.config.set({"ngff-dreg.stage.slab-blocks": args.slab_blocks})
    shape = (96, 160, 160) if args.tiny else tuple(int(v) for v in args.shape.split("x"))
    chunks = 32 if args.tiny else args.chunks
    half = args.region / 2
    box = ((0.5 - half,) * len(shape) + (0.5 + half,) * len(shape) if args.mask_box is None
           else tuple(float(v) for v in args.mask_box.split(",")))
    pair = VirtualPair(shape=shape, chunks=(chunks,), mask_box=box)
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
                method_options={"mesh_size": 3}, field_spacing_factor=FIELD_SPACING_FACTOR)])

            seen_output: dict[str, Any] = {"objects": 0, "bytes": 0}

            def output_delta() -> dict[str, int]:
                now = output_objects(args.out / "out.zarr")
                delta = {k: now[k] - seen_output[k] for k in ("objects", "bytes")}
                seen_output.update(now)
                return delta

            def stage_done(report: Any) -> None:
                counts = client.run_on_scheduler(_take_counts)
                stages.append({"stage": report.name, "level": report.fixed_level,
                               "seconds": report.seconds, "memory": sampler.mark(), **counts,
                               **block_seconds(report.status, counts),
                               "io": io_figures(report.report.get("io", {})),
                               "output": output_delta(),
                               "blocks": None if report.status is None
                               else int((np.asarray(report.status) >= 0).sum()),
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
    figures = {
        "pair": {"shape": pair.shape, "chunks": pair.chunks, "dtype": pair.dtype,
                 "tb_per_image": pair.nbytes() / 1e12, "levels": pair.levels,
                 "mask_box": pair.mask_box},
        "schedule": {"global_level": g_level, "block_level": b_level, "block": args.block,
                     "block_level_shape": pair.level_shape(b_level),
                     "slab_blocks": args.slab_blocks},
        "workers": args.workers, "wall_seconds": wall, "memory": memory,
        "stages": stages, "planning_seconds": plan_seconds, "accuracy": acc,
        "io_run": io_figures(result.io.get("run", {})),
        "output": output_objects(args.out / "out.zarr"),
        "client_rss_now_mb": psutil.Process().memory_info().rss / 2**20,
    }
    figures["projection"] = project(figures)
    (args.out / "results.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps({"wall_s": round(wall, 1),
                      **{k: round(v) for k, v in memory.items() if k != "vmhwm_mb"},
                      "block_grid": [len(c) for c in figures["projection"]["measured_grid"]],
                      "planning_s": [round(s, 2) for s in plan_seconds],
                      "tasks": [(s["stage"], s["tasks_finished"], s["max_tasks_held"])
                                for s in stages],
                      "accuracy": {k: round(v, 3) for k, v in acc.items()}}, indent=1))
    print(projection_markdown(figures["projection"]))
    return figures


# ------------------------------------------------------------------ the projection
#: The block stage's field spacing in voxels of its level (the schedule below).
FIELD_SPACING_FACTOR = 4
#: S3 Standard list prices (us-east-1), USD per 1000 requests.
GET_PRICE_PER_1000 = 0.0004
PUT_PRICE_PER_1000 = 0.005


def project(fig: dict[str, Any], target: tuple[int, ...] = TEN_TB,
            levels: tuple[int, ...] = (5, 0), workers: tuple[int, ...] = (100, 1000)
            ) -> dict[str, Any]:
    """A full block stage of ``target`` at each of ``levels``, from one run's per-block figures.

    The block is the measured one in voxels (the requested edge rounded up to
    the storage chunk, as the run planned it), so the target's block count at
    a level is its block grid there (:func:`ngff_dreg.blocks.grid_chunks`).
    Per block (every block of a full stage registers, and no mask is read):

    * **time**, two ways: (a) the measured block stage's wall time × workers
      over the registered blocks (the stage's whole cost, reduction and
      skipped blocks included, charged to the registered ones: an upper
      bound); (b) from the tasks' compute seconds: a registered block task's
      mean, plus the stage's other tasks (reduction, field writing, checks;
      they span the whole level) per block of the grid;
    * **GETs and bytes** that reached the store (below the chunk caches):
      the fixed image's over all block tasks (each reads its padded fixed
      block, registered or not) plus the moving image's over the registered
      blocks; the mask's reads are left out;
      and, as bounds, every chunk of both images fetched once (one shared
      cache per machine, no halo re-fetched between machines) and every
      chunk read a GET (no cache: the measured reads per block, cache hits
      included);
    * **PUTs**: the objects the stage added to the output, per field write
      unit (the stage writes its field for the whole level; the units are
      the field's 64³ chunks, their count set by the level), times the
      target's units; each object at least one PUT, the rewritten manifest
      counted once;

    plus the global stage as measured (same global level in the target).
    Hours on ``W`` workers: blocks × seconds per block / ``W`` (perfect
    scaling, the measured per-block cost, no start-up or straggler cost).
    """
    from ngff_dreg.blocks import align_block_shape, grid_chunks
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.reduce.reducer import ReduceToDisplacementField

    def field_units(p: VirtualPair, level: int) -> int:
        reducer = ReduceToDisplacementField(field_spacing_factor=FIELD_SPACING_FACTOR)
        geom = ImageGeometry(p.level_shape(level)[::-1], p.level_spacing(level)[::-1],
                             p.level_origin(level)[::-1])
        fshape = reducer.field_geometry(geom).shape
        return math.prod(math.ceil(n / int(reducer.field_chunk)) for n in fshape)

    pair = VirtualPair(shape=tuple(fig["pair"]["shape"]), chunks=tuple(fig["pair"]["chunks"]))
    sched = fig["schedule"]
    b_level = int(sched["block_level"])
    measured_shape = pair.level_shape(b_level)
    block = align_block_shape((int(sched["block"]),) * pair.ndim, pair.chunks, measured_shape)
    glob, st = fig["stages"][0], fig["stages"][-1]
    blocks, registered = int(st["blocks"]), max(1, int(st["blocks_registered"]))
    io = st["io"]

    def per(role: str, key: str, n: int) -> float:
        return float(io.get(role, {}).get(key, 0)) / n

    per_block = {
        "seconds_stage_wall": float(st["seconds"]) * int(fig["workers"]) / registered,
        "seconds_tasks": float(st["block_task_s"]["registered"] or 0.0)
        + float(st["compute_s_rest"]) / blocks,
        "gets": per("fixed", "gets", blocks) + per("moving", "gets", registered),
        "bytes": per("fixed", "bytes", blocks) + per("moving", "bytes", registered),
        "puts": float(st["output"]["objects"]) / blocks,
        "puts_per_field_unit": float(st["output"]["objects"]) / field_units(pair, b_level),
        "chunk_reads": (sum(float(io.get("fixed", {}).get(k, 0))
                            for k in ("chunk_gets", "cache_hits")) / blocks
                        + sum(float(io.get("moving", {}).get(k, 0))
                              for k in ("chunk_gets", "cache_hits")) / registered),
        "chunk_bytes": math.prod(pair.chunks) * np.dtype(pair.dtype).itemsize,
    }
    # the rest of the run's reads (opening the inputs, the global stage, reading the
    # output back), less the mask's, does not grow with the block stage's level
    run_io = fig.get("io_run", {})

    def rest(key: str) -> float:
        return float(sum(v[key] for r, v in run_io.items() if r != "mask")
                     - sum(v[key] for r, v in io.items() if r in ("fixed", "moving")))

    fixed_cost = {"seconds": float(glob["seconds"]), "gets": rest("gets"),
                  "bytes": rest("bytes"),
                  "puts": float(fig["output"]["objects"] - st["output"]["objects"])}
    tpair = VirtualPair(shape=tuple(target), chunks=pair.chunks)
    rows = []
    for lv in levels:
        shape = tpair.level_shape(lv)
        tblock = align_block_shape(block, pair.chunks, shape)
        grid = [len(c) for c in grid_chunks(shape, tblock)]
        n = math.prod(grid)
        gets = n * per_block["gets"] + fixed_cost["gets"]
        chunks = math.prod(math.ceil(a / c) for a, c in zip(shape, pair.chunks))
        once, no_cache = 2 * chunks + fixed_cost["gets"], n * per_block["chunk_reads"]
        puts = per_block["puts_per_field_unit"] * field_units(tpair, lv) + fixed_cost["puts"]
        row = {"level": lv, "level_shape": shape, "block": tblock, "grid": grid, "blocks": n,
               "gets": gets, "bytes": n * per_block["bytes"] + fixed_cost["bytes"],
               "gets_each_chunk_once": once,
               "bytes_each_chunk_once": 2 * chunks * per_block["chunk_bytes"],
               "gets_no_cache": no_cache,
               "bytes_no_cache": no_cache * per_block["chunk_bytes"],
               "puts": puts, "puts_per_block_scaling": n * per_block["puts"],
               "get_usd": gets / 1000 * GET_PRICE_PER_1000,
               "get_usd_range": (once / 1000 * GET_PRICE_PER_1000,
                                 no_cache / 1000 * GET_PRICE_PER_1000),
               "put_usd": puts / 1000 * PUT_PRICE_PER_1000}
        for w in workers:
            for how in ("stage_wall", "tasks"):
                row[f"hours_{w}_{how}"] = (n * per_block[f"seconds_{how}"] / w
                                           + fixed_cost["seconds"]) / 3600
        rows.append(row)
    return {"target_shape": tuple(target), "block": block,
            "measured_grid": grid_chunks(measured_shape, block), "per_block": per_block,
            "global_stage": fixed_cost, "workers": workers, "levels": rows,
            "prices_usd_per_1000": {"GET": GET_PRICE_PER_1000, "PUT": PUT_PRICE_PER_1000}}


def projection_markdown(p: dict[str, Any]) -> str:
    """The projection as a Markdown table (one row per level and worker count)."""
    pb = p["per_block"]
    lines = [
        f"Projection to {'x'.join(map(str, p['target_shape']))}, block "
        f"{'x'.join(map(str, p['block']))} (per block: {pb['seconds_stage_wall']:.1f} s "
        f"stage wall x workers / registered, {pb['seconds_tasks']:.1f} s of task compute, "
        f"{pb['gets']:.1f} GETs, {pb['bytes'] / 1e6:.1f} MB, {pb['puts']:.2f} PUTs). "
        f"S3 Standard list prices: GET ${p['prices_usd_per_1000']['GET']} and PUT "
        f"${p['prices_usd_per_1000']['PUT']} per 1000 requests; transfer not priced.", "",
        "| level | blocks | workers | hours (stage wall) | hours (task compute) | GETs "
        "(each chunk once – no cache) | bytes (once – no cache) | PUTs | GET $ (range) "
        "| PUT $ |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["levels"]:
        for w in p["workers"]:
            lo, hi = r["get_usd_range"]
            lines.append(
                f"| {r['level']} ({'x'.join(map(str, r['level_shape']))}) | {r['blocks']} | {w} "
                f"| {r[f'hours_{w}_stage_wall']:.2f} | {r[f'hours_{w}_tasks']:.2f} "
                f"| {r['gets']:.3g} ({r['gets_each_chunk_once']:.3g} – "
                f"{r['gets_no_cache']:.3g}) | {_size(r['bytes'])} "
                f"({_size(r['bytes_each_chunk_once'])} – {_size(r['bytes_no_cache'])}) "
                f"| {r['puts']:.3g} | {r['get_usd']:.2f} ({lo:.2f} – {hi:.2f}) "
                f"| {r['put_usd']:.2f} |")
    return "\n".join(lines)


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"

if __name__ == "__main__":
    main()
