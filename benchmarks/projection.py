"""Project a large run (e.g. a 10 TB pair on 100 workers) from a measured one.

Reads one measured default run of ``bench_io.py`` (its JSON: per-stage wall
seconds and block counts, bytes and GETs per image; the stage figures can also
come from the run's output scene with ``--scene``), rebuilds the default
schedule of the measured pair and of the target pair (a pyramid halving every
axis down to about 64 voxels), and scales:

* **time**: each block stage's measured cost per block task, ``wall ×
  workers / blocks``, divided by the padded block's voxels, times the target's
  padded block voxels and block count, over the target's workers; the global
  stage (one task on a coarse level of similar size) as measured;
* **GETs and bytes**: the stored bytes and chunk objects of the levels the
  target run reads, times the measured fetched / levels-used factor (1.0 when
  the workers of a machine share its host cache) and, as an upper bound for
  workers on separate machines with no task locality, times the padded block
  volume over its core (each chunk read by every block whose halo reaches it);
* **memory**: the padded block's voxels (the engine coarsens blocks when a
  level would have more than ``MAX_BLOCKS`` blocks, and then a block, not the
  image, is what no longer fits).

The cost model is linear in a block's voxels (reading, decoding, resampling
and smoothing the block), which dominates for large blocks; the B-spline fit's
own cost is set by its samples, which the default keeps at about 90 per
control cell. The GETs are priced at S3 Standard's list price
(:data:`GET_PRICE_PER_1000`); bytes are not priced (no charge inside the
bucket's region). ``bench_virtual_10tb.py`` projects from a measured block
stage's per-block GETs, bytes and PUTs instead (its ``--project-from``).

Example::

    python benchmarks/projection.py --measured benchmarks/io-results/mniup1024-2workers.json \\
        --shape 10000,16000,16000 --workers 100
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ngff_dreg.engine import MAX_BLOCKS, _coarsen_for_graph_size  # noqa: E402
from ngff_dreg.geometry import ImageGeometry  # noqa: E402
from ngff_dreg.schedule import Schedule  # noqa: E402

#: S3 Standard GET list price (us-east-1), USD per 1000 requests.
GET_PRICE_PER_1000 = 0.0004


def pyramid(shape: tuple[int, ...], spacing: float = 1.0, smallest: int = 64
            ) -> list[ImageGeometry]:
    """Levels halving every axis until the smallest axis would drop below ``smallest``."""
    levels = [ImageGeometry(shape, (spacing,) * len(shape), (0.0,) * len(shape))]
    while min(levels[-1].shape) // 2 >= smallest:
        g = levels[-1]
        levels.append(ImageGeometry(tuple(-(-n // 2) for n in g.shape),
                                    tuple(2 * s for s in g.spacing), (0.0,) * len(shape)))
    return levels


def plan(levels: list[ImageGeometry], chunk: int) -> list[dict[str, Any]]:
    """Per block stage of the default schedule: level, block edge (after coarsening), counts."""
    out = []
    for st in Schedule.default(levels).stages:
        g = levels[int(st.level)]
        block = (int(st.block_size),) * g.ndim
        used = _coarsen_for_graph_size(g.shape, block, (chunk,) * g.ndim)
        n = int(np.prod([math.ceil(s / b) for s, b in zip(g.shape, used)]))
        padded = [min(s, b + 2 * math.ceil(st.overlap * b)) for s, b in zip(g.shape, used)]
        out.append({"level": int(st.level), "level_shape": g.shape, "block": used[0],
                    "requested_block": int(st.block_size), "overlap": float(st.overlap),
                    "blocks": n, "padded_voxels": int(np.prod(padded)),
                    "core_voxels": int(np.prod(used)),
                    "cps_vox": float(st.method_options["control_point_spacing"])
                    / float(min(g.spacing))})
    return out


def _figures(measured: Any) -> dict[str, Any]:
    """The first run's figures of a ``bench_io.py`` JSON (a list of runs)."""
    run = measured[0] if isinstance(measured, list) else measured
    return dict(run.get("figures", run))


def _measured_stages(measured: Any, scene: str | None) -> list[dict[str, Any]]:
    stages = _figures(measured).get("stages")
    if stages:
        return list(stages)
    if scene is None:
        raise SystemExit("the measured JSON has no per-stage figures: pass --scene OUT.zarr")
    from ngff_dreg.report.data import read_scene_info

    info = read_scene_info(scene)
    return [{"name": s.name, "fixed_level": s.fixed_level, "seconds": s.seconds,
             "blocks": None if s.status is None else int(np.asarray(s.status).size)}
            for s in info.stages]


def level_bytes(levels: list[ImageGeometry], used: set[int], itemsize: int,
                chunk: int) -> tuple[float, float]:
    """Stored bytes (uncompressed) and chunk objects of the levels ``used``."""
    nbytes = objects = 0.0
    for i in used:
        shape = levels[i].shape
        nbytes += float(np.prod(shape)) * itemsize
        objects += float(np.prod([math.ceil(s / chunk) for s in shape]))
    return nbytes, objects


def project(measured: Any, mstages: list[dict[str, Any]], mshape: tuple[int, ...],
            mworkers: int, target: tuple[int, ...], workers: int, chunk: int,
            itemsize: int, mlevels_of: list[ImageGeometry] | None = None) -> dict[str, Any]:
    """The projection's figures (see the module docstring)."""
    mlevels, tlevels = mlevels_of or pyramid(mshape), pyramid(target)
    mplan, tplan = plan(mlevels, chunk), plan(tlevels, chunk)
    blocks = [s for s in mstages if s.get("blocks")]
    glob = [s for s in mstages if not s.get("blocks")]
    if len(blocks) != len(mplan):
        raise SystemExit(f"measured run has {len(blocks)} block stages, the default "
                         f"schedule of {mshape} has {len(mplan)}")
    stages, hours = [], sum(float(s["seconds"]) for s in glob) / 3600.0
    for ms, mp, tp in zip(blocks, mplan, tplan):
        per_block = float(ms["seconds"]) * mworkers / int(ms["blocks"])
        per_voxel = per_block / mp["padded_voxels"]
        t_block = per_voxel * tp["padded_voxels"]
        h = tp["blocks"] * t_block / workers / 3600.0
        hours += h
        stages.append({**tp, "measured_block_s": per_block, "target_block_s": t_block,
                       "hours": h, "block_memory_gb_float32": tp["padded_voxels"] * 4 / 1e9})
    fig = _figures(measured)
    factor = float(fig.get("inputs_vs_levels_used", 1.0))
    g_stage = Schedule.default(tlevels).global_stage
    used = {s["level"] for s in tplan} | ({int(g_stage.level)} if g_stage else set())
    out = {"target_shape": target, "workers": workers, "chunk": chunk,
           "image_tb": float(np.prod(target)) * itemsize / 1e12, "max_blocks": MAX_BLOCKS,
           "default": _io({"levels_used": sorted(used), "stages": stages, "hours": hours},
                          tlevels, used, itemsize, chunk, factor, tplan)}
    # the measured run's level-0 stage (same block, overlap and control cell in voxels)
    # over the target's level 0: what a user asking for that resolution would run
    last, mlast = blocks[-1], mplan[-1]
    g0 = tlevels[0]
    block = (int(mlast["block"]),) * g0.ndim
    coarse = _coarsen_for_graph_size(g0.shape, block, (chunk,) * g0.ndim)
    n = int(np.prod([math.ceil(v / b) for v, b in zip(g0.shape, coarse)]))
    grow = coarse[0] / mlast["block"]
    padded = mlast["padded_voxels"] * grow**g0.ndim
    per_block = float(last["seconds"]) * mworkers / int(last["blocks"])
    t_block = per_block * grow**g0.ndim
    st = {"level": 0, "level_shape": g0.shape, "block": coarse[0],
          "requested_block": mlast["block"], "overlap": mlast["overlap"], "blocks": n,
          "padded_voxels": padded, "core_voxels": float(np.prod(coarse)),
          "measured_block_s": per_block, "target_block_s": t_block,
          "hours": n * t_block / workers / 3600.0,
          "block_memory_gb_float32": padded * 4 / 1e9}
    fine_used = {0} | ({int(g_stage.level)} if g_stage else set())
    out["level0"] = _io({"levels_used": sorted(fine_used), "stages": [st],
                         "hours": st["hours"]}, tlevels, fine_used, itemsize, chunk, factor,
                        [st])
    return out


def _io(p: dict[str, Any], levels: list[ImageGeometry], used: set[int], itemsize: int,
        chunk: int, factor: float, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """GETs and bytes of a scenario: one shared cache per machine, and no locality."""
    nbytes, objects = level_bytes(levels, used, itemsize, chunk)
    pair_bytes, pair_objects = 2 * nbytes, 2 * objects  # fixed and moving
    halo_bound = max(s["padded_voxels"] / s["core_voxels"] for s in stages)
    return {**p, "gets_one_cache_per_machine": pair_objects * factor,
            "bytes_one_cache_per_machine": pair_bytes * factor,
            "gets_no_locality": pair_objects * halo_bound,
            "bytes_no_locality": pair_bytes * halo_bound}


def markdown(p: dict[str, Any]) -> str:
    """The projection as Markdown: both scenarios."""
    head = (f"Target: two {'×'.join(map(str, p['target_shape']))} images "
            f"({p['image_tb']:.1f} TB each, uint16, chunks {p['chunk']}³), {p['workers']} "
            "workers (fixed + moving; uncompressed bytes).")
    return "\n".join([head, "", "**Default schedule:**", "", _scenario(p["default"], p), "",
                      "**The measured level-0 stage (same block and control cell in voxels) "
                      "over the target's level 0:**", "", _scenario(p["level0"], p)])


def _scenario(p: dict[str, Any], top: dict[str, Any]) -> str:
    lines = [f"Levels read {p['levels_used']}.", "",
             "| stage level | level shape | block (requested) | blocks | padded block, GB "
             "float32 | s per block (measured → target) | hours on the workers |",
             "|---|---|---|---|---|---|---|"]
    for s in p["stages"]:
        lines.append(f"| {s['level']} | {'×'.join(map(str, s['level_shape']))} | "
                     f"{s['block']} ({s['requested_block']}) | {s['blocks']} | "
                     f"{s['block_memory_gb_float32']:.2f} | {s['measured_block_s']:.2f} → "
                     f"{s['target_block_s']:.1f} | {s['hours']:.2f} |")
    lines += ["", f"- total: **{p['hours']:.2f} h** on {top['workers']} workers (block "
              "stages; plus the global stage, seconds)",
              f"- chunk GETs: {p['gets_one_cache_per_machine']:.3g} with a shared cache per "
              f"machine, up to {p['gets_no_locality']:.3g} with no locality between machines "
              f"(${_usd(p['gets_one_cache_per_machine'])} to "
              f"${_usd(p['gets_no_locality'])} at ${GET_PRICE_PER_1000} per 1000 GETs)",
              f"- bytes fetched (egress if the workers are outside the bucket's region): "
              f"{_size(p['bytes_one_cache_per_machine'])}, up to "
              f"{_size(p['bytes_no_locality'])}"]
    return "\n".join(lines)


def _usd(gets: float) -> str:
    return f"{gets / 1000 * GET_PRICE_PER_1000:.2f}"


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e12:.1f} TB" if nbytes >= 1e12 else f"{nbytes / 1e9:.1f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measured", type=Path, required=True, help="bench_io.py JSON")
    ap.add_argument("--scene", default=None, help="the measured run's output scene")
    ap.add_argument("--measured-shape", default="1024,1024,1024")
    ap.add_argument("--measured-fixed", default=None,
                    help="the measured fixed image (its real pyramid instead of a halving one)")
    ap.add_argument("--measured-workers", type=int, default=2)
    ap.add_argument("--shape", default="10000,16000,16000")
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--itemsize", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    measured = json.loads(args.measured.read_text())
    mstages = _measured_stages(measured, args.scene)
    shape = tuple(int(v) for v in args.measured_shape.split(","))
    target = tuple(int(v) for v in args.shape.split(","))
    mlevels = None
    if args.measured_fixed:
        from ngff_dreg.io.omezarr.multiscale import open_multiscale

        mlevels = [lv.geometry for lv in open_multiscale(args.measured_fixed).levels]
    p = project(measured, mstages, shape, args.measured_workers, target, args.workers,
                args.chunk, args.itemsize, mlevels)
    if args.json:
        args.json.write_text(json.dumps(p, indent=1, default=str))
    print(markdown(p))


if __name__ == "__main__":
    main()
