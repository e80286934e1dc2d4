"""Killing ``ngff-dreg register`` (SIGKILL) at different points, then rerunning it.

The CLI runs as a subprocess against the shared test cluster's scheduler.
Each kill is triggered by what the run has written so far: the global
checkpoint (→ inside the block stage), the field arrays of the final scene
(→ during the field write), the resampled image's group (→ during the
resample). After each kill the output must be recognisably incomplete or
complete and valid; the rerun must finish it with the undisturbed answer and
must not touch what an earlier run had finished.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_helpers import (
    cli_command,
    field_difference,
    small_schedule,
    subprocess_env,
    tree_files,
    wait_for,
)

from ngff_dreg.errors import IncompleteOutputError, NgffDregError
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _global_done(out: Path) -> bool:
    f = out / "checkpoints" / "zarr.json"
    try:
        return '"global"' in f.read_text()
    except OSError:
        return False


def _field_started(out: Path) -> bool:
    return (out / "coordinateTransformations" / "fixed_to_moving").exists()


def _resample_started(out: Path) -> bool:
    return (out / "view" / "moving_resampled").exists()


TRIGGERS = {"block": _global_done, "field": _field_started, "resample": _resample_started}


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sched") / "schedule.toml"
    small_schedule().save(path)
    return str(path)


def _command(pair: Any, out: Path, schedule: str, scheduler: str) -> list[str]:
    return cli_command(
        "register", pair.fixed, pair.moving, "-o", str(out), "--schedule", schedule,
        "--scheduler", scheduler, "--resample", "--no-progress",
    )


@pytest.mark.parametrize("phase", ["block", "field", "resample"])
def test_killed_run_is_recognisable_and_a_rerun_completes_it(
    small_pair: Any, reference_run: Any, dask_client: Any, schedule_file: str,
    tmp_path: Path, phase: str,
) -> None:
    _, reference = reference_run
    out = tmp_path / "out.zarr"
    cmd = _command(small_pair, out, schedule_file, dask_client.scheduler.address)
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        hit = wait_for(lambda: TRIGGERS[phase](out) or proc.poll() is not None, timeout=240,
                       poll=0.005)
        assert hit and proc.poll() is None, f"run ended before the {phase} phase: " + (
            proc.stdout.read() if proc.stdout else "")
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    time.sleep(0.5)  # let the scheduler release the dead client's tasks

    state = output_status(str(out))
    if phase in ("block", "field"):
        assert state == "incomplete", state
        with pytest.raises(IncompleteOutputError):
            read_transform(str(out))
    else:
        # The output as a whole is incomplete until the resampled image is written...
        assert state == "incomplete", state
        # ...the half-written image has no multiscale metadata yet: unreadable, not wrong.
        with pytest.raises(NgffDregError):
            open_multiscale(str(out / "view" / "moving_resampled"))
    finished_before = {
        k: v for k, v in tree_files(out).items()
        if k.startswith("coordinateTransformations") or k.startswith("checkpoints/stage")
    } if phase == "resample" else {}

    rerun = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "(resumed)" in rerun.stdout  # the global stage at least came from the checkpoint
    assert output_status(str(out)) == "complete"
    tx = read_transform(str(out))
    assert field_difference(tx, reference.transforms.transform, small_pair) < 1e-3
    image = open_multiscale(str(out / "view" / "moving_resampled"))
    assert image.levels[0].shape == (48, 48, 48)
    after = tree_files(out)
    for key, data in finished_before.items():  # nothing finished earlier was rewritten
        assert after.get(key) == data, key
    warped = np.asarray(
        __import__("zarr").open_array(
            str(out / "view" / "moving_resampled" / image.levels[0].path))[:]
    )
    assert np.isfinite(warped).all() and float(np.ptp(warped)) > 0
