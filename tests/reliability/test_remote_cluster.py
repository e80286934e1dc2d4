"""A cluster that does not share the client's filesystem.

A standalone ``dask scheduler`` and two ``dask worker`` processes, each in its
own empty working directory with its own ``TMPDIR``; inputs and output on S3
(moto). The ``ngff-dreg register`` CLI connects with ``--scheduler tcp://``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import (
    cli_command,
    field_difference,
    small_schedule,
    subprocess_env,
    truth_error,
    upload_pair,
    wait_for,
)

from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.s3]


@pytest.fixture
def standalone_cluster(tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """Scheduler + 2 workers as separate processes; yields (address, worker dirs)."""
    procs: list[subprocess.Popen[bytes]] = []
    sched_file = tmp_path / "scheduler.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
            cwd=tmp_path, env=subprocess_env(), stdout=(logs / "s.log").open("wb"),
            stderr=subprocess.STDOUT,
        ))
        assert wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, 0.1)
        address = json.loads(sched_file.read_text())["address"]
        dirs = []
        for i in range(2):
            wdir = tmp_path / f"worker{i}"
            (wdir / "tmp").mkdir(parents=True)
            dirs.append(wdir)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                 "--local-directory", str(wdir / "tmp")],
                cwd=wdir, env=subprocess_env(TMPDIR=str(wdir / "tmp")),
                stdout=(logs / f"w{i}.log").open("wb"), stderr=subprocess.STDOUT,
            ))
        from distributed import Client

        with Client(address, set_as_default=False, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        yield address, dirs
    finally:
        for p in reversed(procs):  # workers first, then the scheduler
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def test_cli_on_a_standalone_cluster_with_s3_data(
    s3_server: Any, standalone_cluster: tuple[str, list[Path]], reference_run: Any,
    small_pair: Any, tmp_path: Path,
) -> None:
    address, worker_dirs = standalone_cluster
    _, reference = reference_run
    bucket = s3_server.create_bucket()
    fixed, moving = upload_pair(s3_server, bucket)
    out = s3_server.url(bucket, "result.zarr")
    sched = tmp_path / "schedule.toml"
    small_schedule().save(sched)
    client_dir = tmp_path / "client"  # the client runs elsewhere too
    client_dir.mkdir()
    run = subprocess.run(
        cli_command("register", fixed, moving, "-o", out, "--schedule", str(sched),
                    "--scheduler", address, "--endpoint-url", s3_server.endpoint_url,
                    "--resample", "--no-progress"),
        cwd=client_dir, env=subprocess_env(), capture_output=True, text=True, timeout=400,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "transform written to" in run.stdout
    opts = s3_server.storage_options()
    assert output_status(out, opts) == "complete"
    tx = read_transform(out, opts)
    diff = field_difference(tx, reference.transforms.transform, small_pair)
    assert diff < 1e-3, diff
    assert truth_error(tx, small_pair) < 1.2
    # Nothing landed on the workers' or the client's disks but scratch space.
    for d in [*worker_dirs, client_dir]:
        stray = [p for p in d.rglob("*.zarr")] + [p for p in d.rglob("zarr.json")]
        assert not stray, stray
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "result.zarr/view/moving_resampled/zarr.json" in keys
