"""One writer per output: a lease with a heartbeat, beside the output.

A run holds its output with a small JSON object at ``<output>.lease`` (a
sibling, so that wiping the output for ``overwrite`` never removes it):

* **Taking it.** The object is *created only if absent*: on a local disk a
  complete temporary file is hard-linked to the lease's name (``link`` fails
  when the name exists, atomically); on an object store with a conditional
  put (S3's ``If-None-Match: *``, through fsspec's ``pipe_file(...,
  mode="create")``). A store without one gets a put after a check, read back
  to see who won (a race of a few milliseconds remains there; it is logged).
* **Heartbeat.** While the run goes on, a thread rewrites the lease every
  ``ngff-dreg.output.lease-heartbeat`` seconds with a new beat count. A
  holder that finds someone else's token in it has lost the lease
  (:meth:`OutputLease.check` then raises) and writes nothing more.
* **Another run.** A run that finds a live lease with the *same* arguments
  (the run fingerprint) waits for it to go, then resumes the finished output
  (which usually means reading it back). One with *other* arguments is
  refused with :class:`~ngff_dreg.errors.OutputInUseError`, naming the
  holder's host, process id and start time.
* **A dead holder.** A run with other arguments is refused at once when the
  holder's last heartbeat is recent; an older one is watched until it beats
  (refused) or goes stale (taken over). A lease is stale when its beat has not changed for
  ``ngff-dreg.output.lease-stale-after`` seconds of the observer's own clock
  (no clock is compared between machines), at once when its holder ran on
  this host and its process is gone, and at once when its last heartbeat is
  more than ten stale periods old. Taking over a stale lease is itself
  exclusive: the one run that creates ``<lease>.takeover-<token>-<beat>``
  deletes the stale lease, then all compete to create a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from ngff_dreg import config
from ngff_dreg.errors import OutputInUseError, StoreAccessError
from ngff_dreg.io.storage.urls import is_remote, local_path, redact_text, redact_url

__all__ = [
    "LEASE_SUFFIX",
    "LeaseRecord",
    "OutputLease",
    "hold_output",
    "lease_url",
    "read_lease",
]

logger = logging.getLogger(__name__)

#: The lease of output ``<url>`` is the object ``<url><LEASE_SUFFIX>``.
LEASE_SUFFIX = ".lease"


def lease_url(output: str) -> str:
    """The URL of the lease of ``output`` (a sibling object)."""
    return str(output).rstrip("/") + LEASE_SUFFIX


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The content of a lease object.

    Attributes
    ----------
    token:
        Names one holding (a new one each time a run takes the lease).
    fingerprint:
        The holder's run fingerprint (same arguments: same fingerprint).
    host, pid:
        Where the holder runs.
    started:
        When it took the lease (seconds since the epoch).
    heartbeat:
        Its last heartbeat (seconds since the epoch, the holder's clock).
    beat:
        Heartbeats so far (a live holder changes it every ``interval``).
    interval:
        The holder's heartbeat interval, in seconds.

    """

    token: str
    fingerprint: str
    host: str
    pid: int
    started: float
    heartbeat: float
    beat: int = 0
    interval: float = 10.0

    def to_bytes(self) -> bytes:
        """The JSON the lease object holds."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        """Parse a lease object (``ValueError`` when it is not one)."""
        try:
            d = json.loads(data)
            return cls(
                token=str(d["token"]), fingerprint=str(d["fingerprint"]), host=str(d["host"]),
                pid=int(d["pid"]), started=float(d["started"]), heartbeat=float(d["heartbeat"]),
                beat=int(d.get("beat", 0)), interval=float(d.get("interval", 10.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an ngff-dreg lease: {exc}") from exc

    def describe(self) -> str:
        """``host H, pid P, started T`` and the age of the last heartbeat."""
        age = time.time() - self.heartbeat
        return (f"host {self.host}, pid {self.pid}, started {_iso(self.started)} "
                f"(last heartbeat {age:.0f} s ago)")

    def pid_gone(self) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return False  # this process (another lease object of it) is alive
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


# ------------------------------------------------------------------ backends
class _Backend(Protocol):
    """The four operations a lease needs on the objects beside an output."""

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` only if absent; False if it exists."""

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name`` (``None``: absent)."""

    def write(self, name: str, data: bytes) -> None:
        """Replace ``name`` by ``data`` (readers see the old or the new bytes)."""

    def delete(self, name: str) -> None:
        """Remove ``name`` (absent is fine)."""


class _LocalBackend:
    """Objects as files; exclusive create by hard-linking a finished temporary file."""

    def _tmp(self, name: str) -> str:
        return f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

    def _write_tmp(self, name: str, data: bytes) -> str:
        tmp = self._tmp(name)
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        tmp = self._write_tmp(name, data)
        try:
            os.link(tmp, name)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def read(self, name: str) -> bytes | None:
        try:
            with open(name, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        os.replace(self._write_tmp(name, data), name)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class _FsspecBackend:
    """Objects on an fsspec filesystem; a conditional put where the filesystem has one."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        import fsspec.core

        self.fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self.conditional = True

    def _path(self, name: str) -> str:
        return str(self.fs._strip_protocol(name))

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        if self.conditional:
            try:
                self.fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError, ValueError) as exc:
                logger.warning("%s: the store has no conditional put (%s); a lease race of a "
                               "few milliseconds remains", redact_url(name), exc)
                self.conditional = False
            except OSError as exc:  # S3 answers 412 (PreconditionFailed) when the key exists
                if "precondition" in str(exc).lower() or "412" in str(exc):
                    return False
                raise
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return self.read(name) == data  # the last put won; see who that was

    def read(self, name: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None
        return data

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))


def _backend(url: str, storage_options: Mapping[str, Any] | None) -> tuple[_Backend, str]:
    """The backend of the objects beside ``url`` and the lease's name in it."""
    name = lease_url(url)
    if not is_remote(url):
        return _LocalBackend(), os.fspath(local_path(name))
    try:
        return _FsspecBackend(url, storage_options), name
    except (ImportError, ValueError, TypeError) as exc:
        raise StoreAccessError(f"{redact_url(url)}: cannot open the output's lease: "
                               f"{type(exc).__name__}: {redact_text(str(exc))}") from exc


def read_lease(
    output: str, storage_options: Mapping[str, Any] | None = None
) -> LeaseRecord | None:
    """The lease held on ``output`` (``None``: nobody holds it, or it is unreadable)."""
    backend, name = _backend(output, storage_options)
    data = backend.read(name)
    if data is None:
        return None
    try:
        return LeaseRecord.from_bytes(data)
    except ValueError:
        return None


# ------------------------------------------------------------------ the lease
class OutputLease:
    """A run's lease on its output (see the module docstring).

    Parameters
    ----------
    output:
        The output URL.
    storage_options:
        fsspec options of the output.
    fingerprint:
        The run's fingerprint (:meth:`ngff_dreg.run.RunInputs.fingerprint`).
    heartbeat, stale_after, max_wait:
        Seconds; default: the settings ``ngff-dreg.output.lease-*``.

    """

    def __init__(
        self,
        output: str,
        storage_options: Mapping[str, Any] | None,
        fingerprint: str,
        *,
        heartbeat: float | None = None,
        stale_after: float | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.output = output
        self.fingerprint = fingerprint
        self.interval = config.lease_heartbeat() if heartbeat is None else float(heartbeat)
        self.stale_after = (
            config.lease_stale_after() if stale_after is None else float(stale_after))
        self.max_wait = config.lease_max_wait() if max_wait is None else float(max_wait)
        self._backend, self.name = _backend(output, storage_options)
        self.record: LeaseRecord | None = None
        self.waited_for: LeaseRecord | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- reading
    def holder(self) -> LeaseRecord | None:
        """The lease's current content (``None``: absent or not yet readable)."""
        data = self._backend.read(self.name)
        if data is None:
            return None
        try:
            return LeaseRecord.from_bytes(data)
        except ValueError:
            raise OutputInUseError(
                f"{redact_url(self.name)} is not an ngff-dreg lease; remove it if no run "
                f"writes to {redact_url(self.output)}"
            ) from None

    def _refused(self, holder: LeaseRecord, why: str) -> OutputInUseError:
        return OutputInUseError(
            f"{redact_url(self.output)} is being written by another ngff-dreg run ({why}): "
            f"{holder.describe()}; its lease is {redact_url(self.name)}",
            host=holder.host, pid=holder.pid, started=_iso(holder.started),
        )

    # -------------------------------------------------------------- taking it
    def acquire(self) -> LeaseRecord:
        """Take the lease, waiting for a live same-arguments holder; start the heartbeat.

        Raises
        ------
        OutputInUseError
            A live holder with other arguments, or a same-arguments holder
            still alive after ``max_wait`` seconds.

        """
        t0 = time.monotonic()
        seen: dict[tuple[str, int], float] = {}  # (token, beat) -> when first seen
        announced = False
        while True:
            now = time.time()
            mine = LeaseRecord(uuid.uuid4().hex, self.fingerprint, socket.gethostname(),
                               os.getpid(), now, now, 0, self.interval)
            if self._backend.create(self.name, mine.to_bytes()):
                self.record = mine
                self._start_heartbeat()
                logger.info("lease on %s taken (%s)", redact_url(self.output), mine.describe())
                return mine
            holder = self.holder()
            if holder is None:  # released between our create and our read
                continue
            first = seen.setdefault((holder.token, holder.beat), time.monotonic())
            if (holder.pid_gone() or time.monotonic() - first > self.stale_after
                    or now - holder.heartbeat > 10 * max(self.stale_after, holder.interval)):
                logger.warning("lease on %s is stale (%s): taking the output over",
                               redact_url(self.output), holder.describe())
                self._take_over(holder)
                continue
            if holder.fingerprint != self.fingerprint:
                if now - holder.heartbeat <= self.stale_after or holder.beat != self._beat_of(
                        holder, seen):
                    raise self._refused(holder, "with other arguments")
                # an old heartbeat (or a skewed clock): watch it until it beats or goes stale
                time.sleep(min(self.stale_after / 4, 1.0))
                continue
            if time.monotonic() - t0 > self.max_wait:
                raise self._refused(holder, f"with the same arguments, still after "
                                            f"{self.max_wait:g} s of waiting")
            if not announced:
                logger.warning("%s is being written by a run with the same arguments (%s); "
                               "waiting for it to finish", redact_url(self.output),
                               holder.describe())
                announced = True
            self.waited_for = holder
            time.sleep(min(max(holder.interval, 0.01), self.stale_after / 4, 1.0))

    @staticmethod
    def _beat_of(holder: LeaseRecord, seen: Mapping[tuple[str, int], float]) -> int:
        """The first beat of ``holder``'s token this run saw (a change means it is alive)."""
        beats = [beat for token, beat in seen if token == holder.token]
        return min(beats) if beats else holder.beat

    def _take_over(self, stale: LeaseRecord) -> None:
        """Remove a stale lease, if this run is the one to create its takeover marker."""
        marker = f"{self.name}.takeover-{stale.token}-{stale.beat}"
        if not self._backend.create(marker, uuid.uuid4().hex.encode()):
            time.sleep(0.05)  # another run is taking it over
            return
        try:
            current = self.holder()
            if current is not None and (current.token, current.beat) == (stale.token, stale.beat):
                self._backend.delete(self.name)
        finally:
            self._backend.delete(marker)

    # -------------------------------------------------------------- holding it
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_loop, name="ngff-dreg-lease",
                                        daemon=True)
        self._thread.start()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # a flaky store: try again next time
                logger.warning("lease heartbeat on %s failed: %s", redact_url(self.output),
                               redact_text(str(exc)))
            if self.lost:
                return

    def beat(self) -> None:
        """One heartbeat: rewrite the lease with a new beat, unless it was lost."""
        with self._lock:
            if self.record is None or self.lost:
                return
            try:
                current = self.holder()
            except OutputInUseError:
                current = None
            if current is None or current.token != self.record.token:
                self.lost = True
                logger.error("lease on %s lost to %s", redact_url(self.output),
                             current.describe() if current else "nobody (it was removed)")
                return
            self.record = replace(self.record, heartbeat=time.time(), beat=self.record.beat + 1)
            self._backend.write(self.name, self.record.to_bytes())

    def check(self) -> None:
        """Raise :class:`OutputInUseError` if this run lost its lease (it must stop writing)."""
        if not self.lost:
            return
        holder = None
        with contextlib.suppress(Exception):
            holder = self.holder()
        raise OutputInUseError(
            f"{redact_url(self.output)}: this run's lease was taken over "
            f"({holder.describe() if holder else 'by nobody'}); it stopped writing",
            host=holder.host if holder else "?", pid=holder.pid if holder else -1,
            started=_iso(holder.started) if holder else "?",
        )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
            self._thread = None
        with self._lock:
            if self.record is None:
                return
            try:
                current = self.holder()
            except OutputInUseError:
                current = None
            if current is not None and current.token == self.record.token:
                self._backend.delete(self.name)
            self.record = None


@contextlib.contextmanager
def hold_output(
    output: str,
    storage_options: Mapping[str, Any] | None,
    fingerprint: str,
    **kwargs: Any,
) -> Iterator[OutputLease]:
    """Hold the lease on ``output`` for the ``with`` block (see :class:`OutputLease`)."""
    lease = OutputLease(output, storage_options, fingerprint, **kwargs)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
