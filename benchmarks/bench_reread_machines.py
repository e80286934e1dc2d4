"""Input re-read between machines: placement by machine and the chunk exchange, on moto S3.

For a pair (``mni``: the 1 mm MRI pair; ``mniup``: the MNI template upsampled to
``--edge``³, 512 by default; see ``data.py``) uploaded to a moto S3 server
started here, this runs the default ``ngff_dreg.register`` on 2, 4 and 8
simulated machines: a ``LocalCluster`` of one-thread worker processes, each
with its own temporary directory, so each worker has a host cache of its own
(:func:`ngff_dreg.io.storage.chunk_cache.machine_identity`), as one worker per
host would. Three variants each:

* **off**: ``cluster.locality`` and ``cluster.chunk-exchange`` false (blocks
  prefer a worker each by slab of the block grid, each machine fetches what
  its blocks need, as before this change);
* **placement**: ``cluster.locality`` only (one contiguous group of blocks per
  machine);
* **exchange**: both (the defaults): a machine missing a chunk asks the worker
  that fetched it (:mod:`ngff_dreg.io.storage.chunk_exchange`).

The re-read is taken from **the S3 server's own log** (moto's request log,
one line per request with its status): input chunk bytes the server sent
(each logged GET of an object, times its size) over the distinct bytes (each
object read at least once, once). The store layer's own figure
(``RegistrationResult.io``, summed over every process) is printed beside it.
The inputs are not sharded, so every chunk GET is a whole object (a ranged
``206`` answer would be counted apart, and is reported).

Byte and request counts do not depend on the machine's load; wall times do,
and the machine these ran on was shared: they are printed but are not results.

Examples::

    python benchmarks/bench_reread_machines.py --pair mni
    python benchmarks/bench_reread_machines.py --pair mniup --edge 512 --machines 2,4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_io import INPUTS, Moto, _env, storage_options  # noqa: E402

VARIANTS = {
    "off": {"DASK_NGFF_DREG__CLUSTER__LOCALITY": "false",
            "DASK_NGFF_DREG__CLUSTER__CHUNK_EXCHANGE": "false"},
    "placement": {"DASK_NGFF_DREG__CLUSTER__LOCALITY": "true",
                  "DASK_NGFF_DREG__CLUSTER__CHUNK_EXCHANGE": "false"},
    "exchange": {"DASK_NGFF_DREG__CLUSTER__LOCALITY": "true",
                 "DASK_NGFF_DREG__CLUSTER__CHUNK_EXCHANGE": "true"},
}

#: A request line of werkzeug's log, as moto's server writes it.
LOG_LINE = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')
#: Colours werkzeug puts around some lines.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LoggedMoto(Moto):
    """A moto S3 server in its own process, its request log written to a file."""

    def __init__(self, log: Path) -> None:
        super().__init__(log)
        self.log = log

    def upload_sized(self, local: Path, bucket: str, prefix: str) -> dict[str, int]:
        """Upload a folder; returns ``{"/bucket/key": size}`` of its objects."""
        client = self.client()
        sizes = {}
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local)}"
                client.upload_file(str(path), bucket, key)
                sizes[f"/{bucket}/{key}"] = path.stat().st_size
        return sizes

    def log_size(self) -> int:
        assert self._log_file is not None
        self._log_file.flush()
        return self.log.stat().st_size

    def requests_since(self, offset: int) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of the requests logged after byte ``offset``."""
        time.sleep(0.5)  # the last lines
        with self.log.open("rb") as f:
            f.seek(offset)
            text = ANSI.sub("", f.read().decode("utf-8", "replace"))
        return [(m.group(1), m.group(2).split("?", 1)[0], int(m.group(3)))
                for m in LOG_LINE.finditer(text)]


def child(fixed: str, moving: str, out: str, endpoint: str, machines: int,
          tmp_root: str) -> None:
    """One registration on ``machines`` one-thread workers, each with its own temporary dir."""
    from distributed import Client, LocalCluster

    from ngff_dreg.cluster import worker_machines
    from ngff_dreg.pipeline import register
    from ngff_dreg.worker import worker_spawn_settings

    with worker_spawn_settings():
        cluster = LocalCluster(n_workers=machines, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(machines, timeout=300)
        for i, address in enumerate(sorted(client.scheduler_info()["workers"])):
            tmp = Path(tmp_root) / f"machine{i}"
            tmp.mkdir(parents=True, exist_ok=True)
            client.run(setattr, tempfile, "tempdir", str(tmp), workers=[address])
        seen = len(worker_machines(client))
        t0 = time.perf_counter()
        result = register(fixed, moving, out, client=client, overwrite=True, progress=False,
                          storage_options=storage_options(endpoint))
        seconds = time.perf_counter() - t0
        received = client.run(_received)
    print(json.dumps({"seconds": seconds, "io": result.io, "machines_seen": seen,
                      "received_from_peers": sum(received.values()),
                      "stages": [{"name": r.name, "fixed_level": r.fixed_level,
                                  "blocks": None if r.status is None else int(r.status.size)}
                                 for r in result.levels]}))


def _received() -> int:
    from ngff_dreg.io.storage.chunk_exchange import counts

    return counts()["received"]


def server_figures(requests: list[tuple[str, str, int]], sizes: dict[str, int],
                   prefixes: dict[str, str]) -> dict[str, Any]:
    """Input chunk GETs, bytes sent, distinct bytes and re-read, from the server's log."""
    gets: Counter[str] = Counter()
    ranged = 0
    for method, path, status in requests:
        if method != "GET" or path.endswith("zarr.json") or path not in sizes:
            continue
        if not any(path.startswith(p) for p in prefixes.values()):
            continue
        if status == 206:
            ranged += 1
        elif status == 200:
            gets[path] += 1
    fetched = sum(n * sizes[p] for p, n in gets.items())
    distinct = sum(sizes[p] for p in gets)
    return {"server_chunk_gets": sum(gets.values()), "server_fetched_mb": fetched / 1e6,
            "server_distinct_mb": distinct / 1e6,
            "server_reread": fetched / distinct if distinct else float("nan"),
            "server_ranged_gets": ranged}


def store_figures(io: dict[str, Any], urls: dict[str, str]) -> dict[str, float]:
    """The same from the store layer (``RegistrationResult.io``)."""
    images = io["run"]["images"]
    fetched = sum(images[urls[k]]["chunk_bytes"] for k in INPUTS)
    distinct = sum(images[urls[k]]["distinct_bytes"] for k in INPUTS)
    return {"store_chunk_gets": sum(images[urls[k]]["chunk_requests"] for k in INPUTS),
            "store_fetched_mb": fetched / 1e6, "store_distinct_mb": distinct / 1e6,
            "store_reread": fetched / distinct}


def run_case(pair: Any, moto: LoggedMoto, bucket: str, urls: dict[str, str],
             sizes: dict[str, int], machines: int, variant: str, work: Path) -> dict[str, Any]:
    out = str(work / f"out-{machines}-{variant}.zarr")
    tmp_root = tempfile.mkdtemp(prefix=f"machines-{machines}-{variant}-", dir=work)
    cmd = [sys.executable, __file__, "--child", urls["fixed"], urls["moving"], out,
           "--endpoint", moto.endpoint, "--n", str(machines), "--tmp-root", tmp_root]
    load = os.getloadavg()
    offset = moto.log_size()
    proc = subprocess.run(cmd, env=_env(VARIANTS[variant]), capture_output=True, text=True)
    load_after = os.getloadavg()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    prefixes = {k: "/" + urls[k].split("://", 1)[1].rstrip("/") + "/" for k in INPUTS}
    figs = server_figures(moto.requests_since(offset), sizes, prefixes)
    figs.update(store_figures(res["io"], urls))
    figs.update(seconds=res["seconds"], load_before=load[0], load_after=load_after[0],
                machines_seen=res["machines_seen"],
                received_from_peers=res["received_from_peers"], stages=res["stages"])
    return {"pair": pair.name, "machines": machines, "variant": variant, "figures": figs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="mni")
    ap.add_argument("--edge", type=int, default=None)
    ap.add_argument("--machines", default="2,4,8")
    ap.add_argument("--variants", default="off,placement,exchange")
    ap.add_argument("--work", default="/tmp/ngff-dreg-bench")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--child", nargs=3, metavar=("FIXED", "MOVING", "OUT"))
    ap.add_argument("--endpoint", default=None)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--tmp-root", default=None)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.endpoint, args.n, args.tmp_root)
        return
    from data import make_pair

    work = Path(args.work)
    pair = make_pair(args.pair, work, edge=args.edge)
    runs = work / "reread-machines"
    runs.mkdir(parents=True, exist_ok=True)
    moto = LoggedMoto(runs / f"moto-{pair.name}.log")
    rows = []
    try:
        bucket = f"reread-{int(time.time() * 1000) % 10**9}"
        moto.client().create_bucket(Bucket=bucket)
        sizes: dict[str, int] = {}
        urls = {}
        for k in INPUTS:
            sizes.update(moto.upload_sized(Path(getattr(pair, k)), bucket, f"{k}.ome.zarr"))
            urls[k] = f"s3://{bucket}/{k}.ome.zarr"
        for n in [int(v) for v in args.machines.split(",")]:
            for variant in args.variants.split(","):
                rows.append(run_case(pair, moto, bucket, urls, sizes, n, variant, runs))
                f = rows[-1]["figures"]
                print(f"done {pair.name} {n} machines {variant}: server re-read "
                      f"{f['server_reread']:.2f}, store {f['store_reread']:.2f}", flush=True)
    finally:
        moto.stop()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict[str, Any]]) -> None:
    """A markdown table of the runs, with each variant's re-read over the "off" one."""
    cols = [("server_chunk_gets", "chunk GETs (server log)", "{:.0f}"),
            ("server_fetched_mb", "MB sent", "{:.1f}"),
            ("server_distinct_mb", "distinct MB", "{:.1f}"),
            ("server_reread", "re-read (server)", "{:.2f}"),
            ("store_reread", "re-read (store layer)", "{:.2f}"),
            ("server_ranged_gets", "ranged GETs", "{:.0f}"),
            ("received_from_peers", "pieces from peers", "{:.0f}"),
            ("machines_seen", "machines seen", "{:.0f}"),
            ("seconds", "wall s (shared machine)", "{:.0f}"),
            ("load_before", "load before", "{:.1f}"),
            ("load_after", "load after", "{:.1f}")]
    print("\n| pair | machines | variant | " + " | ".join(c[1] for c in cols)
          + " | re-read / off |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    off = {(r["pair"], r["machines"]): r["figures"]["server_reread"]
           for r in rows if r["variant"] == "off"}
    for r in rows:
        f = r["figures"]
        base = off.get((r["pair"], r["machines"]))
        ratio = f"{f['server_reread'] / base:.2f}" if base else "–"
        print(f"| {r['pair']} | {r['machines']} | {r['variant']} | "
              + " | ".join(c[2].format(f[c[0]]) for c in cols) + f" | {ratio} |")


if __name__ == "__main__":
    main()
