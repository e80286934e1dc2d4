"""Where a default run's fetched bytes go: by stage, level, worker and cause.

Runs one default registration of a benchmark pair (as ``bench_io.py`` does,
local storage: the counts equal S3's) with ``ngff-dreg.io.trace-dir`` set, so each
process logs its fetches (:mod:`ngff_dreg.io.storage.store_stats`), then sorts every
fetched byte into one cause:

* ``first``: the first fetch of that piece (chunk or byte range) in the run;
* ``cross``: a piece another process had already fetched (cross-worker
  duplication);
* ``evicted``: fetched again by the same process after its chunk cache
  dropped it;
* ``inflight``: fetched again by the same process while its own first fetch
  was still under way (two threads missed together);
* ``uncached``: fetched again by the same process through a store without a
  chunk cache (or one that did not keep it).

Examples::

    python benchmarks/io_breakdown.py --pair mni
    python benchmarks/io_breakdown.py --pair mniup --edge 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_io import _env  # noqa: E402

from ngff_dreg.io.storage.store_stats import _array_of  # noqa: E402

CAUSES = ("first", "cross", "evicted", "inflight", "uncached")


def run_traced(fixed: str, moving: str, out: str, workers: int, trace: Path,
               extra_env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Run ``bench_io.py --child`` with tracing; ``(client pid, its JSON answer)``."""
    if trace.exists():
        shutil.rmtree(trace)
    env = _env({"DASK_NGFF_DREG__IO__TRACE_DIR": str(trace), **extra_env})
    cmd = [sys.executable, str(HERE / "bench_io.py"), "--child", fixed, moving, out,
           "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    answer = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    return proc.pid, answer


def load_events(trace: Path, client_pid: int, labels: list[str]) -> list[dict[str, Any]]:
    """Every fetch of every process, labelled with its stage and sorted by time."""
    events = []
    for path in sorted(trace.glob("*.jsonl")):
        proc = path.stem
        is_client = proc.split("-")[0] == str(client_pid)
        # The client's first mark is the run's reset_counts; workers start at "open".
        seg = -1 if is_client else 0
        causes: dict[tuple[str, str], list[str]] = defaultdict(list)
        rows = [json.loads(ln) for ln in path.read_text().splitlines()]
        for ev in rows:
            if ev[1] == "cause":
                causes[(ev[2], ev[3])].append(ev[5])
        for ev in rows:
            if ev[1] == "take":
                seg += 1
                continue
            if ev[1] != "fetch" or ev[4] is None or seg < 0:
                continue
            if ev[3].rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
                continue
            queue = causes.get((ev[2], ev[3]))
            events.append({
                "t": ev[0], "proc": "client" if is_client else proc, "image": ev[2],
                "piece": ev[3], "bytes": ev[4],
                "stage": labels[seg] if seg < len(labels) else f"after-{seg}",
                "cause": queue.pop(0) if queue else None,
            })
    events.sort(key=lambda e: e["t"])
    return events


def classify(events: list[dict[str, Any]]) -> None:
    """Set each event's ``why`` (one of :data:`CAUSES`)."""
    seen_by: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        k = (e["image"], e["piece"])
        procs = seen_by[k]
        if not procs:
            e["why"] = "first"
        elif e["proc"] in procs:
            e["why"] = e["cause"] if e["cause"] in ("evicted", "inflight") else "uncached"
        else:
            e["why"] = "cross"
        procs.add(e["proc"])


def short(image: str, names: dict[str, str]) -> str:
    """``fixed``/``moving`` for the inputs, else the image's last path part."""
    return names.get(image, image.rstrip("/").rsplit("/", 1)[-1])


def tables(events: list[dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    """Bytes by (stage, image, level) x cause, and by stage x process."""
    by_level: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_proc: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in events:
        key = (e["stage"], short(e["image"], names), _array_of(e["piece"]))
        by_level[key][e["why"]] += e["bytes"]
        by_level[key]["gets"] += 1
        by_proc[(e["stage"], e["proc"])][e["why"]] += e["bytes"]
        by_proc[(e["stage"], e["proc"])]["gets"] += 1
    return {"by_level": {"|".join(k): dict(v) for k, v in by_level.items()},
            "by_proc": {"|".join(k): dict(v) for k, v in by_proc.items()}}


def print_tables(result: dict[str, Any]) -> None:
    """Markdown tables of :func:`tables`, in MB."""
    for name, head in (("by_level", "stage | image | level"), ("by_proc", "stage | process")):
        print(f"\n| {head} | GETs | fetched MB | " + " | ".join(CAUSES) + " |")
        print("|" + "---|" * (len(head.split("|")) + 2 + len(CAUSES)))
        tot: dict[str, int] = defaultdict(int)
        for key, row in result[name].items():
            fetched = sum(row.get(c, 0) for c in CAUSES)
            for c in (*CAUSES, "gets"):
                tot[c] += row.get(c, 0)
            print("| " + " | ".join(key.split("|")) + f" | {row['gets']} | {fetched / 1e6:.2f} | "
                  + " | ".join(f"{row.get(c, 0) / 1e6:.2f}" for c in CAUSES) + " |")
        fetched = sum(tot[c] for c in CAUSES)
        print("| total" + " |" * (len(head.split("|")) - 1) + f" | {tot['gets']} | "
              f"{fetched / 1e6:.2f} | " + " | ".join(f"{tot[c] / 1e6:.2f}" for c in CAUSES)
              + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="mni")
    ap.add_argument("--edge", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/ngff-dreg-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the run "
                    "(e.g. DASK_NGFF_DREG__IO__CHUNK_CACHE_MB=1024)")
    args = ap.parse_args()
    from data import make_pair

    work = Path(args.work)
    pair = make_pair(args.pair, work, edge=args.edge)
    extra = dict(kv.split("=", 1) for kv in args.env)
    trace = work / f"trace-{os.getpid()}"
    pid, answer = run_traced(str(pair.fixed), str(pair.moving), str(work / "io" / "out-trace.zarr"),
                             args.workers, trace, extra)
    labels = list(answer["io"]["stages"])
    events = load_events(trace, pid, labels)
    classify(events)
    names = {str(pair.fixed).rstrip("/"): "fixed", str(pair.moving).rstrip("/"): "moving"}
    result = tables(events, names)
    result["levels"] = answer["levels"]
    result["seconds"] = answer["seconds"]
    result["io_total"] = answer["io"]["run"]["total"]
    print(f"{args.pair}{args.edge or ''}, {args.workers} workers, stages {labels}, "
          f"levels {answer['levels']}, {answer['seconds']:.1f} s")
    print_tables(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    shutil.rmtree(trace, ignore_errors=True)


if __name__ == "__main__":
    main()
