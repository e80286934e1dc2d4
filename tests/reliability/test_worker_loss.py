"""Losing a worker process in the middle of a block stage."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_helpers import field_difference, small_schedule, wait_for

from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.pipeline import register

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_run_survives_a_killed_worker_with_the_same_answer(
    small_pair: Any, reference_run: Any, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    _, reference = reference_run
    killed: dict[str, Any] = {}

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)

        def killer() -> None:
            def busy_with_blocks() -> bool:
                for addr, keys in client.processing().items():
                    if any("register-block" in str(k) for k in keys) and addr in pids:
                        killed["addr"], killed["pid"] = addr, pids[addr]
                        killed["tasks"] = [str(k) for k in keys]
                        return True
                return False

            if wait_for(busy_with_blocks, timeout=120, poll=0.01):
                os.kill(killed["pid"], signal.SIGKILL)

        def on_stage_done(report: Any) -> None:
            if report.name == "global":  # the block stage starts right after this
                t = threading.Thread(target=killer, daemon=True)
                t.start()
                killed["thread"] = t

        result = register(
            small_pair.fixed, small_pair.moving, str(tmp_path / "out.zarr"),
            schedule=small_schedule(), client=client, progress=False,
            on_stage_done=on_stage_done,
        )
        killed["thread"].join(5)
        assert "pid" in killed, "no worker was killed mid-stage"
        # The nanny restarted the killed process; the scheduler saw it go.
        assert wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=60)
        assert killed["addr"] not in client.scheduler_info()["workers"] or (
            client.run(os.getpid).get(killed["addr"]) != killed["pid"]
        )

    assert output_status(str(tmp_path / "out.zarr")) == "complete"
    status = np.asarray(result.status)
    report = result.transforms.report
    # Every block counted exactly once in the reduction.
    assert status.shape == np.asarray(reference.status).shape == (3, 3, 3)
    assert report["n_blocks"] == status.size == 27
    assert report["n_success"] == int((status == BlockRegStatus.SUCCESS).sum())
    np.testing.assert_array_equal(status, reference.status)
    diff = field_difference(result.transforms.transform, reference.transforms.transform,
                            small_pair)
    assert diff < 1e-3, diff
