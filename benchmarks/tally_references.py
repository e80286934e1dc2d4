"""Tally a suite run of the default against each case's newest elastix and ANTs SyN rows.

A suite run with ``--methods default`` (no references rerun) gives the
default's rows only; this puts beside each case the newest elastix and ANTs
SyN rows among the result files given with ``--refs`` (in that order, later
files win), and the elastix wall time from ``--quiet`` files (runs on a quiet
machine: other files' reference timings were taken under load). It prints a
Markdown table and, per split, how many cases reach the better reference and
the median ratio::

    python benchmarks/tally_references.py accuracy-results/issue20-tuning-2026-12-07c.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent / "accuracy-results"
REFS = ("suite-2026-12-02b.json", "suite-2026-12-02d.json",
        "issue20-references-old-cases-2026-12-06.json", "issue20-tuning-2026-12-07b.json",
        "issue20-validation-2026-12-07b.json", "issue20-references-tuning-2026-12-08.json",
        "issue20-references-validation-2026-12-08.json",
        "issue20-flair-tuning-references-2026-12-08.json")
QUIET = ("issue20-tuning-2026-12-07b.json", "issue20-validation-2026-12-07b.json")


def _rows(path: Path) -> dict[str, Any]:
    cases: dict[str, Any] = json.loads(path.read_text())["cases"]
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="suite JSON files of the default")
    ap.add_argument("--refs", nargs="*", default=[str(HERE / f) for f in REFS])
    ap.add_argument("--quiet", nargs="*", default=[str(HERE / f) for f in QUIET])
    ap.add_argument("--before", default=None, help="suite JSON of an earlier default")
    args = ap.parse_args()
    refs: dict[str, dict[str, Any]] = {}
    for f in args.refs:
        for case, c in _rows(Path(f)).items():
            for r in c["results"]:
                if r["method"] in ("elastix", "ants"):
                    refs.setdefault(case, {})[r["method"]] = r
    elastix_s: dict[str, float] = {}
    for f in args.quiet:
        for case, c in _rows(Path(f)).items():
            for r in c["results"]:
                if r["method"] == "elastix" and r.get("seconds"):
                    elastix_s[case] = float(r["seconds"])
    before: dict[str, float] = {}
    if args.before:
        for case, c in _rows(Path(args.before)).items():
            for r in c["results"]:
                if r["method"] == "default":
                    before[case] = float(r["p95_vox"])
    print("| case | set | p95 | mean | better ref | its p95 | p95 / ref | before | wall s "
          "| elastix s (quiet) | wall / elastix | det J min | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {}
    for path in args.runs:
        for case, c in _rows(path).items():
            d = next(r for r in c["results"] if r["method"] == "default")
            name, best = min(refs[case].items(), key=lambda kv: kv[1]["p95_vox"])
            ratio = d["p95_vox"] / best["p95_vox"]
            ratios.setdefault(c["split"], []).append(ratio)
            el = elastix_s.get(case)
            b = before.get(case)
            wall = d["seconds"]
            print(f"| {case} | {c['split']} | {d['p95_vox']:.3f} | {d['mean_vox']:.3f} | {name} "
                  f"| {best['p95_vox']:.3f} | {ratio:.2f} | {'–' if b is None else f'{b:.3f}'} "
                  f"| {wall:.1f} | {'–' if el is None else f'{el:.1f}'} "
                  f"| {'–' if el is None else f'{wall / el:.2f}'} "
                  f"| {d['jacobian_min']:.3f} | {d.get('peak_tree_mb', 0):.0f} |")
    for split, rs in ratios.items():
        print(f"{split}: {sum(r <= 1.0 for r in rs)} of {len(rs)} at or below the better "
              f"reference; median p95 / reference {np.median(rs):.2f}")


if __name__ == "__main__":
    main()
