"""Accuracy suite: ngff-dreg against whole-image elastix and ANTs SyN on real-image cases.

The cases (``accuracy_cases.py``) are fixed/moving OME-Zarr pairs made from
real images with an exactly known fixed→moving map; a third of them form a
**validation** set that no tuning may look at. Every method runs in its own
child process on the same cores and is scored on the same points:

* ``default`` / ``fast``: ngff-dreg through its Python API
  (``ngff_dreg.register`` with ``Schedule.default(levels, fast=...)``) on a
  ``local:<workers>`` cluster; the written transform is read back with
  ``ngff_dreg.read_transform`` and maps the points;
* ``schedule``: ngff-dreg with a candidate schedule file (``--schedule``),
  named ``--label`` in the results (added automatically with ``--schedule``);
* ``elastix``: itk-elastix on the whole images, default rigid + affine +
  B-spline parameter maps, ``--workers`` ITK threads; points are mapped by
  the transformix deformation field (sampled at the fixed voxels);
* ``ants``: antspyx ``ants.registration(type_of_transform="SyN")`` with its
  defaults, ``--workers`` ITK threads; points mapped by
  ``ants.apply_transforms_to_points`` with the *forward* transforms (ANTs maps
  points in the opposite direction to images: the transforms that pull the
  moving image into the fixed frame push fixed points into the moving frame).

The references (elastix, ANTs) are cached per case in
``<root>/<case>/ref-<method>.json`` (scores, timings, versions, the case's
digest), so rerunning ngff-dreg alone is cheap; ``--rerun-references``
recomputes them. Nothing else is cached.

Scores per case and method: point error against the truth at the case's
20 000 fixed foreground points: mean, median, p95 and max, physical and in
voxels of the fixed image's finest level (lengths divided by its *smallest*
spacing, so an anisotropic image is scored in its in-plane voxels); det J
min and folded fraction (det J <= 0) of the recovered fixed→moving map over
the fixed foreground, from the mapped points of a regular lattice (every
~2 mm in 3D, every pixel in 2D) by the same finite differences for every
method; registration wall seconds and CPU seconds (user + sys of the
registration, workers included) reported by the child; process-tree peak
RSS (psutil, every 0.2 s) and whole-process wall/CPU seconds measured by the
parent; and, for the references, an image/point consistency check: the NCC
between the method's own warped moving image and the moving image sampled at
the mapped points (≈ 1 when the point mapping runs in the right direction).

``--selfcheck`` runs elastix, ANTs and ngff-dreg on two pure-translation
cases (same grids; different spacings and origins, anisotropic) and fails
unless every method's mean mapped shift is within 0.25 voxel of the true one
(a reversed direction misses by twice the shift), its median error is below
one voxel (a wrong spacing or origin costs many) and, for the references, its
own warped image agrees with the moving image sampled at its mapped points
(NCC > 0.95).

Outputs: a JSON of everything (``--out``; per case, per method, with
versions, git commit, load average and date) and a Markdown section (tuning
and validation tables, per-case ratio ngff-dreg p95 / elastix p95 and time
ratio, and the medians of both over the cases) printed, written beside the
JSON and, with ``--append``, appended to ``benchmarks/RESULTS.md``.

Needs (the ``bench`` extra): itk-elastix, psutil, nilearn, nibabel,
scikit-image, ngff-zarr, and antspyx. antspyx pins ``numpy<2.4`` and
``scipy<1.16``, so it lives in its own venv, found through ``ANTS_PYTHON``
(default ``/work/ants-venv/bin/python``; create it with
``python -m venv /work/ants-venv && /work/ants-venv/bin/pip install antspyx``);
if that is missing, the current interpreter is used when it can import ants.

Examples::

    python benchmarks/accuracy_suite.py --selfcheck
    python benchmarks/accuracy_suite.py --cases mni-headline
    python benchmarks/accuracy_suite.py --set all --append
    python benchmarks/accuracy_suite.py --set tuning --methods default,elastix \\
        --schedule cand.toml --label cand1     # elastix from the cache
    python benchmarks/accuracy_suite.py --merge a.json,b.json --append   # runs split in two

An interrupted run leaves what it finished in ``<out>.partial.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from accuracy_cases import Case

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANTS_PY = os.environ.get("ANTS_PYTHON", "/work/ants-venv/bin/python")
REFERENCES = ("elastix", "ants")
#: cases where whole-image elastix gets its default B-spline grid in voxels, not in
#: physical units: the default final grid is 10 physical units, i.e. 10 voxels on a
#: 1 mm image, but one pixel on retina2d's 10 µm pixels (two million control points;
#: the default maps ran for over 35 minutes there without finishing). The reference
#: keeps every other default and uses the grid the default means at 1 mm: 10 voxels.
ELASTIX_GRID_VOXELS = {"retina2d": 10.0, "retina2d-rg": 10.0}
METHODS = ("default", "fast", "elastix", "ants", "intensity", "mind")
#: ngff-dreg's default schedule with every stage fitting one similarity
#: (``Schedule.default(similarity=...)``), whatever the default is.
SIMILARITY_METHODS = {"intensity": "intensity", "mind": "mind"}
#: selfcheck pass marks (voxels of the fixed image): the mean mapped shift must match the
#: true one (a reversed direction or a swapped axis misses by about twice the shift, i.e.
#: several voxels), the median error stay below a voxel (a wrong spacing or origin scales
#: or offsets every point: many voxels), and a reference's own warped image agree with the
#: moving image sampled at its mapped points. Not a pass mark for accuracy: whole-image
#: elastix's default B-spline stage leaves a median of 0.56 voxel on the anisotropic case.
SELFCHECK_SHIFT_VOX = 0.25
SELFCHECK_MEDIAN_VOX = 1.0
SELFCHECK_NCC = 0.95


# ============================================================== child processes
def _cpu_now() -> float:
    """User + sys seconds of this process and its reaped descendants."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _inputs(inp: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The reference inputs written by the parent: float32 arrays and geometry."""
    geo = json.loads((inp / "geometry.json").read_text())
    return np.load(inp / "fixed.npy"), np.load(inp / "moving.npy"), geo


def _linear(arr: np.ndarray, geo: dict, pts: np.ndarray) -> np.ndarray:
    """``arr`` (NumPy order) sampled linearly at physical points (ITK order); 0 outside."""
    from scipy import ndimage

    idx = ((pts - np.asarray(geo["origin"])) / np.asarray(geo["spacing"]))[:, ::-1]
    return ndimage.map_coordinates(arr, idx.T, order=1, mode="constant", cval=0.0)


def child_elastix(inp: Path, points: Path, result: Path, n_eval: int, threads: int,
                  grid_voxels: float | None = None) -> dict:
    """Whole-image elastix, default rigid + affine + B-spline maps; map the points.

    ``grid_voxels``: the B-spline map's final grid spacing in voxels instead of
    its default physical one (see :data:`ELASTIX_GRID_VOXELS`).
    """
    import itk
    from scipy import ndimage

    fixed, moving, geo = _inputs(inp)
    fg, mg = geo["fixed"], geo["moving"]

    def image(arr: np.ndarray, g: dict) -> object:
        img = itk.image_from_array(np.ascontiguousarray(arr, dtype=np.float32))
        img.SetSpacing([float(s) for s in g["spacing"]])
        img.SetOrigin([float(o) for o in g["origin"]])
        return img

    f_img, m_img = image(fixed, fg), image(moving, mg)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    params = itk.ParameterObject.New()
    for kind in ("rigid", "affine", "bspline"):
        pmap = itk.ParameterObject.GetDefaultParameterMap(kind)
        if kind == "bspline" and grid_voxels is not None:
            del pmap["FinalGridSpacingInPhysicalUnits"]
            pmap["FinalGridSpacingInVoxels"] = [f"{grid_voxels:f}"] * fixed.ndim
        params.AddParameterMap(pmap)
    t0, c0 = time.perf_counter(), _cpu_now()
    warped, result_params = itk.elastix_registration_method(
        f_img, m_img, parameter_object=params, log_to_console=False)
    with tempfile.TemporaryDirectory() as tmp:
        field_img = itk.transformix_deformation_field(m_img, result_params, output_directory=tmp)
    seconds, cpu = time.perf_counter() - t0, _cpu_now() - c0
    field = itk.array_view_from_image(field_img)  # (z, y, x, ndim), ITK-order components
    pts = np.load(points)
    idx = ((pts - np.asarray(fg["origin"])) / np.asarray(fg["spacing"]))[:, ::-1]
    disp = np.stack([ndimage.map_coordinates(np.ascontiguousarray(field[..., c]), idx.T,
                                             order=1, mode="nearest")
                     for c in range(field.shape[-1])], axis=1)
    mapped = pts + disp
    np.save(result, mapped)
    warped_arr = itk.array_from_image(warped)
    own = _linear(warped_arr, fg, pts[:n_eval])
    return {"seconds": seconds, "cpu_seconds": cpu,
            "image_point_ncc": _ncc(own, _linear(moving, mg, mapped[:n_eval]))}


def child_ants(inp: Path, points: Path, result: Path, n_eval: int, threads: int) -> dict:
    """ANTs SyN with antspyx's defaults; map the points with the forward transforms."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants
    import pandas as pd

    fixed, moving, geo = _inputs(inp)
    fg, mg = geo["fixed"], geo["moving"]
    nd = fixed.ndim

    def image(arr: np.ndarray, g: dict) -> object:
        # antspyx arrays are in ITK index order (x first): transpose the NumPy order
        return ants.from_numpy(np.ascontiguousarray(arr.T, dtype=np.float32),
                               origin=[float(o) for o in g["origin"]],
                               spacing=[float(s) for s in g["spacing"]],
                               direction=np.eye(nd))

    f_img, m_img = image(fixed, fg), image(moving, mg)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), _cpu_now()
        reg = ants.registration(fixed=f_img, moving=m_img, type_of_transform="SyN",
                                outprefix=str(Path(tmp) / "ants_"))
        seconds, cpu = time.perf_counter() - t0, _cpu_now() - c0
        pts = np.load(points)
        cols = ["x", "y", "z"][:nd]
        out = ants.apply_transforms_to_points(nd, pd.DataFrame(pts, columns=cols),
                                              reg["fwdtransforms"])
        mapped = out[cols].to_numpy(dtype=np.float64)
        own = _linear(np.ascontiguousarray(reg["warpedmovout"].numpy().T), fg, pts[:n_eval])
    np.save(result, mapped)
    return {"seconds": seconds, "cpu_seconds": cpu,
            "image_point_ncc": _ncc(own, _linear(moving, mg, mapped[:n_eval]))}


def child_ngff(fixed: str, moving: str, points: Path, result: Path, workers: int,
               fast: bool, schedule: str | None, similarity: str | None = None) -> dict:
    """ngff-dreg via its Python API; points mapped by the transform read back."""
    import ngff_dreg
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.schedule import Schedule

    geoms = [lvl.geometry for lvl in open_multiscale(fixed).levels]
    extra = {"similarity": similarity} if similarity else {}
    sched = Schedule.load(schedule) if schedule else Schedule.default(geoms, fast=fast, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.zarr")
        t0, c0 = time.perf_counter(), _cpu_now()
        res = ngff_dreg.register(fixed, moving, out, schedule=sched,
                                 client=f"local:{workers}", progress=False, overwrite=True)
        seconds, cpu = time.perf_counter() - t0, _cpu_now() - c0
        mapped = ngff_dreg.read_transform(out).transform_points(np.load(points))
    np.save(result, mapped)
    return {"seconds": seconds, "cpu_seconds": cpu,
            "stages": [[r.name, r.fixed_level, r.seconds] for r in res.levels],
            "ngff_dreg_file": ngff_dreg.__file__}


# ============================================================== parent: running
def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "ngff_dreg"], capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty(ngff_dreg)" if dirty else "")
    except (subprocess.SubprocessError, OSError):
        return "unknown"


def _ants_python() -> str | None:
    if Path(ANTS_PY).exists():
        return ANTS_PY
    try:
        import ants  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def versions() -> dict[str, str]:
    """Versions of what matters (ANTs from its own interpreter)."""
    from importlib import metadata

    out = {}
    for d in ("ngff-dreg", "itk", "itk-elastix", "zarr", "dask", "distributed", "numpy",
              "scipy", "ngff-zarr"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "-"
    out["python"] = platform.python_version()
    py = _ants_python()
    if py:
        probe = ("from importlib import metadata as m; print(m.version('antspyx'), "
                 "m.version('numpy'))")
        try:
            res = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=120,
                                 check=True)
            av, anp = res.stdout.split()
            out["antspyx"] = f"{av} (numpy {anp})"
        except (subprocess.SubprocessError, OSError, ValueError):
            out["antspyx"] = "unreadable"
    return out


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def _reference_inputs(case: Case) -> Path:
    """Level 0 of both images as float32 ``.npy`` + geometry (for the references)."""
    from data import _read_level

    inp = case.root / "ref-inputs"
    stamp = inp / "geometry.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("digest") == case.meta["digest"]:
        return inp
    inp.mkdir(exist_ok=True)
    np.save(inp / "fixed.npy", _read_level(case.fixed))
    np.save(inp / "moving.npy", _read_level(case.moving))
    g = {"fixed": case.meta["fixed_geometry"], "moving": case.meta["moving_geometry"],
         "digest": case.meta["digest"]}
    stamp.write_text(json.dumps(g))
    return inp


def _elastix_grid(case: Case, method: str) -> float | None:
    """The B-spline grid in voxels a reference run uses on ``case`` (``None``: the default)."""
    return ELASTIX_GRID_VOXELS.get(case.spec.name) if method == "elastix" else None


def run_child(case: Case, method: str, workers: int, schedule: str | None,
              work: Path) -> tuple[np.ndarray, dict]:
    """Run ``method`` on ``case`` in a measured child process; (mapped points, figures)."""
    from bench_pipeline import run_measured

    points = work / f"{case.name}-points.npy"
    if not points.exists():
        np.save(points, np.concatenate([case.eval_points, case.jac_points()]))
    result = work / f"{case.name}-{method}.npy"
    me = str(Path(__file__).resolve())
    n_eval = len(case.eval_index)
    common = ["--points", str(points), "--result", str(result), "--workers", str(workers),
              "--n-eval", str(n_eval)]
    if method in REFERENCES:
        inp = _reference_inputs(case)
        py = sys.executable
        if method == "ants":
            py = _ants_python() or ""
            if not py:
                raise RuntimeError("antspyx not found: set ANTS_PYTHON (see the docstring)")
        cmd = [py, me, "--child", method, "--inputs", str(inp), *common]
        grid = _elastix_grid(case, method)
        if grid is not None:
            cmd += ["--elastix-grid-voxels", str(grid)]
    else:
        cmd = [sys.executable, me, "--child", "ngff", "--fixed", case.fixed, "--moving",
               case.moving, *common]
        if method == "fast":
            cmd.append("--fast")
        if method in SIMILARITY_METHODS:
            cmd += ["--similarity", SIMILARITY_METHODS[method]]
        if method == "schedule":
            cmd += ["--schedule", str(schedule)]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info, figs = run_measured(cmd, env=_child_env())
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    figs["process_cpu_seconds"] = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    mapped = np.load(result)
    result.unlink()
    return mapped, {**info, **figs}


def score(case: Case, mapped: np.ndarray) -> dict:
    """Point errors (physical, voxels) and det J statistics of ``mapped``."""
    from jacobian import det_jacobian_lattice

    n = len(case.eval_index)
    pts = case.eval_points
    err = np.linalg.norm(mapped[:n] - case.truth.transform_points(pts), axis=1)
    vox = err / min(case.geometry.spacing)
    out = {"mean": float(err.mean()), "median": float(np.median(err)),
           "p95": float(np.percentile(err, 95)), "max": float(err.max()),
           "mean_vox": float(vox.mean()), "median_vox": float(np.median(vox)),
           "p95_vox": float(np.percentile(vox, 95)), "max_vox": float(vox.max())}
    if len(mapped) > n:
        out.update(det_jacobian_lattice(mapped[n:], case.jac_mask.shape, case.jac_spacing,
                                        case.jac_mask))
    return out


def run_method(case: Case, method: str, label: str, workers: int,
               schedule: str | None, work: Path, rerun: bool, vers: dict) -> dict:
    """One row: cached (references) or freshly run and scored."""
    cache = case.root / f"ref-{method}.json"
    if method in REFERENCES and cache.exists() and not rerun:
        cached = json.loads(cache.read_text())
        if cached.get("digest") == case.meta["digest"] \
                and cached["row"].get("elastix_grid_voxels") == _elastix_grid(case, method):
            return {**cached["row"], "cached": True}
    t0, load0 = time.time(), os.getloadavg()[0]
    try:
        mapped, figs = run_child(case, method, workers, schedule, work)
    except Exception as exc:  # a failed method is a result, not a crash
        return {"method": label, "failed": str(exc)[-2000:]}
    if _elastix_grid(case, method) is not None:
        figs["elastix_grid_voxels"] = _elastix_grid(case, method)
    row = {"method": label, **score(case, mapped), **figs,
           "ran_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
           "load_before": load0}
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
    kept = case.root / (f"ref-{method}-eval.npy" if method in REFERENCES
                        else f"run-{safe}-eval.npy")
    np.save(kept, mapped[:len(case.eval_index)])
    row["mapped_eval"] = str(kept)
    if method in REFERENCES:
        row["versions"] = vers
        cache.write_text(json.dumps({"digest": case.meta["digest"], "row": row}, indent=1))
    return row


# ============================================================== tables
def _fmt(v: object, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return format(v, spec) if spec else str(v)


COLS = [("case", "case", ""), ("method", "method", ""), ("mean_vox", "mean", ".3f"),
        ("median_vox", "median", ".3f"), ("p95_vox", "p95", ".3f"), ("max_vox", "max", ".2f"),
        ("p95_phys", "p95 phys", ""), ("jacobian_min", "det J min", ".3f"),
        ("folded_pct", "folded %", ".3f"), ("seconds", "wall s", ".1f"),
        ("cpu_seconds", "CPU s", ".1f"), ("peak_tree_mb", "peak MB", ".0f"),
        ("p95_ratio", "p95 / elastix", ".2f"), ("time_ratio", "wall / elastix", ".2f"),
        ("cpu_ratio", "CPU / elastix", ".2f"), ("best_ratio", "p95 / best ref", ".2f")]

_UNITS = {"millimeter": "mm", "micrometer": "µm"}


def table_rows(results: dict, split: str) -> tuple[list[dict], dict[str, dict]]:
    """Flat rows of ``split`` with ratios to elastix; per-method medians of the ratios."""
    rows, ratios, best_ratios = [], {}, {}
    for name, c in results["cases"].items():
        if c["split"] != split:
            continue
        by = {r["method"]: r for r in c["results"]}
        ref = by.get("elastix")
        # the better reference on this case (issue #20's bar: the better of elastix and ANTs)
        refs = [by[m]["p95"] for m in REFERENCES
                if m in by and not by[m].get("failed") and by[m].get("p95", 0) > 0]
        best = min(refs) if refs else None
        unit = _UNITS.get(c["unit"], c["unit"] or "")
        for r in c["results"]:
            row = {"case": name, **r}
            if r.get("failed"):
                row["method"] = f"{r['method']} (failed)"
                rows.append(row)
                continue
            row["p95_phys"] = f"{r['p95']:.3f} {unit}".strip()
            if r.get("folded_fraction") is not None:
                row["folded_pct"] = 100.0 * r["folded_fraction"]
            if best is not None and r["method"] not in ("identity", *REFERENCES):
                row["best_ratio"] = r["p95"] / best
                b = best_ratios.setdefault(r["method"], [])
                b.append(row["best_ratio"])
            if ref and not ref.get("failed") and r["method"] != "identity":
                row["p95_ratio"] = r["p95"] / ref["p95"] if ref["p95"] > 0 else None
                if r.get("seconds") and ref.get("seconds"):
                    row["time_ratio"] = r["seconds"] / ref["seconds"]
                if r.get("cpu_seconds") and ref.get("cpu_seconds"):
                    row["cpu_ratio"] = r["cpu_seconds"] / ref["cpu_seconds"]
                d = ratios.setdefault(r["method"], {"p95": [], "time": [], "cpu": [], "wins": 0,
                                                    "n": 0, "unfolded": 0})
                if row.get("p95_ratio") is not None:
                    d["p95"].append(row["p95_ratio"])
                    d["n"] += 1
                    d["wins"] += int(row["p95_ratio"] <= 1.0)
                if row.get("time_ratio") is not None:
                    d["time"].append(row["time_ratio"])
                if row.get("cpu_ratio") is not None:
                    d["cpu"].append(row["cpu_ratio"])
                d["unfolded"] += int((r.get("jacobian_min") or 0.0) > 0.0)
            rows.append(row)

    def med(v: list[float]) -> float | None:
        return float(np.median(v)) if v else None

    summary = {m: {"median_p95_ratio": med(d["p95"]), "median_time_ratio": med(d["time"]),
                   "median_cpu_ratio": med(d["cpu"]), "cases_p95_le_elastix": d["wins"],
                   "cases": d["n"], "cases_unfolded": d["unfolded"],
                   "median_p95_best_ratio": med(best_ratios.get(m, [])),
                   "cases_p95_le_best": sum(v <= 1.0 for v in best_ratios.get(m, [])),
                   "cases_with_best": len(best_ratios.get(m, []))}
               for m, d in ratios.items()}
    return rows, summary


def _grid_text(g: dict, unit: str) -> str:
    return ("×".join(str(n) for n in g["shape"][::-1]) + " @ "
            + "×".join(f"{v:g}" for v in g["spacing"]) + f" {unit}")


def markdown(results: dict) -> str:
    """The Markdown section: header, cases, one table per set, medians of the ratios."""
    from accuracy_cases import get_spec

    m = results["meta"]
    lines = [
        f"Measured {m['date']} with the code at commit `{m['commit']}` on {m['host']} "
        f"({m['cores']} cores, shared with other jobs: load average {m['load_before']} "
        f"before, {m['load_after']} after; {m['workers']} workers/threads per method, "
        "one method at a time). Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Command: `{m['command']}`",
        "",
        "Errors are in voxels of the fixed image's finest level (lengths divided by its "
        "smallest spacing: in-plane voxels for the anisotropic cases), at 20 000 random "
        "fixed foreground points whose true image lies inside the moving image; `p95 phys` "
        "is the same p95 in physical units. det J of the recovered fixed→moving map over the "
        "fixed foreground, from mapped lattice points (every ~2 mm in 3D, every pixel in 2D), "
        "the same finite differences for every method. `wall s`/`CPU s`: the registration "
        "alone (user + sys, workers included), not interpreter start, image reading or point "
        "mapping; `peak MB`: the method's whole process tree. Reference rows (elastix, ants) "
        "come from the per-case cache when marked † (measured earlier, same code and case).",
        "elastix ‡: default maps with the B-spline grid given in voxels, "
        f"{', '.join(f'{k} {v:g}' for k, v in ELASTIX_GRID_VOXELS.items())} (the default "
        "10 physical units is one pixel there; see `ELASTIX_GRID_VOXELS`).",
    ]
    lines += ["", "#### Cases", "", "| case | split | fixed grid | moving grid | storage | "
              "max warp | max total | truth det J min | what it tests |", "|" + "---|" * 9]
    for name, c in results["cases"].items():
        fg, mg = c["fixed_geometry"], c["moving_geometry"]
        unit = _UNITS.get(c["unit"], c["unit"] or "")
        spec = get_spec(name.removesuffix("-reduced"))
        lines.append(f"| {name} | {c['split']} | {_grid_text(fg, unit)} | "
                     f"{_grid_text(mg, unit)} | {spec.dtype}, {spec.writer} | "
                     f"{c['truth_max_warp']:.2f} {unit} | "
                     f"{c['truth_max_total']:.2f} {unit} | {c['truth_jacobian_min']:.2f} | "
                     f"{c['tests']} |")
    for split in ("tuning", "validation"):
        rows, summary = table_rows(results, split)
        if not rows:
            continue
        for r in rows:
            if r.get("elastix_grid_voxels") is not None:
                r["method"] = f"{r['method']} ‡"
            if r.get("cached"):
                r["method"] = f"{r['method']} †"
        head = "| " + " | ".join(c[1] for c in COLS) + " |"
        sep = "|" + "|".join("---" for _ in COLS) + "|"
        body = ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in COLS) + " |" for r in rows]
        lines += ["", f"#### {split.capitalize()} set", "", head, sep, *body, ""]
        for meth, s in summary.items():
            if meth in ("elastix",):
                continue
            lines.append(
                f"- {meth}: median over cases of p95 / elastix p95 = "
                f"{_fmt(s['median_p95_ratio'], '.2f')}, of wall / elastix wall = "
                f"{_fmt(s['median_time_ratio'], '.2f')}, of CPU / elastix CPU = "
                f"{_fmt(s['median_cpu_ratio'], '.2f')}; p95 ≤ elastix's on "
                f"{s['cases_p95_le_elastix']} of {s['cases']} cases; det J > 0 on "
                f"{s['cases_unfolded']} of {s['cases']}"
                + (f"; median p95 / better reference (elastix or ANTs) = "
                   f"{_fmt(s['median_p95_best_ratio'], '.2f')}, p95 ≤ the better reference "
                   f"on {s['cases_p95_le_best']} of {s['cases_with_best']}"
                   if s.get("cases_with_best") else "") + ".")
    return "\n".join(lines) + "\n"


# ============================================================== main
def _identity_row(case: Case) -> dict:
    pts = np.concatenate([case.eval_points, case.jac_points()])
    return {"method": "identity", **score(case, pts)}


def run_suite(names: list[str], methods: list[str], label: str | None, args: argparse.Namespace,
              root: Path, partial: Path | None = None) -> dict:
    """Generate the cases, run every method, score; the results dict.

    With ``partial``, the results so far are written there after every case.
    """
    from accuracy_cases import get_spec, make_case

    vers = versions()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="suite-", dir=root))
    results: dict = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _git_commit(),
        "host": platform.node(), "cores": os.cpu_count(), "workers": args.workers,
        "versions": vers, "load_before": " / ".join(f"{v:.2f}" for v in load0),
        "command": "python benchmarks/accuracy_suite.py " + shlex.join(sys.argv[1:]),
        "schedule": args.schedule, "label": label}, "cases": {}}
    try:  # the methods' outputs go with the run; what is kept is in case.root
        for name in names:
            spec = get_spec(name)
            case = make_case(name, root, reduced=args.reduced)
            print(f"{case.name} [{spec.split}]: {spec.tests}", flush=True)
            entry = {"split": spec.split, "tests": spec.tests, "unit": case.geometry.unit,
                     "fixed_geometry": case.meta["fixed_geometry"],
                     "moving_geometry": case.meta["moving_geometry"],
                     "truth_max_warp": case.meta["truth_max_warp"],
                     "truth_max_total": case.meta["truth_max_total"],
                     "truth_jacobian_min": case.meta["truth_jacobian_min"], "results": []}
            entry["results"].append(_identity_row(case))
            for method in methods:
                lab = (label or f"schedule:{Path(args.schedule).stem}") if method == "schedule" \
                    else method
                row = run_method(case, method, lab, args.workers, args.schedule, work,
                                 args.rerun_references, vers)
                row["load_after"] = os.getloadavg()[0]
                entry["results"].append(row)
                if row.get("failed"):
                    print(f"    {lab}: FAILED {row['failed'][-300:]}", flush=True)
                else:
                    print(f"    {lab}: p95 {row['p95_vox']:.3f} vox, mean {row['mean_vox']:.3f}, "
                          f"det J min {_fmt(row.get('jacobian_min'), '.3f')}, "
                          f"{_fmt(row.get('seconds'), '.1f')} s"
                          + (" (cached)" if row.get("cached") else ""), flush=True)
            results["cases"][case.name] = entry
            if partial is not None:  # what is done survives an interrupted run
                results["meta"]["load_after"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
                partial.write_text(json.dumps(results, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["meta"]["load_after"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return results


def selfcheck(args: argparse.Namespace, root: Path) -> int:
    """Convention checks on pure translations; non-zero exit on any failure."""
    from accuracy_cases import SELFCHECK_CASES

    names = [c.name for c in SELFCHECK_CASES]
    args.reduced = False
    res = run_suite(names, ["elastix", "ants", "default"], None, args, root)
    failures = []
    for name, c in res["cases"].items():
        from accuracy_cases import make_case

        case = make_case(name, root)
        pts = case.eval_points
        t_true = (case.truth.transform_points(pts) - pts).mean(axis=0)
        vox = min(case.geometry.spacing)
        print(f"{name}: true shift {np.round(t_true, 3)} (voxel {vox:g})")
        for r in c["results"]:
            if r["method"] == "identity":
                continue
            if r.get("failed"):
                failures.append(f"{name}/{r['method']}: failed")
                continue
            kept = r.get("mapped_eval") or str(case.root / f"ref-{r['method']}-eval.npy")
            shift = (np.load(kept) - pts).mean(axis=0)
            off = float(np.linalg.norm(shift - t_true)) / vox
            ncc = r.get("image_point_ncc")
            checks = {"shift": off < SELFCHECK_SHIFT_VOX,
                      "median": r["median_vox"] < SELFCHECK_MEDIAN_VOX,
                      "image/point": ncc is None or ncc > SELFCHECK_NCC}
            print(f"  {r['method']:8s} mean shift {np.round(shift, 3)} ({off:.3f} vox from "
                  f"the truth), median {r['median_vox']:.3f}, p95 {r['p95_vox']:.3f} vox, "
                  f"det J min {_fmt(r.get('jacobian_min'), '.3f')}, image/point NCC "
                  f"{_fmt(ncc, '.4f')}: "
                  + ("ok" if all(checks.values()) else
                     "FAIL " + ",".join(k for k, v in checks.items() if not v)))
            failures += [f"{name}/{r['method']}: {k}" for k, v in checks.items() if not v]
    out = args.out or root / "results" / "selfcheck.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print("selfcheck:", "PASSED" if not failures else "FAILED\n  " + "\n  ".join(failures))
    return 1 if failures else 0


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help="comma list of case names")
    ap.add_argument("--set", default="all", choices=("tuning", "validation", "all"))
    ap.add_argument("--methods", default=None,
                    help=f"comma list of {METHODS} (+ 'schedule'; default: all)")
    ap.add_argument("--schedule", default=None, help="candidate ngff-dreg schedule file")
    ap.add_argument("--label", default=None, help="name of the --schedule variant")
    ap.add_argument("--rerun-references", action="store_true",
                    help="recompute elastix/ANTs instead of using the per-case cache")
    ap.add_argument("--selfcheck", action="store_true",
                    help="check every method's point direction and conventions")
    ap.add_argument("--reduced", action="store_true", help="the reduced (2 mm) variants")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=None, help="case cache (/work/suite-data)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--append", action="store_true", help="append the section to RESULTS.md")
    ap.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--title", default=None, help="heading of the appended section")
    # child mode
    ap.add_argument("--child", default=None, choices=("elastix", "ants", "ngff"))
    ap.add_argument("--inputs", type=Path)
    ap.add_argument("--fixed")
    ap.add_argument("--moving")
    ap.add_argument("--points", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--n-eval", type=int, default=0)
    ap.add_argument("--elastix-grid-voxels", type=float, default=None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--similarity", default=None, choices=("intensity", "mind"))
    ap.add_argument("--merge", default=None,
                    help="comma list of result JSONs to combine into one table (no run)")
    args = ap.parse_args()

    if args.child:
        if args.child == "elastix":
            info = child_elastix(args.inputs, args.points, args.result, args.n_eval,
                                 args.workers, args.elastix_grid_voxels)
        elif args.child == "ants":
            info = child_ants(args.inputs, args.points, args.result, args.n_eval, args.workers)
        else:
            info = child_ngff(args.fixed, args.moving, args.points, args.result, args.workers,
                              args.fast, args.schedule, args.similarity)
        print(json.dumps(info))
        return

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    from accuracy_cases import DEFAULT_ROOT, case_names

    root = args.root or DEFAULT_ROOT
    root.mkdir(parents=True, exist_ok=True)
    if args.merge:
        emit(merge([Path(p) for p in args.merge.split(",")]), args, root)
        return
    if args.selfcheck:
        raise SystemExit(selfcheck(args, root))
    names = args.cases.split(",") if args.cases else case_names(args.set)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    if args.schedule and "schedule" not in methods:
        methods.append("schedule")
    if "schedule" in methods and not args.schedule:
        raise SystemExit("method 'schedule' needs --schedule FILE")
    partial = (args.out or root / "results" / "suite-run.json").with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    res = run_suite([n.strip() for n in names], methods, args.label, args, root, partial)
    emit(res, args, root)
    partial.unlink(missing_ok=True)


def merge(paths: list[Path]) -> dict:
    """Combine result JSONs (e.g. of runs split over case lists) into one."""
    parts = [json.loads(p.read_text()) for p in paths]
    meta = dict(parts[0]["meta"])
    meta["date"] = " + ".join(dict.fromkeys(p["meta"]["date"] for p in parts))
    meta["commit"] = " + ".join(dict.fromkeys(p["meta"]["commit"] for p in parts))
    meta["load_before"] = " ; ".join(p["meta"]["load_before"] for p in parts)
    meta["load_after"] = " ; ".join(p["meta"]["load_after"] for p in parts)
    meta["command"] = " ; ".join(p["meta"]["command"] for p in parts)
    meta["merged_from"] = [str(p) for p in paths]
    cases: dict = {}
    for p in parts:
        cases.update(p["cases"])
    from accuracy_cases import case_names

    order = {n: i for i, n in enumerate(case_names())}
    return {"meta": meta, "cases": dict(sorted(cases.items(),
                                               key=lambda kv: order.get(kv[0], 99)))}


def emit(res: dict, args: argparse.Namespace, root: Path) -> None:
    """Write the JSON and the Markdown; print; append to RESULTS.md if asked."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or root / "results" / f"suite-{args.label or 'run'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print("\n" + md)
    if args.append:
        title = args.title or "## Accuracy suite " + res["meta"]["date"]
        with args.results_md.open("a") as fh:
            fh.write("\n" + title + "\n\n" + md)
        print(f"appended to {args.results_md}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
