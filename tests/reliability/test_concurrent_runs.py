"""Two ``ngff-dreg register`` processes into one output (issue #23, item 4).

Real CLI subprocesses on the shared multi-process test cluster, a small 2-D
pair, heartbeats every 0.3 s (stale after 10 s: a loaded machine never fakes
a dead holder). A second run with the same arguments waits for
the first and ends with the finished result, untouched; one with other
arguments is refused, naming the holder; a killed holder is taken over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import cli_command, subprocess_env, tree_files, wait_for

from ngff_dreg.demo import DemoPair, make_demo, point_errors
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.io.storage.lease import lease_url, read_lease
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

LEASE_ENV = {"DASK_NGFF_DREG__OUTPUT__LEASE_HEARTBEAT": "0.3",
             "DASK_NGFF_DREG__OUTPUT__LEASE_STALE_AFTER": "10"}


@pytest.fixture(scope="module")
def pair_2d(tmp_path_factory: pytest.TempPathFactory) -> DemoPair:
    d = tmp_path_factory.mktemp("pair2d_lease")
    return make_demo(d, synthetic=True, ndim=2, size=96, max_displacement_voxels=2.0, chunks=32)


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sched_lease") / "schedule.toml"
    Schedule(GlobalStage(level=0), [BlockStage(
        level=0, block_size=32, overlap=0.5, method="bspline", method_options={"mesh_size": 3},
        field_spacing_factor=2)]).save(path)
    return str(path)


def _command(pair: DemoPair, out: Path, schedule: str, scheduler: str, *extra: str) -> list[str]:
    return cli_command("register", pair.fixed, pair.moving, "-o", str(out), "--schedule",
                       schedule, "--scheduler", scheduler, "--no-progress", *extra)


def _start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=subprocess_env(**LEASE_ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _kill(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(30)


def _scene(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_files(out).items()
            if k.startswith("coordinateTransformations") or k == "zarr.json"}


GATED_RUN = """
import json, logging, sys, time, pathlib
from ngff_dreg import register
logging.basicConfig(level=logging.WARNING)
fixed, moving, out, schedule, address, gate, opts = sys.argv[1:]
def hold(report):  # a real run that keeps the output until the test lets it go
    while not pathlib.Path(gate).exists():
        time.sleep(0.05)
register(fixed, moving, out, schedule=schedule, client=address, progress=False,
         on_stage_done=hold, storage_options=json.loads(opts) or None)
"""


def _gated_run(pair: DemoPair, out: Path | str, schedule: str, address: str, gate: Path,
               opts: dict[str, Any] | None = None) -> subprocess.Popen[str]:
    """A real registration process into ``out`` that holds it until ``gate`` exists."""
    import json
    import sys

    return _start([sys.executable, "-c", GATED_RUN, pair.fixed, pair.moving, str(out), schedule,
                   address, str(gate), json.dumps(opts or {})])


def _fs_scene(url: str, opts: dict[str, Any] | None) -> dict[str, bytes]:
    """The output's transform objects and root metadata, by key (any store)."""
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url, **(opts or {}))
    keys = [k for k in fs.find(root) if "/coordinateTransformations/" in k
            or k.endswith(root.rstrip("/") + "/zarr.json")]
    return {k: fs.cat_file(k) for k in keys}


class _Lines:
    """The output of a process, read by a thread (to wait for one of its lines)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.text = ""
        self.proc = proc
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.text += line

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.thread.join(10)
        return code, self.text


def test_same_arguments_wait_then_end_with_the_finished_result(
    pair_2d: DemoPair, schedule_file: str, dask_client: Any, tmp_path: Path,
) -> None:
    out, gate = tmp_path / "out.zarr", tmp_path / "go"
    address = dask_client.scheduler.address
    first = _gated_run(pair_2d, out, schedule_file, address, gate)
    second: subprocess.Popen[str] | None = None
    try:
        assert wait_for(lambda: Path(lease_url(str(out))).exists() or first.poll() is not None,
                        timeout=120)
        time.sleep(1.0)
        assert first.poll() is None, "the first run ended before the second started"
        second = _start(_command(pair_2d, out, schedule_file, address))
        lines = _Lines(second)
        assert wait_for(lambda: "same arguments" in lines.text or second.poll() is not None,
                        timeout=120)
        gate.touch()  # the first run may finish now; the second is waiting for it
        code1, log1 = _finish(first)
        assert code1 == 0, log1
        finished = _scene(out)
        code2, log2 = lines.finish()
    finally:
        gate.touch()
        _kill(first, *([second] if second else []))
    assert code2 == 0, log2
    assert "same arguments" in log2 and f"pid {first.pid}" in log2  # it waited for the first
    assert output_status(str(out)) == "complete"
    assert _scene(out) == finished  # the finished transform was not rewritten
    assert not Path(lease_url(str(out))).exists()  # released by both
    err = point_errors(read_transform(str(out)), pair_2d.truth, pair_2d.fixed_geometry)
    assert err["mean_vox"] < 1.0, err


def test_other_arguments_are_refused_naming_the_holder(
    pair_2d: DemoPair, schedule_file: str, dask_client: Any, tmp_path: Path,
) -> None:
    out, gate = tmp_path / "out.zarr", tmp_path / "go"
    address = dask_client.scheduler.address
    first = _gated_run(pair_2d, out, schedule_file, address, gate)
    try:
        assert wait_for(lambda: Path(lease_url(str(out))).exists() or first.poll() is not None,
                        timeout=120)
        other = subprocess.run(_command(pair_2d, out, schedule_file, address, "--threshold",
                                        "0.01"),
                               env=subprocess_env(**LEASE_ENV), capture_output=True, text=True,
                               timeout=240)
        still_running = first.poll() is None
        gate.touch()
        code1, log1 = _finish(first)
    finally:
        gate.touch()
        _kill(first)
    assert still_running
    assert other.returncode == 2, other.stdout + other.stderr
    msg = other.stdout + other.stderr
    assert "being written by another ngff-dreg run (with other arguments)" in msg
    assert f"pid {first.pid}" in msg and socket.gethostname() in msg and "started 20" in msg
    assert code1 == 0, log1
    assert output_status(str(out)) == "complete"  # the refused run wrote nothing


def test_a_killed_holder_is_taken_over(
    pair_2d: DemoPair, schedule_file: str, dask_client: Any, tmp_path: Path,
) -> None:
    out, gate = tmp_path / "out.zarr", tmp_path / "go"
    cmd = _command(pair_2d, out, schedule_file, dask_client.scheduler.address)
    first = _gated_run(pair_2d, out, schedule_file, dask_client.scheduler.address, gate)
    try:
        assert wait_for(lambda: Path(lease_url(str(out))).exists() or first.poll() is not None,
                        timeout=120)
        held = read_lease(str(out))
        assert held is not None and held.pid == first.pid
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        _kill(first)
    time.sleep(0.5)  # let the scheduler release the dead client's tasks
    t0 = time.monotonic()
    code, log = _finish(_start(cmd))
    assert code == 0, log
    assert "stale" in log  # taken over, not waited for
    assert output_status(str(out)) == "complete"
    assert time.monotonic() - t0 < 240


def test_same_arguments_on_s3_wait_then_end_with_the_finished_result(
    pair_2d: DemoPair, schedule_file: str, dask_client: Any, s3_server: Any, tmp_path: Path,
) -> None:
    """The same two runs into one output on moto S3 (the lease is a conditional put there)."""
    bucket = s3_server.create_bucket()
    opts = s3_server.storage_options()  # the output's (the inputs are local files)
    pair = pair_2d
    out = s3_server.url(bucket, "out.zarr")
    gate = tmp_path / "go"
    address = dask_client.scheduler.address
    first = _gated_run(pair, out, schedule_file, address, gate, opts)
    second: subprocess.Popen[str] | None = None
    try:
        assert wait_for(lambda: read_lease(out, opts) is not None or first.poll() is not None,
                        timeout=120, poll=0.2)
        second = _gated_run(pair, out, schedule_file, address, tmp_path, opts)  # no gate
        lines = _Lines(second)
        assert wait_for(lambda: "same arguments" in lines.text or second.poll() is not None,
                        timeout=120)
        gate.touch()
        code1, log1 = _finish(first)
        assert code1 == 0, log1
        finished = _fs_scene(out, opts)
        code2, log2 = lines.finish()
    finally:
        gate.touch()
        _kill(first, *([second] if second else []))
    assert code2 == 0, log2
    assert f"pid {first.pid}" in log2
    assert output_status(out, opts) == "complete"
    assert finished and _fs_scene(out, opts) == finished
    assert read_lease(out, opts) is None
    err = point_errors(read_transform(out, opts), pair.truth, pair.fixed_geometry)
    assert err["mean_vox"] < 1.0, err
