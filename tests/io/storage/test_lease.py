"""The output lease: exclusive create, heartbeat, waiting, refusal, stale takeover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ngff_dreg.errors import NgffDregError, OutputInUseError
from ngff_dreg.io.storage.lease import (
    LeaseRecord,
    OutputLease,
    hold_output,
    lease_url,
    read_lease,
)

# short heartbeats; stale_after long enough that a live holder on a loaded machine
# (CI, shared cores) is never taken for dead; the stale tests shorten it
FAST = {"heartbeat": 0.1, "stale_after": 3.0, "max_wait": 30.0}
STALE = {**FAST, "stale_after": 0.6}


def _foreign_record(fingerprint: str, *, host: str = "elsewhere", pid: int = 1,
                    age: float = 0.0) -> LeaseRecord:
    now = time.time()
    return LeaseRecord("t" * 32, fingerprint, host, pid, now - age - 5, now - age, 3, 0.1)


def wait_for_beats(out: str, n: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        held = read_lease(out)
        if held is not None and held.beat >= n:
            return True
        time.sleep(0.05)
    return False


def test_lease_is_created_beside_the_output_and_removed_on_release(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with hold_output(out, None, "fp", **FAST) as lease:
        assert Path(lease_url(out)).is_file()
        held = read_lease(out)
        assert held is not None and held.pid == os.getpid() and held.fingerprint == "fp"
        assert held.host == socket.gethostname()
        assert wait_for_beats(out, 2)
        beats = read_lease(out)
        assert beats is not None and beats.token == held.token
        lease.check()  # still ours
    assert not Path(lease_url(out)).exists()
    assert read_lease(out) is None


def test_other_arguments_are_refused_naming_the_holder(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with hold_output(out, None, "fp-a", **FAST), pytest.raises(OutputInUseError) as info:
        OutputLease(out, None, "fp-b", **FAST).acquire()
    err = info.value
    assert isinstance(err, NgffDregError)
    assert err.host == socket.gethostname() and err.pid == os.getpid()
    msg = str(err)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert "other arguments" in msg and "started 20" in msg and ".lease" in msg


def test_same_arguments_wait_for_the_holder(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    first = OutputLease(out, None, "fp", **FAST)
    first.acquire()
    got: dict[str, Any] = {}

    def second() -> None:
        lease = OutputLease(out, None, "fp", **FAST)
        t0 = time.monotonic()
        lease.acquire()
        got["waited"] = time.monotonic() - t0
        got["waited_for"] = lease.waited_for
        lease.release()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()
    assert first.record is not None
    token = first.record.token
    first.release()
    thread.join(10)
    assert not thread.is_alive()
    assert got["waited"] >= 0.9
    assert got["waited_for"] is not None and got["waited_for"].token == token


def test_same_arguments_give_up_after_max_wait(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with (hold_output(out, None, "fp", **FAST),
          pytest.raises(OutputInUseError, match=r"same arguments, still after 0\.3 s")):
        OutputLease(out, None, "fp", **{**FAST, "max_wait": 0.3}).acquire()


def test_stale_heartbeat_is_taken_over_after_stale_after(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    # a heartbeat 1.5 s old (its clock): watched, not refused, until stale_after passes
    Path(lease_url(out)).write_bytes(_foreign_record("fp-other", age=1.5).to_bytes())
    lease = OutputLease(out, None, "fp", **STALE)
    t0 = time.monotonic()
    lease.acquire()  # other arguments, but dead: taken over, not refused
    waited = time.monotonic() - t0
    lease.release()
    assert STALE["stale_after"] <= waited < STALE["stale_after"] + 2.0


def test_an_old_heartbeat_or_a_dead_local_pid_is_stale_at_once(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(proc.stdout)
    for record in (_foreign_record("x", host=socket.gethostname(), pid=dead_pid),
                   _foreign_record("x", age=3600)):
        Path(lease_url(out)).write_bytes(record.to_bytes())
        lease = OutputLease(out, None, "fp", **{**FAST, "stale_after": 20.0})
        t0 = time.monotonic()
        lease.acquire()
        assert time.monotonic() - t0 < 10.0  # not the 20 s of stale_after
        lease.release()


def test_a_holder_whose_lease_was_taken_over_knows_it(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    lease = OutputLease(out, None, "fp", **FAST)
    lease.acquire()
    lease._stop.set()  # a stalled holder: no more heartbeats
    Path(lease_url(out)).write_bytes(_foreign_record("fp2", host="newhost", pid=42).to_bytes())
    lease.beat()
    with pytest.raises(OutputInUseError, match=r"taken over.*host newhost, pid 42"):
        lease.check()
    lease.release()  # leaves the new holder's lease alone
    held = read_lease(out)
    assert held is not None and held.host == "newhost"


def test_a_foreign_object_at_the_lease_name_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    Path(lease_url(out)).write_text(json.dumps({"hello": 1}))
    with pytest.raises(OutputInUseError, match="not an ngff-dreg lease"):
        OutputLease(out, None, "fp", **FAST).acquire()


def test_only_one_of_many_racing_processes_holds_the_lease(tmp_path: Path) -> None:
    """Real processes race for one lease; at every moment at most one holds it."""
    out = str(tmp_path / "out.zarr")
    log = tmp_path / "log"
    code = (
        "import sys, time\n"
        "from ngff_dreg.io.storage.lease import hold_output\n"
        f"with hold_output({out!r}, None, 'fp', heartbeat=0.1, stale_after=30, max_wait=600):\n"
        f"    open({str(log)!r}, 'a').write('in\\n')\n"
        "    time.sleep(0.3)\n"
        f"    open({str(log)!r}, 'a').write('out\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    for p in procs:
        assert p.wait(600) == 0  # a loaded machine takes long to import
    lines = log.read_text().split()
    assert lines == ["in", "out"] * 4  # never two holders at once


def wait_for_beats_s3(out: str, opts: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        held = read_lease(out, opts)
        if held is not None and held.beat >= 1:
            return True
        time.sleep(0.05)
    return False


def test_on_s3_the_lease_is_a_conditional_put(s3_server: Any) -> None:
    """On moto S3 the create is ``If-None-Match: *`` (412 when taken), not check-then-put."""
    bucket = s3_server.create_bucket()
    out, opts = s3_server.url(bucket, "out.zarr"), s3_server.storage_options()
    with hold_output(out, opts, "fp-a", **FAST) as lease:
        assert lease._backend.create(lease.name, b"x") is False  # refused by the store
        assert getattr(lease._backend, "conditional", False)  # a real conditional put
        assert wait_for_beats_s3(out, opts)
        held = read_lease(out, opts)
        assert held is not None and held.fingerprint == "fp-a"
        with pytest.raises(OutputInUseError, match=r"other arguments.*pid"):
            OutputLease(out, opts, "fp-b", **FAST).acquire()
    assert read_lease(out, opts) is None
    # a dead holder's lease on S3 is taken over once its beat stops
    s3_lease = _foreign_record("fp-c", age=1.5)
    lease = OutputLease(out, opts, "fp", **STALE)
    lease._backend.write(lease.name, s3_lease.to_bytes())
    lease.acquire()
    held = read_lease(out, opts)
    assert held is not None and held.fingerprint == "fp"
    lease.release()
