"""Write the default schedule of a suite case plus a finer, gated refinement stage.

The extra stage runs on the last stage's level at ``factor`` times its control
spacing (same samples per control cell), and its block fits are kept only when
they lower the held-out data term by at least ``min_gain`` (RESULTS.md, "A finer
refinement stage kept only where it gains")::

    python benchmarks/refine_schedule.py mni-svf-fine 0.7 0.05 refine.toml
    python benchmarks/accuracy_suite.py --cases mni-svf-fine --methods schedule \\
        --schedule refine.toml --label refine

The case must exist under ``--root`` (default ``/work/suite-data``; the suite writes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.schedule import (
    SAMPLES_PER_CELL_AXIS,
    BlockStage,
    Schedule,
    _default_block,
    _default_overlap,
)


def refined(levels: list, factor: float, min_gain: float) -> Schedule:
    """``Schedule.default(levels)`` plus the refinement stage."""
    sched = Schedule.default(levels)
    last = sched.stages[-1]
    geom = levels[int(last.level)]
    cps = float(last.method_options["control_point_spacing"]) * factor
    cps_vox = cps / float(min(geom.spacing))
    stride = max(1, round(cps_vox / SAMPLES_PER_CELL_AXIS.get(geom.ndim, 4.5)))
    opts = dict(last.method_options)
    opts.update(control_point_spacing=round(cps, 6), shrink_factors=[stride],
                smoothing_sigmas=[0.5], min_gain=min_gain)
    block = _default_block(geom.shape, cps_vox)
    sched.stages.append(BlockStage(
        level=last.level, block_size=block, overlap=_default_overlap(geom.ndim, cps_vox, block),
        method="bspline", method_options=opts,
        field_spacing_factor=float(max(1, round(cps_vox / 5.0)))))
    return sched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("factor", type=float, help="control spacing of the extra stage / the last's")
    ap.add_argument("min_gain", type=float)
    ap.add_argument("out", type=Path)
    ap.add_argument("--root", type=Path, default=Path("/work/suite-data"))
    args = ap.parse_args()
    fixed = args.root / args.case / "fixed.ome.zarr"
    levels = [lvl.geometry for lvl in open_multiscale(str(fixed)).levels]
    refined(levels, args.factor, args.min_gain).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
