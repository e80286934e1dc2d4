"""Store I/O of a default registration: re-read factors, metadata GETs, wall time.

For one benchmark pair (``mni``: the 1 mm MRI pair; ``big``/``mniup`` at any
``--edge``, see ``data.py``), on local disk and on a moto S3 server started
here (a separate process on 127.0.0.1), this runs the default
``ngff_dreg.register`` on a ``local:<workers>`` cluster twice:

* **baseline**: ``ngff-dreg.io.chunk-cache-mb: 0`` (no chunk cache, no metadata
  handed to the workers: every block reads every chunk it touches);
* **memory**: ``ngff-dreg.io.host-cache-mb: 0`` (the per-process chunk cache in
  memory only, no host cache shared by the workers of a machine);
* **cached**: the defaults (per-process chunk cache, metadata read once, and
  the host cache: each chunk fetched once per machine).

Each run is a child process whose settings come from ``DASK_NGFF_DREG__...``
environment variables; its client applies them on its workers. The
figures come from the store layer (``RegistrationResult.io``,
:mod:`ngff_dreg.io.storage.store_stats`), summed over the client and every worker:

* ``inputs fetched / distinct``: chunk bytes fetched from the fixed and moving
  images over distinct chunk bytes (1.0 = every chunk or range once);
* ``inputs fetched / levels used``: over the stored bytes of the input levels
  the run read (every chunk object of those levels);
* ``all fetched / distinct``: the same with the run's own fields read back
  (checkpoints, the output field during the inverse);
* metadata GETs per metadata object, requests, wall time, and the peak
  resident memory of the busiest worker.

Byte and request counts do not depend on the machine's load; the wall times
do (the machine is shared), and are printed with the load average.

Examples::

    python benchmarks/bench_io.py --pair mni                 # local + S3, baseline + cached
    python benchmarks/bench_io.py --pair big --edge 256 --storage local
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

INPUTS = ("fixed", "moving")
MODES = {"baseline": {"DASK_NGFF_DREG__IO__CHUNK_CACHE_MB": "0"},
         "memory": {"DASK_NGFF_DREG__IO__HOST_CACHE_MB": "0"},
         "cached": {}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]),
    })
    env.update(extra)
    return env


class Moto:
    """A moto S3 server in its own process.

    ``log``: write the server's request log (werkzeug's, one line per
    request) to this file; ``None``: discard its output.
    """

    def __init__(self, log: Path | None = None) -> None:
        self.port = _free_port()
        self.log = log
        setup = ("import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO); "
                 if log is not None else "")
        code = (setup + "from moto.server import ThreadedMotoServer; import time; "
                f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={self.port}, "
                f"verbose={log is not None}); s.start(); time.sleep(10**7)")
        self._log_file = log.open("wb") if log is not None else None
        out = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=_env({}),
                                     stdout=out, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto did not start")

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def upload(self, local: Path, bucket: str, prefix: str) -> str:
        client = self.client()
        for path in sorted(local.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
        return f"s3://{bucket}/{prefix}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()


def storage_options(endpoint: str | None) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def child(fixed: str, moving: str, out: str, endpoint: str | None, workers: int) -> None:
    """One registration; prints its I/O summary, wall time and peak worker RSS as JSON.

    The cluster is the one ``client="local:<workers>"`` starts
    (:func:`ngff_dreg.cluster.client_context`), made here so the workers' peak
    resident memory can be asked for after the run.
    """
    from contextlib import ExitStack

    from ngff_dreg.cluster import client_context
    from ngff_dreg.pipeline import register

    with ExitStack() as stack:
        client = client_context(f"local:{workers}", stack)
        t0 = time.perf_counter()
        result = register(fixed, moving, out, client=client, overwrite=True,
                          progress=False, storage_options=storage_options(endpoint))
        seconds = time.perf_counter() - t0
        peaks = client.run(_peak_rss_mb)
    print(json.dumps({"seconds": seconds, "io": result.io,
                      "peak_worker_rss_mb": max(peaks.values()),
                      "levels": [[r.fixed_level, r.moving_level] for r in result.levels],
                      "stages": [{"name": r.name, "fixed_level": r.fixed_level,
                                  "seconds": r.seconds,
                                  "blocks": None if r.status is None else int(r.status.size)}
                                 for r in result.levels]}))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def level_bytes(local_image: Path, levels: set[str]) -> int:
    """Stored bytes of the chunk objects of ``levels`` of a local image."""
    total = 0
    for lv in levels:
        for p in (local_image / lv).rglob("*"):
            if p.is_file() and p.name != "zarr.json":
                total += p.stat().st_size
    return total


def figures(io: dict[str, Any], urls: dict[str, str], local: dict[str, Path],
            levels_used: dict[str, set[str]]) -> dict[str, float]:
    """The benchmark's ratios from one run's ``RegistrationResult.io``."""
    images = io["run"]["images"]
    fetched = sum(images[urls[k]]["chunk_bytes"] for k in INPUTS)
    distinct = sum(images[urls[k]]["distinct_bytes"] for k in INPUTS)
    used = sum(level_bytes(local[k], levels_used[k]) for k in INPUTS)
    meta_req = sum(images[urls[k]]["metadata_requests"] for k in INPUTS)
    meta_obj = sum(images[urls[k]]["metadata_objects"] for k in INPUTS)
    total = io["run"]["total"]
    return {
        "inputs_requests": sum(images[urls[k]]["requests"] for k in INPUTS),
        "inputs_chunk_gets": sum(images[urls[k]]["chunk_requests"] for k in INPUTS),
        "inputs_fetched_mb": fetched / 1e6,
        "inputs_distinct_mb": distinct / 1e6,
        "inputs_levels_used_mb": used / 1e6,
        "inputs_reread": fetched / distinct,
        "inputs_vs_levels_used": fetched / used,
        "metadata_gets": meta_req,
        "metadata_objects": meta_obj,
        "metadata_per_object": meta_req / meta_obj,
        "all_fetched_mb": total["chunk_bytes"] / 1e6,
        "all_distinct_mb": total["distinct_bytes"] / 1e6,
        "all_reread": total["reread"],
        "all_requests": total["requests"],
    }


def run_case(pair: Any, storage: str, mode: str, moto: Moto | None, workers: int,
             work: Path) -> dict[str, Any]:
    """One run of the pair (``storage`` local or s3, ``mode`` baseline or cached)."""
    local = {"fixed": Path(pair.fixed), "moving": Path(pair.moving)}
    endpoint = None
    urls = {k: str(v) for k, v in local.items()}
    if storage == "s3":
        assert moto is not None
        bucket = f"bench-{int(time.time() * 1000) % 10**9}"
        moto.client().create_bucket(Bucket=bucket)
        urls = {k: moto.upload(local[k], bucket, f"{k}.ome.zarr") for k in INPUTS}
        endpoint = moto.endpoint
    out = str(work / f"out-{storage}-{mode}.zarr")
    env = _env(MODES[mode])
    cmd = [sys.executable, __file__, "--child", urls["fixed"], urls["moving"], out,
           "--workers", str(workers)] + (["--endpoint", endpoint] if endpoint else [])
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    levels = _used_levels(res["io"], urls)
    figs = figures(res["io"], urls, local, levels)
    figs.update(seconds=res["seconds"], load_before=load,
                peak_worker_rss_mb=res.get("peak_worker_rss_mb", float("nan")),
                stages=res.get("stages"))
    return {"storage": storage, "mode": mode, "figures": figs, "io": res["io"]}


def _used_levels(io: dict[str, Any], urls: dict[str, str]) -> dict[str, set[str]]:
    """Which levels each input image was read at (from the per-stage level keys)."""
    out: dict[str, set[str]] = {k: set() for k in INPUTS}
    for k in INPUTS:
        for lv in io["run"]["images"][urls[k]].get("arrays", []):
            out[k].add(lv)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="mni")
    ap.add_argument("--edge", type=int, default=None)
    ap.add_argument("--storage", default="local,s3")
    ap.add_argument("--modes", default="baseline,cached")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/ngff-dreg-bench")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--child", nargs=3, metavar=("FIXED", "MOVING", "OUT"))
    ap.add_argument("--endpoint", default=None)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.endpoint, args.workers)
        return
    from data import make_pair

    work = Path(args.work)
    pair = make_pair(args.pair, work, edge=args.edge)
    storages = args.storage.split(",")
    moto = Moto() if "s3" in storages else None
    rows = []
    try:
        for storage in storages:
            for mode in args.modes.split(","):
                rows.append(run_case(pair, storage, mode, moto, args.workers, work / "io"))
                print(f"done {storage} {mode}: {json.dumps(rows[-1]['figures'])}", flush=True)
    finally:
        if moto is not None:
            moto.stop()
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict[str, Any]], args: Any) -> None:
    """A markdown table of the runs, with ratios against the baseline of the same storage."""
    cols = [("inputs_chunk_gets", "input chunk GETs", "{:.0f}"),
            ("inputs_fetched_mb", "input MB fetched", "{:.1f}"),
            ("inputs_distinct_mb", "distinct MB", "{:.1f}"),
            ("inputs_levels_used_mb", "MB of levels used", "{:.1f}"),
            ("inputs_reread", "fetched / distinct", "{:.2f}"),
            ("inputs_vs_levels_used", "fetched / levels used", "{:.2f}"),
            ("metadata_gets", "metadata GETs", "{:.0f}"),
            ("metadata_per_object", "per metadata object", "{:.2f}"),
            ("all_fetched_mb", "all MB fetched (fields too)", "{:.1f}"),
            ("all_reread", "all fetched / distinct", "{:.2f}"),
            ("peak_worker_rss_mb", "peak worker RSS MB", "{:.0f}"),
            ("seconds", "wall s", "{:.1f}"),
            ("load_before", "load avg before", "{:.1f}")]
    print(f"\n{args.pair}{args.edge or ''}, {args.workers} workers\n")
    print("| storage | run | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    base = {r["storage"]: r["figures"] for r in rows if r["mode"] == "baseline"}
    for r in rows:
        f = r["figures"]
        print(f"| {r['storage']} | {r['mode']} | "
              + " | ".join(c[2].format(f[c[0]]) for c in cols) + " |")
    for r in rows:
        b = base.get(r["storage"])
        if b is None or r["mode"] == "baseline":
            continue
        f = r["figures"]
        print(f"\n{r['storage']}: cached / baseline: input bytes "
              f"{f['inputs_fetched_mb'] / b['inputs_fetched_mb']:.2f}, input GETs "
              f"{f['inputs_chunk_gets'] / b['inputs_chunk_gets']:.2f}, metadata GETs "
              f"{f['metadata_gets'] / b['metadata_gets']:.2f}, all bytes "
              f"{f['all_fetched_mb'] / b['all_fetched_mb']:.2f}, wall "
              f"{f['seconds'] / b['seconds']:.2f}")


if __name__ == "__main__":
    main()
