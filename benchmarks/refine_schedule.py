"""Write a suite case's default schedule with its refinement stage's settings changed.

The default schedule ends with a gated refinement stage (``when_similarity =
"intensity"``; :func:`ngff_dreg.schedule._refinement`): on the last stage's
level, at ``REFINE_SPACING`` times its control spacing, its block fits kept only
where they lower the held-out data term by ``REFINE_MIN_GAIN``. This writes the
default with that stage's spacing factor, gain, field spacing, iterations or
sample stride changed, or without it (``--none``), for the measurements in
RESULTS.md::

    python benchmarks/refine_schedule.py mni-svf-fine refine.toml --factor 0.6
    python benchmarks/accuracy_suite.py --cases mni-svf-fine --methods schedule \\
        --schedule refine.toml --label refine

The case must exist under ``--root`` (default ``/work/suite-data``; the suite writes it).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.schedule import REFINE_SPACING, Schedule


def variant(levels: list, factor: float | None = None, min_gain: float | None = None,
            field_factor: float | None = None, iterations: int | None = None,
            stride: int | None = None, none: bool = False) -> Schedule:
    """``Schedule.default(levels)`` with its refinement stage changed (or dropped)."""
    sched = Schedule.default(levels)
    last = sched.stages[-1]
    if last.when_similarity is None:
        raise SystemExit("this case's default schedule has no refinement stage")
    if none:
        sched.stages.pop()
        return sched
    opts = dict(last.method_options)
    if factor is not None:
        before = float(sched.stages[-2].method_options["control_point_spacing"])
        opts["control_point_spacing"] = round(before * factor, 6)
        assert abs(before * REFINE_SPACING - float(last.method_options["control_point_spacing"])
                   ) < 1e-3
    if min_gain is not None:
        opts["min_gain"] = min_gain
    if iterations is not None:
        opts["iterations"] = iterations
    if stride is not None:
        opts["shrink_factors"] = [stride]
    sched.stages[-1] = dataclasses.replace(
        last, method_options=opts,
        field_spacing_factor=last.field_spacing_factor if field_factor is None
        else field_factor)
    return sched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("out", type=Path)
    ap.add_argument("--factor", type=float, help="control spacing / the previous stage's")
    ap.add_argument("--min-gain", type=float)
    ap.add_argument("--field-factor", type=float, help="field spacing, voxels of the level")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--stride", type=int, help="sample lattice stride, voxels")
    ap.add_argument("--none", action="store_true", help="drop the refinement stage")
    ap.add_argument("--root", type=Path, default=Path("/work/suite-data"))
    args = ap.parse_args()
    fixed = args.root / args.case / "fixed.ome.zarr"
    levels = [lvl.geometry for lvl in open_multiscale(str(fixed)).levels]
    variant(levels, args.factor, args.min_gain, args.field_factor, args.iterations,
            args.stride, args.none).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
