"""Helpers of the reliability tests (imported by ``conftest.py`` and the tests).

Fixtures (re-exported by ``conftest.py``)
---------------------------------------
``small_pair`` (session)
    A 48³ synthetic demo pair on local disk with a known truth
    (:func:`ngff_dreg.demo.make_demo`, seed 0).
``reference_run`` (session)
    The undisturbed registration of ``small_pair`` with :func:`small_schedule`
    on the shared ``dask_client``: ``(output_url, RegistrationResult)``.
``fault_proxy``
    ``fault_proxy(upstream, **rules) -> FaultProxy``: a fault-injecting HTTP
    proxy on 127.0.0.1 in front of an S3 endpoint (stopped at teardown).

Helpers
-------
:func:`small_schedule`, :func:`field_difference`, :func:`truth_error`,
:func:`free_port`, :func:`upload_pair`, :func:`subprocess_env`.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ngff_dreg.demo import DemoPair, make_demo, point_errors
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule

SIZE = 48
"""Edge of the synthetic demo pair (voxels)."""


def small_schedule() -> Schedule:
    """Global affine at level 0 then one B-spline block stage of 3x3x3 blocks."""
    return Schedule(
        GlobalStage(level=0),
        [
            BlockStage(
                level=0,
                block_size=16,
                overlap=0.5,
                method="bspline",
                method_options={"mesh_size": 3},
                field_spacing_factor=2,
            )
        ],
    )


def make_small_pair(where: str, storage_options: dict[str, Any] | None = None) -> DemoPair:
    """The reliability pair (identical voxels wherever it is written)."""
    return make_demo(
        where,
        synthetic=True,
        ndim=3,
        size=SIZE,
        max_displacement_voxels=2.0,
        chunks=16,
        storage_options=storage_options,
    )


def sample_points(pair: DemoPair, n: int = 300, seed: int = 0) -> np.ndarray:
    """Random physical points inside the fixed image (away from the border)."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(4, SIZE - 5, (n, 3))
    return pair.fixed_geometry.array_index_to_physical(idx)


def field_difference(a: Any, b: Any, pair: DemoPair) -> float:
    """Largest distance (mm = voxels here) between two fixed→moving transforms."""
    pts = sample_points(pair)
    return float(np.abs(a.transform_points(pts) - b.transform_points(pts)).max())


def truth_error(transform: Any, pair: DemoPair) -> float:
    """Mean point error (voxels) of ``transform`` against the known truth."""
    return float(point_errors(transform, pair.truth, pair.fixed_geometry)["mean_vox"])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: dummy AWS credentials, no proxies."""
    env = dict(os.environ)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(k, None)
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    """``python -m``-style invocation of the ``ngff-dreg`` CLI in this interpreter."""
    return [sys.executable, "-c", "from ngff_dreg.cli import main; main()", *args]


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory: pytest.TempPathFactory) -> DemoPair:
    """The 48³ demo pair on local disk."""
    return make_small_pair(str(tmp_path_factory.mktemp("reliability_pair")))


@pytest.fixture(scope="session")
def reference_run(
    small_pair: DemoPair, tmp_path_factory: pytest.TempPathFactory, dask_client: Any
) -> tuple[str, Any]:
    """Undisturbed run of the small pair on the shared cluster."""
    from ngff_dreg.pipeline import register

    out = str(tmp_path_factory.mktemp("reliability_ref") / "ref.zarr")
    result = register(
        small_pair.fixed,
        small_pair.moving,
        out,
        schedule=small_schedule(),
        client=dask_client,
        progress=False,
    )
    # The reference itself must be right, or "same answer" proves nothing.
    identity_err = truth_error(_identity(), small_pair)
    err = truth_error(result.transforms.transform, small_pair)
    assert err < 1.2 and identity_err > 2.5 * err, (err, identity_err)
    return out, result


def _identity() -> Any:
    from ngff_dreg.transforms import AffineTransform

    return AffineTransform.identity(3)


# --------------------------------------------------------------------------- fault proxy
@dataclass
class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that injects faults into some requests.

    Parameters
    ----------
    upstream:
        ``http://host:port`` of the real endpoint (moto).
    match:
        Requests whose ``"METHOD path"`` satisfies this predicate are eligible
        for faults (default: GETs of Zarr chunk keys ``.../c/...``).
    mode:
        ``"error"`` (HTTP 503 ``SlowDown``), ``"reset"`` (drop the connection
        without answering), ``"truncate"`` (send half of the body, then close),
        ``"delay"`` (answer after ``delay`` seconds) or ``"none"``.
    fail_first:
        Fault the first ``fail_first`` eligible requests *per path* (then pass
        them): deterministic, models a transient outage.
    probability:
        Additionally fault eligible requests with this probability (seeded).
    delay:
        Seconds of delay for ``mode="delay"``.

    Attributes
    ----------
    endpoint_url:
        Where clients should connect.
    requests, faults:
        Counters by path of forwarded requests and injected faults.

    """

    upstream: str
    match: Callable[[str], bool] = field(
        default=lambda line: line.startswith("GET ") and "/c/" in line
    )
    mode: str = "error"
    fail_first: int = 0
    probability: float = 0.0
    delay: float = 0.5
    seed: int = 0
    endpoint_url: str = ""
    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        host, port = self.upstream.split("://", 1)[1].split(":")
        self._up = (host, int(port))

    # -- control -------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Start serving in a daemon thread."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def total_faults(self) -> int:
        """Number of injected faults so far."""
        return sum(self.faults.values())

    # -- per request ---------------------------------------------------------
    def _decide(self, line: str, path: str) -> bool:
        with self._lock:
            self.requests[path] += 1
            if self.mode == "none" or not self.match(line):
                return False
            hit = self.faults[path] < self.fail_first or self._rng.random() < self.probability
            if hit:
                self.faults[path] += 1
            return hit

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        path = h.path.split("?", 1)[0]
        fault = self._decide(f"{h.command} {h.path}", path)
        if fault and self.mode == "reset":
            h.close_connection = True
            with _suppress():
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and self.mode == "error":
            msg = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>"
            )
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            h.wfile.write(msg)
            return
        if fault and self.mode == "delay":
            time.sleep(self.delay)
        conn = http.client.HTTPConnection(*self._up, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "connection"}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length", "date",
                                 "server"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        if fault and self.mode == "truncate" and h.command == "GET" and len(data) > 1:
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            with _suppress():
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory of started :class:`FaultProxy` objects, stopped at teardown."""
    made: list[FaultProxy] = []

    def make(upstream: str, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **kwargs).start()
        made.append(proxy)
        return proxy

    yield make
    for p in made:
        p.stop()


def upload_pair(s3_server: Any, bucket: str, prefix: str = "pair") -> tuple[str, str]:
    """Write the small pair to ``s3://bucket/prefix``; returns (fixed, moving) URLs."""
    opts = s3_server.storage_options()
    pair = make_small_pair(s3_server.url(bucket, prefix), storage_options=opts)
    return pair.fixed, pair.moving


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


def tree_files(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (for "nothing changed" checks)."""
    base = Path(root)
    return {
        str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def s3_pair(s3_server: Any) -> tuple[str, str, str]:
    """The small pair on moto: (bucket, fixed URL, moving URL)."""
    bucket = s3_server.create_bucket()
    fixed, moving = upload_pair(s3_server, bucket)
    return bucket, fixed, moving


def via_endpoint(s3_server: Any, endpoint: str) -> dict[str, Any]:
    """The moto server's storage options, pointed at ``endpoint`` (a fault proxy)."""
    opts = s3_server.storage_options()
    opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": endpoint}
    return opts

