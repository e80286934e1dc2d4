"""A chunk that cannot be read stops ``register``; a rerun once it can be read resumes.

Before, a chunk of a block stage's level that kept failing to read (an HTTP
503 on every attempt, an I/O error, a corrupt chunk) made the blocks reading
it ``FAILURE`` blocks, which the reduction filled in from their neighbours:
the output looked complete, but the field there was a guess. Now the run
stops with a :class:`~ngff_dreg.errors.StoreReadError` naming the image, the
level and the chunk key, the output stays incomplete, and a rerun with the
same arguments after the store is fixed resumes the finished stages and
gives the same transform as an undisturbed run. A read that fails a few
times and then works gives the undisturbed result.

The global stage here runs on level 1, which the client reads whole while
planning; the faults are on level 0, which only the block tasks read (on
the workers).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import field_difference, small_schedule, via_endpoint

from ngff_dreg.errors import CorruptChunkError, StoreReadError
from ngff_dreg.io.omezarr.output_state import Checkpoints, output_status
from ngff_dreg.pipeline import register
from ngff_dreg.schedule import GlobalStage, Schedule

pytestmark = [pytest.mark.cluster]

KEY = "0/c/0/0/0"
"""Level 0's corner chunk: 8 of the 27 blocks read it (with their halos), so
before, the other 19 registered and the run "succeeded", 8 blocks filled in."""

#: Set on the client only: the run applies them on the workers, which do the reads.
FAST_RETRIES = {"io.read-attempts": 2, "io.read-backoff": 0.05}
#: The same for a CLI run (dask's environment variables).
FAST_RETRIES_ENV = {"DASK_NGFF_DREG__IO__READ_ATTEMPTS": "2",
                    "DASK_NGFF_DREG__IO__READ_BACKOFF": "0.05"}


def coarse_global_schedule() -> Schedule:
    """:func:`small_schedule` with the global stage on level 1 (24³)."""
    return Schedule(GlobalStage(level=1), small_schedule().stages)


def _register(fixed: str, moving: str, out: str, client: Any, **kwargs: Any) -> Any:
    return register(fixed, moving, out, schedule=coarse_global_schedule(), client=client,
                    progress=False, **kwargs)


@pytest.fixture(scope="module")
def clean_run(small_pair: Any, tmp_path_factory: pytest.TempPathFactory,
              dask_client: Any) -> Any:
    """The undisturbed run with :func:`coarse_global_schedule`."""
    out = str(tmp_path_factory.mktemp("unreadable_ref") / "ref.zarr")
    return _register(small_pair.fixed, small_pair.moving, out, dask_client)


def _copy(small_pair: Any, tmp_path: Path) -> tuple[str, str]:
    fixed, moving = str(tmp_path / "fixed.ome.zarr"), str(tmp_path / "moving.ome.zarr")
    shutil.copytree(small_pair.fixed, fixed)
    shutil.copytree(small_pair.moving, moving)
    return fixed, moving


def _stages_done(out: str) -> set[str]:
    manifest = Checkpoints(out, None).read() or {}
    return set(manifest.get("stages", {}))


@pytest.mark.parametrize("cache", [True, False])
def test_an_unreadable_chunk_stops_the_run_and_a_rerun_resumes_to_the_clean_result(
    small_pair: Any, clean_run: Any, dask_client: Any, tmp_path: Path,
    ngff_config: Any, cache: bool,
) -> None:
    """Rerun in the same session, on the same client.

    Without a chunk cache the run has no per-run token, so the rerun's block
    tasks have the same keys as the failed ones: the scheduler must have
    forgotten those, or the rerun gets the old error back.
    """
    if not cache:
        ngff_config({"io.chunk-cache-mb": 0})
    fixed, moving = _copy(small_pair, tmp_path)
    chunk = Path(fixed) / KEY
    stored = chunk.read_bytes()
    chunk.unlink()
    os.symlink(chunk.name, chunk)   # a loop: every open fails with ELOOP, in every process
    out = str(tmp_path / "out.zarr")
    ngff_config(FAST_RETRIES)
    with pytest.raises(StoreReadError) as info:
        _register(fixed, moving, out, dask_client)
    msg = str(info.value)
    assert msg.startswith(f"{fixed}: cannot read chunk '{KEY}' of level '0' (OSError: "), msg
    assert "Too many levels of symbolic links" in msg and "gave up after 2 attempts" in msg
    assert info.value.key == KEY
    # Nothing looks finished but the global stage's checkpoint.
    assert output_status(out) == "incomplete"
    assert _stages_done(out) == {"global"}, _stages_done(out)

    chunk.unlink()
    chunk.write_bytes(stored)      # the store is fixed
    result = _register(fixed, moving, out, dask_client)
    assert output_status(out) == "complete"
    assert [rep.resumed for rep in result.levels] == [True, False]
    diff = field_difference(result.transforms.transform, clean_run.transforms.transform,
                            small_pair)
    assert diff < 1e-6, diff


def test_a_corrupt_chunk_stops_the_run_naming_it(
    small_pair: Any, clean_run: Any, dask_client: Any, tmp_path: Path,
) -> None:
    fixed, moving = _copy(small_pair, tmp_path)
    chunk = Path(moving) / KEY
    chunk.write_bytes(b"\x28\xb5\x2f\xfd garbage, not a zstd frame" * 8)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(CorruptChunkError) as info:
        _register(fixed, moving, out, dask_client)
    msg = str(info.value)
    assert msg.startswith(f"{moving}: chunk '{KEY}' of level '0' cannot be decoded"), msg
    assert output_status(out) == "incomplete"
    assert "stage_0" not in _stages_done(out)


# ----------------------------------------------------------------------------- S3
@pytest.mark.s3
@pytest.mark.slow
def test_http_503_on_every_read_of_one_chunk_stops_the_run_then_resumes(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, clean_run: Any,
    small_pair: Any, dask_client: Any, tmp_path: Path, ngff_config: Any,
) -> None:
    bucket, fixed, moving = s3_pair
    path = f"/{bucket}/pair/fixed.ome.zarr/{KEY}"
    proxy = fault_proxy(s3_server.endpoint_url, mode="error", probability=1.0,
                        match=lambda line: line.split("?")[0] == f"GET {path}")
    ngff_config(FAST_RETRIES)
    out = str(tmp_path / "out.zarr")
    opts = via_endpoint(s3_server, proxy.endpoint_url)
    with pytest.raises(StoreReadError) as info:
        _register(fixed, moving, out, dask_client, storage_options=opts)
    msg = str(info.value)
    assert msg.startswith(f"{fixed}: cannot read chunk '{KEY}' of level '0'"), msg
    assert "gave up after 2 attempts" in msg
    assert "testing" not in msg   # the credentials of the storage options
    assert proxy.faults[path] >= 2
    assert output_status(out) == "incomplete"

    proxy.mode = "none"            # the store recovers
    result = _register(fixed, moving, out, dask_client, storage_options=opts)
    assert output_status(out) == "complete"
    assert [rep.resumed for rep in result.levels] == [True, False]
    diff = field_difference(result.transforms.transform, clean_run.transforms.transform,
                            small_pair)
    assert diff < 1e-3, diff


@pytest.mark.s3
@pytest.mark.slow
def test_a_chunk_failing_a_few_times_then_working_gives_the_clean_result(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, clean_run: Any,
    small_pair: Any, dask_client: Any, tmp_path: Path, ngff_config: Any,
) -> None:
    bucket, fixed, moving = s3_pair
    path = f"/{bucket}/pair/fixed.ome.zarr/{KEY}"
    # More failures in a row than s3fs's own retries absorb: the reader's retry must run.
    proxy = fault_proxy(s3_server.endpoint_url, mode="error", fail_first=8,
                        match=lambda line: line.split("?")[0] == f"GET {path}")
    out = str(tmp_path / "out.zarr")
    ngff_config({"io.read-backoff": 0.05})
    result = _register(fixed, moving, out, dask_client,
                       storage_options=via_endpoint(s3_server, proxy.endpoint_url))
    assert proxy.faults[path] == 8
    assert output_status(out) == "complete"
    diff = field_difference(result.transforms.transform, clean_run.transforms.transform,
                            small_pair)
    assert diff < 1e-3, diff


@pytest.mark.slow
def test_the_cli_fails_with_one_error_line_naming_the_chunk(small_pair: Any, tmp_path: Path
                                                            ) -> None:
    import subprocess

    from rel_helpers import cli_command, subprocess_env

    fixed, moving = _copy(small_pair, tmp_path)
    chunk = Path(fixed) / KEY
    chunk.unlink()
    os.symlink(chunk.name, chunk)
    schedule = tmp_path / "schedule.toml"
    coarse_global_schedule().save(schedule)
    out = str(tmp_path / "out.zarr")
    proc = subprocess.run(
        cli_command("register", fixed, moving, "-o", out, "--schedule", str(schedule),
                    "--scheduler", "local:1", "--no-progress"),
        capture_output=True, text=True, timeout=600, env=subprocess_env(**FAST_RETRIES_ENV),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ngff-dreg: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"{fixed}: cannot read chunk '{KEY}' of level '0'" in errors[0], errors[0]
    # No traceback from the CLI (the workers' dask logs still report the failed tasks).
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr[-3000:]
    assert output_status(out) == "incomplete"
