"""ngff-dreg against whole-image elastix and itk-dreg 0.0.1, on the same data and cores.

Methods (each run in its own child process, so memory and I/O are measured
for that method alone, workers included):

* ``elastix``: itk-elastix on the whole images, default rigid + affine +
  B-spline parameter maps, ITK threads = ``--workers``.
* ``itkdreg``: itk-dreg 0.0.1 in a separate venv (it needs numpy<2), driven by
  ``benchmarks/itkdreg_runner.py`` (configured as its deformable example).
  Create the venv once::

      python -m venv /tmp/itkdreg-venv
      /tmp/itkdreg-venv/bin/pip install itk-dreg==0.0.1 'numpy<2' 'itk==5.4.*' \
          'itk-elastix==0.25.*' scipy psutil

  With ``--itkdreg-sample N`` only N random blocks are registered and the
  total time is extrapolated from their times, the block count and the thread
  count (see ``itkdreg_runner.py``); such rows are labelled
  ``itkdreg (extrapolated)``, their accuracy is scored only at the points
  inside the sampled blocks, and a footnote gives the figures.
* ``ngff``: ngff-dreg, ``Schedule.default`` on a ``local:<workers>`` cluster,
  or the pair's own schedule ``benchmarks/schedules/<pair>.toml`` when one
  exists (the stereo pair: 2D, disparities of up to ~70 px), named in the
  table.
* ``ngff-fast``: the same with ``Schedule.default(..., fast=True)``.

Scores: point error vs the known truth at foreground voxels (mean, median,
p95, max; physical and voxels), NCC on the same voxels before/after
(nearest-neighbour samples), Jacobian determinant min and folded fraction,
registration wall time, peak RSS of the whole process tree (sampled every
0.2 s with psutil: client + scheduler + every worker) and the largest single
worker, and bytes read by ``read()`` calls of the process tree (``rchar`` of
``/proc/<pid>/io``; includes library imports, excludes sockets).

Other studies: ``--scaling`` (ngff-dreg per-worker peak memory and time at
1×, 2×, 4× image edge with a fixed block size, and 1 vs 2 workers) and
``--plan`` (graph-build time and client memory for a virtual
20000×20000×10000 image: metadata-only Zarr arrays, no chunk written).

Examples::

    python benchmarks/bench_pipeline.py --quick                    # small, all methods
    python benchmarks/bench_pipeline.py --pairs mni --methods elastix,ngff,ngff-fast
    python benchmarks/bench_pipeline.py --scaling --plan --no-compare
    python benchmarks/bench_pipeline.py --pairs big --edge 512 --itkdreg-block 128 \
        --itkdreg-sample 2 --append                              # 512³, itk-dreg extrapolated

``--append`` adds the section (machine, versions, command, tables) to
``benchmarks/RESULTS.md``; it is always written to ``<work>/results-section.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import PAIRS, BenchPair, make_pair  # noqa: E402
from jacobian import jacobian_stats  # noqa: E402

METHODS = ("elastix", "itkdreg", "ngff", "ngff-fast")
SCHEDULES = HERE / "schedules"
#: whole-image elastix peak RSS ≈ this × voxels + ELASTIX_BASE_MB (process tree; big256
#: smoke run: 1977 MB, stereo 741×500: 962 MB; default rigid + affine + B-spline maps)
ELASTIX_BYTES_PER_VOXEL = 70.0
ELASTIX_BASE_MB = 1000.0


def elastix_memory_check(pair: BenchPair) -> str | None:
    """``None`` if whole-image elastix should fit in the available memory, else why not.

    Whole-image elastix keeps full-resolution smoothing pyramids of both
    images, so its memory grows with the voxel count; a 512³ pair does not fit
    a 24 GB machine, and running it would only get it (or a neighbour)
    killed by the kernel.
    """
    import psutil

    est = ELASTIX_BYTES_PER_VOXEL * float(np.prod(pair.geometry.shape)) / 2**20 + ELASTIX_BASE_MB
    avail = psutil.virtual_memory().available / 2**20
    if est > 0.85 * avail:
        return (f"whole-image elastix on {pair.name} would need about {est / 1024:.0f} GB "
                f"({ELASTIX_BYTES_PER_VOXEL:.0f} B/voxel, measured at 256³) and "
                f"{avail / 1024:.0f} GB are available: not run (--force-elastix runs it)")
    return None
ITKDREG_PY = os.environ.get("ITKDREG_PYTHON", "/tmp/itkdreg-venv/bin/python")


# ------------------------------------------------------------------ measuring
class TreeSampler(threading.Thread):
    """Peak RSS of a process tree (total and per child) and its read bytes."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.period = period
        self.stop_event = threading.Event()
        self.peak_total = 0
        self.peak_child = 0
        self.rchar: dict[int, int] = {}

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                total += rss
                if p.pid != self.root.pid:
                    self.peak_child = max(self.peak_child, rss)
                self.rchar[p.pid] = p.io_counters().read_chars
            except psutil.Error:
                continue
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.period)

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join()
        return {
            "peak_tree_mb": self.peak_total / 2**20,
            "peak_worker_mb": self.peak_child / 2**20,
            "read_mb": sum(self.rchar.values()) / 2**20,
        }


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Run ``cmd``; return (its JSON last stdout line, measured figures)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    figures = sampler.stop()
    figures["process_seconds"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), figures


# ------------------------------------------------------------------ child modes
def child_elastix(fixed: str, moving: str, points: str, result: str, threads: int) -> None:
    """Whole-image elastix (rigid + affine + B-spline defaults); save mapped points."""
    import itk
    from data import _read_level

    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    fg = open_multiscale(fixed).levels[0].geometry
    mg = open_multiscale(moving).levels[0].geometry

    def image(arr: np.ndarray, g) -> object:
        img = itk.image_from_array(np.ascontiguousarray(arr, dtype=np.float32))
        img.SetSpacing([float(s) for s in g.spacing])
        img.SetOrigin([float(o) for o in g.origin])
        return img

    f_img, m_img = image(_read_level(fixed), fg), image(_read_level(moving), mg)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    params = itk.ParameterObject.New()
    for kind in ("rigid", "affine", "bspline"):
        params.AddParameterMap(itk.ParameterObject.GetDefaultParameterMap(kind))
    t0 = time.perf_counter()
    _, result_params = itk.elastix_registration_method(
        f_img, m_img, parameter_object=params, log_to_console=False)
    with tempfile.TemporaryDirectory() as tmp:
        field_img = itk.transformix_deformation_field(m_img, result_params, output_directory=tmp)
    seconds = time.perf_counter() - t0
    from scipy import ndimage

    del f_img, m_img
    # (z, y, x, ndim) view, ITK-order components: no float64 copy of a 512³ field
    field = itk.array_view_from_image(field_img)
    pts = np.load(points)
    idx = fg.physical_to_index(pts)[:, ::-1]
    disp = np.stack([ndimage.map_coordinates(np.ascontiguousarray(field[..., c]), idx.T,
                                             order=1, mode="nearest")
                     for c in range(field.shape[-1])], axis=1)
    mapped = pts + disp
    stats = jacobian_stats(field, np.asarray(fg.spacing))
    np.save(result, mapped)
    print(json.dumps({"seconds": seconds, **stats}))


def child_ngff(fixed: str, moving: str, points: str, result: str, workers: int, fast: bool,
               block: int | None, schedule: str | None = None) -> None:
    """Register with ngff-dreg on ``local:<workers>``; save mapped points, print figures."""
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.pipeline import register
    from ngff_dreg.schedule import Schedule

    geoms = [lvl.geometry for lvl in open_multiscale(fixed).levels]
    sched = Schedule.load(schedule) if schedule else Schedule.default(geoms, fast=fast)
    if block:
        for st in sched.stages:
            st.block_size = block
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = register(fixed, moving, str(Path(tmp) / "out.zarr"), schedule=sched,
                       client=f"local:{workers}", progress=False, overwrite=True)
        seconds = time.perf_counter() - t0
        mapped = res.transforms.transform.transform_points(np.load(points))
    rep = res.transforms.report or {}
    np.save(result, mapped)
    print(json.dumps({
        "seconds": seconds,
        "jacobian_min": rep.get("jacobian_min"),
        "folded_fraction": rep.get("folded_fraction"),
        "stages": [[r.name, r.fixed_level, r.seconds] for r in res.levels],
        "blocks": [int(np.asarray(r.status).size) for r in res.levels if r.status is not None],
    }))


# ------------------------------------------------------------------ scoring
def _sample_nearest(url: str, idx_zyx: np.ndarray) -> np.ndarray:
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    arr = open_multiscale(url).open_array(0)
    shape = np.asarray(arr.shape[-idx_zyx.shape[1]:])
    lead = (0,) * (arr.ndim - idx_zyx.shape[1])
    r = np.clip(np.rint(idx_zyx).astype(int), 0, shape - 1)
    inside = np.all((idx_zyx >= -0.5) & (idx_zyx <= shape - 0.5), axis=1)
    sel = tuple(np.full(len(r), v) for v in lead) + tuple(r.T)
    vals = np.asarray(arr.vindex[sel], dtype=np.float64)
    return np.where(inside, vals, 0.0)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def score(pair: BenchPair, pts: np.ndarray, truth: np.ndarray, mapped: np.ndarray,
          fixed_vals: np.ndarray, mg) -> dict[str, float]:
    err = np.linalg.norm(mapped - truth, axis=1)
    vox = err / min(pair.geometry.spacing)
    moved = _sample_nearest(pair.moving, mg.physical_to_index(mapped)[:, ::-1])
    return {
        "mean": float(err.mean()), "median": float(np.median(err)),
        "p95": float(np.percentile(err, 95)), "max": float(err.max()),
        "mean_vox": float(vox.mean()), "p95_vox": float(np.percentile(vox, 95)),
        "max_vox": float(vox.max()),
        "ncc_after": _ncc(fixed_vals, moved),
    }


def _to_mha(url: str, path: Path) -> None:
    import itk
    from data import _read_level

    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    g = open_multiscale(url).levels[0].geometry
    img = itk.image_from_array(_read_level(url))
    img.SetSpacing([float(s) for s in g.spacing])
    img.SetOrigin([float(o) for o in g.origin])
    itk.imwrite(img, str(path), compression=False)


def pair_schedule(pair: BenchPair, override: str | None = None) -> Path | None:
    """The ngff-dreg schedule file for ``pair`` (``None``: ``Schedule.default``).

    ``override`` (``--schedule``) wins: a path, or ``"default"``. Otherwise
    ``benchmarks/schedules/<pair>.toml`` if the pair has its own schedule.
    """
    if override:
        return None if override == "default" else Path(override)
    path = SCHEDULES / f"{pair.name.split('/')[0]}.toml"
    return path if path.is_file() else None


def compare(pair: BenchPair, methods: list[str], workers: int, work: Path,
            itkdreg_block: int, itkdreg_sample: int = 0,
            schedule: str | None = None, force_elastix: bool = False) -> list[dict]:
    """Run every method on ``pair`` in a measured child process and score it."""
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    pts = pair.geometry.array_index_to_physical(pair.eval_index)
    truth = pair.truth_points(pts)
    tag = pair.name.replace("/", "_")
    pts_file = work / f"{tag}-points.npy"
    np.save(pts_file, pts)
    mg = open_multiscale(pair.moving).levels[0].geometry
    fixed_vals = _sample_nearest(pair.fixed, pair.eval_index)
    before = score(pair, pts, truth, pts, fixed_vals, mg)
    rows = [{"pair": pair.name, "method": "identity", **before, "ncc_before": before["ncc_after"]}]
    me = str(Path(__file__).resolve())
    for method in methods:
        res_file = work / f"{tag}-{method}.npy"
        label = method
        if method == "itkdreg":
            if pair.geometry.ndim != 3:
                print(f"  itk-dreg is 3D only: skipped on {pair.name}")
                continue
            if not Path(ITKDREG_PY).exists():
                print(f"  {ITKDREG_PY} missing: itk-dreg skipped (see the module docstring)")
                continue
            fm, mm = work / f"{tag}-fixed.mha", work / f"{tag}-moving.mha"
            if not fm.exists():
                _to_mha(pair.fixed, fm)
                _to_mha(pair.moving, mm)
            npz = res_file.with_suffix(".npz")
            cmd = [ITKDREG_PY, str(HERE / "itkdreg_runner.py"), str(fm), str(mm), str(pts_file),
                   str(npz), "--block", str(itkdreg_block), "--threads", str(workers)]
            if itkdreg_sample > 0:
                cmd += ["--sample-blocks", str(itkdreg_sample)]
                label = "itkdreg (extrapolated)"
        elif method == "elastix":
            why = None if force_elastix else elastix_memory_check(pair)
            if why:
                print(f"  {why}")
                rows.append({"pair": pair.name, "method": "elastix (not run)",
                             "note": f"{pair.name} elastix: {why}."})
                continue
            cmd = [sys.executable, me, "--child", "elastix", pair.fixed, pair.moving,
                   str(pts_file), str(res_file), "--workers", str(workers)]
        else:
            cmd = [sys.executable, me, "--child", method, pair.fixed, pair.moving,
                   str(pts_file), str(res_file), "--workers", str(workers)]
            sched = pair_schedule(pair, schedule)
            if sched is not None:
                if method == "ngff-fast":
                    print(f"  {pair.name} has its own schedule: ngff-fast skipped")
                    continue
                cmd += ["--schedule", str(sched)]
                label = f"ngff ({sched.name})"
        print(f"  running {label} on {pair.name} ...", flush=True)
        try:
            info, figs = run_measured(cmd)
        except RuntimeError as exc:
            print(f"  {method} failed: {exc}")
            rows.append({"pair": pair.name, "method": f"{label} FAILED"})
            continue
        keep = np.ones(len(pts), dtype=bool)
        if method == "itkdreg":
            with np.load(npz) as z:
                mapped = z["mapped"]
                keep = z["scored"]
        else:
            mapped = np.load(res_file)
        if not keep.any():
            print(f"  {label}: no evaluation point inside the sampled blocks")
            rows.append({"pair": pair.name, "method": label, **figs, **info})
            continue
        row = {"pair": pair.name, "method": label,
               **score(pair, pts[keep], truth[keep], mapped[keep], fixed_vals[keep], mg),
               "ncc_before": _ncc(fixed_vals[keep], _sample_nearest(
                   pair.moving, mg.physical_to_index(pts[keep])[:, ::-1])),
               **figs, **info}
        if info.get("extrapolated"):
            row["note"] = (
                f"{pair.name} {label}: time extrapolated from {info['sampled_blocks']} of "
                f"{info['total_blocks']} blocks ({itkdreg_block}³, drawn at random) on "
                f"{info['threads']} threads: plan {info['plan_seconds']:.1f} s + sample wall "
                f"{info['sample_wall_seconds']:.1f} s × {info['total_blocks']} / "
                f"{info['sampled_blocks']} + reduce {info['reduce_seconds_sampled']:.1f} s × "
                f"{info['total_blocks']} / "
                f"{info['sampled_blocks']} (block seconds, waits included: "
                + ", ".join(f"{t:.0f}" for t in info["block_seconds"])
                + f"); {info['sampled_ok']} of the sampled blocks succeeded. Accuracy and "
                f"NCC are on the {int(keep.sum())} evaluation points inside the sampled "
                "blocks only; memory and I/O are those of the sampled run.")
        rows.append(row)
        print(f"    {label}: p95 {row['p95']:.3f}, {row['seconds']:.1f} s, "
              f"tree {row['peak_tree_mb']:.0f} MB", flush=True)
    return rows


# ------------------------------------------------------------------ scaling + plan
def scaling_runs(edges: list[int], workers_edge: int | None) -> list[tuple[int, int]]:
    """(edge, workers) runs: every edge on 2 workers, then ``workers_edge`` on 1."""
    runs = [(e, 2) for e in edges]
    if workers_edge:
        runs.append((workers_edge, 1))
    return runs


def scaling(root: Path, edges: list[int], block: int, work: Path, *,
            workers_edge: int | None = None, pair_name: str = "big") -> list[dict]:
    """ngff-dreg (fast schedule, fixed block size) at each edge; 1 vs 2 workers.

    The pairs are written chunk by chunk (their generation time and peak RSS
    are reported too); each registration runs in a measured child process.
    """
    rows = []
    me = str(Path(__file__).resolve())
    for edge, workers in scaling_runs(edges, workers_edge):
        pair = make_pair(pair_name, root, edge=edge)
        gen = pair.generation or {}
        pts = pair.geometry.array_index_to_physical(pair.eval_index[:2000])
        pts_file = work / f"scale{edge}-points.npy"
        np.save(pts_file, pts)
        res_file = work / f"scale{edge}-{workers}.npy"
        cmd = [sys.executable, me, "--child", "ngff-fast", pair.fixed, pair.moving,
               str(pts_file), str(res_file), "--workers", str(workers), "--block", str(block)]
        print(f"  scaling: {pair.name}, {workers} worker(s) ...", flush=True)
        info, figs = run_measured(cmd)
        err = np.linalg.norm(np.load(res_file) - pair.truth_points(pts), axis=1)
        vox = err / min(pair.geometry.spacing)
        rows.append({"pair": pair.name, "edge": edge, "workers": workers, "block": block,
                     **figs, "seconds": info["seconds"],
                     "p95_vox": float(np.percentile(vox, 95)), "blocks": info.get("blocks"),
                     "gen_seconds": gen.get("seconds"), "gen_peak_mb": gen.get("peak_rss_mb")})
        print(f"    {info['seconds']:.1f} s, worker peak {figs['peak_worker_mb']:.0f} MB, "
              f"p95 {rows[-1]['p95_vox']:.3f} vox", flush=True)
    return rows


class _NoGraphReduce:
    """A reduce without ``build_graph``: the engine only plans the block graph."""

    def __call__(self, block_results, fixed_reader_ctor, initial_transform, **kwargs):
        raise RuntimeError("planning only")


def plan_virtual(work: Path, shape=(10000, 20000, 20000), block: int = 512) -> dict:
    import psutil
    import zarr

    from ngff_dreg.engine import register_images
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
    from ngff_dreg.methods import ItkLinearRegistration
    from ngff_dreg.transforms import AffineTransform

    proc = psutil.Process()
    urls = []
    for name in ("fixed", "moving"):
        url = str(work / f"virtual-{name}.ome.zarr")
        root = zarr.open_group(url, mode="w", zarr_format=3)
        datasets = []
        for lvl in range(4):
            f = 2**lvl
            root.create_array(f"s{lvl}", shape=tuple(-(-s // f) for s in shape),
                              chunks=(128, 128, 128), dtype="uint16", fill_value=0)
            datasets.append({"path": f"s{lvl}", "coordinateTransformations": [
                {"type": "scale", "scale": [float(f)] * 3}]})
        root.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "name": name,
            "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": datasets}]}
        urls.append(url)
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    plan = register_images(
        fixed_reader_ctor=OMEZarrReaderConstructor(urls[0]),
        moving_reader_ctor=OMEZarrReaderConstructor(urls[1]),
        block_registration_method=ItkLinearRegistration(kind="translation"),
        reduce_method=_NoGraphReduce(),
        initial_transform=AffineTransform.identity(3),
        fixed_chunk_size=(block,) * 3,
        overlap_factors=0.25,
    )
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    nchunks = plan.fixed_da.npartitions
    da_seconds = time.perf_counter() - t1
    return {"shape": "×".join(map(str, shape)), "block": block, "blocks": len(plan.blocks),
            "fixed_da_chunks": nchunks, "graph_tasks": len(plan.registration_result.dask),
            "plan_seconds": seconds, "fixed_da_seconds": da_seconds,
            "client_rss_growth_mb": (proc.memory_info().rss - rss0) / 2**20,
            "client_rss_mb": proc.memory_info().rss / 2**20}


# ------------------------------------------------------------------ output
def versions() -> dict[str, str]:
    """Versions of the packages that matter, and Python's."""
    out = {}
    for d in ("ngff-dreg", "itk", "itk-elastix", "zarr", "dask", "distributed", "numpy"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "-"
    out["python"] = platform.python_version()
    if Path(ITKDREG_PY).exists():
        probe = ("from importlib import metadata as m; print(', '.join(d + ' ' + m.version(d) "
                 "for d in ('itk-dreg', 'numpy', 'itk', 'itk-elastix')))")
        try:
            res = subprocess.run([ITKDREG_PY, "-c", probe], capture_output=True, text=True,
                                 timeout=60, check=True)
            out["itk-dreg venv"] = res.stdout.strip()
        except (subprocess.SubprocessError, OSError):
            out["itk-dreg venv"] = "unreadable"
    return out


def fmt_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``; ``cols`` are (key, header, format spec)."""
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, f in cols:
            v = r.get(key)
            cells.append("–" if v is None else (format(v, f) if f else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMPARE_COLS = [("pair", "pair", ""), ("method", "method", ""), ("mean", "mean", ".3f"),
                ("median", "median", ".3f"), ("p95", "p95", ".3f"), ("max", "max", ".2f"),
                ("p95_vox", "p95 vox", ".2f"), ("ncc_before", "NCC before", ".3f"),
                ("ncc_after", "NCC after", ".3f"), ("jacobian_min", "det J min", ".3f"),
                ("folded_fraction", "folded", ".4f"), ("seconds", "time s", ".1f"),
                ("peak_tree_mb", "tree MB", ".0f"), ("peak_worker_mb", "max child MB", ".0f"),
                ("read_mb", "read MB", ".0f"), ("vs_elastix", "× faster than elastix", ".2f"),
                ("vs_itkdreg", "× faster than itk-dreg", ".2f")]


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups against elastix and itk-dreg (full or extrapolated) of the same pair."""
    by = {(r["pair"], r["method"].split(" (")[0]): r for r in rows}
    for r in rows:
        if r["method"] == "identity":
            continue
        for ref, key in (("elastix", "vs_elastix"), ("itkdreg", "vs_itkdreg")):
            other = by.get((r["pair"], ref))
            if other and other.get("seconds") and r.get("seconds"):
                r[key] = other["seconds"] / r["seconds"]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=5, metavar=("MODE", "FIXED", "MOVING", "POINTS", "RESULT"))
    ap.add_argument("--pairs", default="mni,2d,stereo", help=f"comma list of {PAIRS}")
    ap.add_argument("--edge", type=int, default=None,
                    help="edge of the big/mniup pairs (default 512, --quick 64/128)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block", type=int, default=None, help="ngff-dreg block size override")
    ap.add_argument("--schedule", default=None,
                    help="ngff-dreg schedule file, or 'default' to ignore benchmarks/schedules/")
    ap.add_argument("--itkdreg-block", type=int, default=48)
    ap.add_argument("--itkdreg-sample", type=int, default=0,
                    help="itk-dreg: register this many random blocks and extrapolate (0: all)")
    ap.add_argument("--force-elastix", action="store_true",
                    help="run whole-image elastix even when it looks too big for the memory")
    ap.add_argument("--quick", action="store_true", help="reduced sizes")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--scaling-edges", default=None,
                    help="comma list of edges (default 128,256,512; --quick 48,96)")
    ap.add_argument("--scaling-workers-edge", type=int, default=None,
                    help="edge of the 1-worker run (default: the middle edge)")
    ap.add_argument("--scaling-block", type=int, default=64,
                    help="fixed block size; a multiple of the pairs' 64³ chunks, as the "
                         "engine rounds blocks up to whole chunks (default 64)")
    ap.add_argument("--scaling-pair", default="big", choices=("big", "mniup"))
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--root", type=Path, default=Path("/tmp/ngff-dreg-bench"))
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--append", action="store_true",
                    help="append the section to --results (else only <work>/results-section.md)")
    ap.add_argument("--title", default=None, help="heading of the appended section")
    args = ap.parse_args()

    if args.child:
        mode, fixed, moving, points, result = args.child
        if mode == "elastix":
            child_elastix(fixed, moving, points, result, args.workers)
        else:
            child_ngff(fixed, moving, points, result, args.workers, mode == "ngff-fast",
                       args.block, args.schedule)
        return

    args.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.root))
    sections = []
    load = os.getloadavg()
    if not args.no_compare:
        rows: list[dict] = []
        gens = []
        for name in args.pairs.split(","):
            pair = make_pair(name.strip(), args.root, quick=args.quick, edge=args.edge)
            print(f"{pair.name}: {pair.description}", flush=True)
            if pair.generation:
                gens.append({"pair": pair.name, **pair.generation})
            rows += compare(pair, args.methods.split(","), args.workers, work,
                            args.itkdreg_block, args.itkdreg_sample, args.schedule,
                            args.force_elastix)
        add_ratios(rows)
        table = fmt_table(rows, COMPARE_COLS)
        notes = [f"- {r['note']}" for r in rows if r.get("note")]
        notes += [f"- {g['pair']} was written chunk by chunk ({g['n_chunks']} chunks of "
                  f"{g['chunks']}³ per image, {g['image_mb_each']:.0f} MB per image) in "
                  f"{g['seconds']:.0f} s with a peak RSS of {g['peak_rss_mb']:.0f} MB "
                  f"(measured when it was generated)." for g in gens]
        print(table, *notes, sep="\n")
        sections.append("## Accuracy, time, memory, I/O\n\n" + table
                        + ("\n\n" + "\n".join(notes) if notes else ""))
        (work / "compare.json").write_text(json.dumps(rows, indent=1, default=str))
    if args.scaling:
        edges = _ints(args.scaling_edges) if args.scaling_edges else (
            [48, 96] if args.quick else [128, 256, 512])
        wedge = args.scaling_workers_edge or edges[len(edges) // 2]
        block = args.scaling_block
        srows = scaling(args.root, edges, block, work, workers_edge=wedge,
                        pair_name=args.scaling_pair)
        table = fmt_table(srows, [("pair", "pair", ""), ("workers", "workers", ""),
                                  ("block", "block", ""), ("blocks", "blocks", ""),
                                  ("seconds", "time s", ".1f"),
                                  ("peak_worker_mb", "peak per worker MB", ".0f"),
                                  ("peak_tree_mb", "tree MB", ".0f"),
                                  ("read_mb", "read MB", ".0f"), ("p95_vox", "p95 vox", ".3f"),
                                  ("gen_seconds", "pair written in s", ".0f"),
                                  ("gen_peak_mb", "writer peak RSS MB", ".0f")])
        print(table)
        sections.append("## Scaling (ngff-dreg fast schedule, fixed block size)\n\n" + table)
        (work / "scaling.json").write_text(json.dumps(srows, indent=1, default=str))
    if args.plan:
        prow = plan_virtual(work)
        table = fmt_table([prow], [(k, k, ".3f" if isinstance(v, float) else "")
                                   for k, v in prow.items()])
        print(table)
        sections.append("## Planning a virtual image\n\n" + table)
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({os.cpu_count()} cores, {platform.platform()}), load average before "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, after "
        f"{os.getloadavg()[0]:.2f}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f".\n\nCommand: `python benchmarks/bench_pipeline.py {shlex.join(sys.argv[1:])}`"
    )
    out = "\n\n".join([header, *sections]) + "\n"
    (work / "results-section.md").write_text(out)
    if args.append:
        title = args.title or "## Run " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with args.results.open("a") as fh:
            fh.write("\n" + title + "\n\n" + out.replace("\n## ", "\n### "))
        print(f"appended to {args.results}")
    print(f"\nraw results in {work}")


if __name__ == "__main__":
    main()
