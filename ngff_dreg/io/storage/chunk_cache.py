"""A bounded per-process cache of fetched chunk bytes, and the store wrapper using it.

Block tasks that run in the same worker process share their halos: the
neighbour of a block needs many of the same storage chunks. Without a cache
every task fetches them again. :class:`CachingStore` keeps the *encoded* bytes
of what it fetched (whole chunk objects, or byte ranges such as the inner
chunks and the index of a shard) in one least-recently-used
:class:`ChunkCache` per process, bounded in megabytes, so a worker's memory
stays set by its block size plus this fixed budget, whatever the image size.

Metadata objects (``zarr.json``...) are kept apart and never evicted: they are
small, and keeping them means a process reads each image's metadata once.
:meth:`ChunkCache.seed` lets a reader constructor hand a worker the metadata
documents the client already read, so workers need not fetch them at all.

Entries are filed under a *scope*: a cache token and the store's root URL.
The token names one run (``ngff_dreg.register`` makes a fresh one), so data
rewritten between runs is never served stale. Only whole, successful reads are
stored: a read that raised (a dropped connection, a truncated body) leaves
nothing behind, and the retry fetches the object again.

Behind it, a run can open a :class:`HostCache` for its token
(:func:`open_host_cache`, on the client and every worker): one directory of
chunk files per run and machine, shared by the worker processes of that
machine. A chunk one worker fetched is then read from local disk by the
others instead of being fetched again from S3 (the measured cause of the
re-reads left by the per-process cache: neighbouring blocks placed on
different workers, and levels every worker reads), and a chunk the
in-memory LRU evicted comes back from disk. A process that misses a chunk
another process of the machine is fetching waits for that fetch (a lock file)
instead of fetching it too. Each process keeps the bytes it wrote there under
its own budget (oldest files first); :func:`close_host_cache` removes the
directory when the run ends.

The budgets are settings (:mod:`ngff_dreg.config`), read when needed, so a
run's client's values (applied on its workers) hold from the run's first read::

    ngff-dreg.io.chunk-cache-mb   chunk bytes kept in memory per process (default 256;
                                  0 disables)
    ngff-dreg.io.host-cache-mb    chunk bytes each process may keep on local disk
                                  (default 4096; 0 disables the host cache)
    ngff-dreg.io.host-cache-dir   where (default: the temporary directory)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from zarr.abc.store import Store

from ngff_dreg import config
from ngff_dreg.io.storage.read_through import RangeBatch, ReadThroughStore
from ngff_dreg.io.storage.store_stats import (
    is_metadata_key,
    piece_id,
    record_hit,
    trace_enabled,
    trace_event,
)

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = [
    "ChunkCache",
    "CachingStore",
    "process_cache",
    "cache_enabled",
    "shared_array",
    "HostCache",
    "open_host_cache",
    "close_host_cache",
    "host_cache",
    "machine_identity",
    "PeerSource",
    "set_peer_source",
]

logger = logging.getLogger(__name__)

#: How long a process waits for another process's fetch of the same chunk, in seconds.
HOST_WAIT_S = 60.0
#: Run directories of the host cache idle this long (seconds) are removed as stale.
STALE_S = 86400.0

Scope = tuple[str, str]
T = TypeVar("T")


class ChunkCache:
    """A thread-safe LRU of chunk bytes with a byte budget, plus pinned metadata.

    Parameters
    ----------
    max_bytes:
        Budget for chunk bytes; the least recently used entries go first.
        ``0`` keeps no chunk (metadata is still kept).

    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("ChunkCache.max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._chunks: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._meta: dict[tuple[str, str, str], bytes] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        # Diagnosis only (ngff-dreg.io.trace-dir): what was ever kept, what is being fetched.
        self._kept: set[tuple[str, str, str]] = set()
        self._inflight: dict[tuple[str, str, str], int] = {}

    @property
    def nbytes(self) -> int:
        """Chunk bytes held now (at most ``max_bytes``)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._chunks) + len(self._meta)

    def get(self, scope: Scope, piece: str) -> bytes | None:
        """The bytes of ``piece`` (:func:`~ngff_dreg.io.storage.store_stats.piece_id`), if held."""
        k = (scope[0], scope[1], piece)
        with self._lock:
            meta = self._meta.get(k)
            if meta is not None:
                return meta
            data = self._chunks.get(k)
            if data is not None:
                self._chunks.move_to_end(k)
            return data

    def put(self, scope: Scope, piece: str, data: bytes, *, metadata: bool = False) -> None:
        """Keep ``data`` for ``piece``; metadata is pinned, chunks may evict older chunks."""
        k = (scope[0], scope[1], piece)
        with self._lock:
            if metadata:
                self._meta[k] = data
                return
            if len(data) > self.max_bytes:
                return
            old = self._chunks.pop(k, None)
            if old is not None:
                self._nbytes -= len(old)
            self._chunks[k] = data
            self._nbytes += len(data)
            if trace_enabled():
                self._kept.add(k)
            while self._nbytes > self.max_bytes:
                _, dropped = self._chunks.popitem(last=False)
                self._nbytes -= len(dropped)

    def miss_cause(self, scope: Scope, piece: str, *, start: bool) -> str:
        """Why ``piece`` is being fetched (diagnosis): ``first``, ``evicted`` or ``inflight``.

        ``start=False`` marks the fetch finished. Only tracked when tracing.
        """
        k = (scope[0], scope[1], piece)
        with self._lock:
            n = self._inflight.get(k, 0)
            if not start:
                if n <= 1:
                    self._inflight.pop(k, None)
                else:
                    self._inflight[k] = n - 1
                return ""
            self._inflight[k] = n + 1
            if n:
                return "inflight"
            return "evicted" if k in self._kept else "first"

    def resize(self, max_bytes: int) -> None:
        """Change the budget, dropping the least recently used chunks beyond it."""
        if max_bytes < 0:
            raise ValueError("ChunkCache.max_bytes must be >= 0")
        with self._lock:
            self.max_bytes = int(max_bytes)
            while self._nbytes > self.max_bytes:
                _, dropped = self._chunks.popitem(last=False)
                self._nbytes -= len(dropped)

    def pieces(self, scope: Scope) -> list[str]:
        """The chunk pieces held under ``scope`` (metadata not included)."""
        with self._lock:
            return [k[2] for k in self._chunks if k[:2] == scope]

    def seed(self, scope: Scope, documents: Mapping[str, bytes]) -> None:
        """Pin metadata documents read elsewhere (key -> bytes) under ``scope``."""
        for key, data in documents.items():
            self.put(scope, key, data, metadata=True)

    def documents(self, scope: Scope, keys: Iterable[str]) -> dict[str, bytes]:
        """The pinned metadata documents of ``keys`` held under ``scope``."""
        out = {}
        with self._lock:
            for key in keys:
                data = self._meta.get((scope[0], scope[1], key))
                if data is not None:
                    out[key] = data
        return out

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._chunks.clear()
            self._meta.clear()
            self._nbytes = 0


def cache_enabled() -> bool:
    """False when ``ngff-dreg.io.chunk-cache-mb`` is 0: runs then make no cache token at all."""
    return config.chunk_cache_bytes() > 0


_CACHE: ChunkCache | None = None
_CACHE_LOCK = threading.Lock()


def process_cache() -> ChunkCache:
    """The cache of this process, sized by ``ngff-dreg.io.chunk-cache-mb``.

    Created on first use; the budget is read at every call, so a new value
    (a run's client's, applied on the worker after the cache was made) resizes
    it.
    """
    global _CACHE
    budget = config.chunk_cache_bytes()
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ChunkCache(budget)
        elif _CACHE.max_bytes != budget:
            _CACHE.resize(budget)
        return _CACHE


_ARRAYS: dict[tuple[str, ...], Any] = {}
_ARRAYS_LOCK = threading.Lock()


def shared_array(key: tuple[str, ...], open_array: Callable[[], T]) -> T:
    """The array opened under ``key`` in this process (opened by ``open_array`` the first time).

    ``key`` starts with a cache token, so arrays of an earlier run are never reused.
    """
    with _ARRAYS_LOCK:
        arr = _ARRAYS.get(key)
    if arr is None:
        opened = open_array()
        with _ARRAYS_LOCK:
            arr = _ARRAYS.setdefault(key, opened)
    return arr  # type: ignore[no-any-return]


class HostCache:
    """Chunk files of one run on one machine, shared by its processes.

    Parameters
    ----------
    root:
        The run's directory (created if needed).
    max_bytes:
        Bytes this process may keep written there; beyond it, the files it
        wrote first are removed. Other processes' files are never touched.

    """

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = int(max_bytes)
        os.makedirs(root, exist_ok=True)
        self._written: OrderedDict[str, int] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def path(self, scope: Scope, piece: str) -> str:
        """The file of ``piece`` of the store of ``scope``."""
        digest = hashlib.sha1(f"{scope[0]}\0{scope[1]}\0{piece}".encode()).hexdigest()
        return os.path.join(self.root, digest)

    def read(self, scope: Scope, piece: str) -> bytes | None:
        """The bytes of ``piece`` if a process of this machine kept them."""
        try:
            with open(self.path(scope, piece), "rb") as f:
                return f.read()
        except OSError:
            return None

    def claim(self, scope: Scope, piece: str) -> bool:
        """Take the fetch of ``piece`` (False: another process is fetching it)."""
        try:
            fd = os.open(self.path(scope, piece) + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        except OSError:
            return True  # no lock possible (read-only disk...): fetch without one
        try:  # the claimant, so that a waiter can tell a dead one (same machine)
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        return True

    def _claim_dead(self, lock: str) -> bool:
        """True when the process that took ``lock`` is gone (the lock is then removed)."""
        try:
            with open(lock, "rb") as f:
                pid = int(f.read() or b"0")
        except (OSError, ValueError):
            return False
        if pid <= 0 or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            logger.info("host cache: the process %d that claimed %s is gone", pid, lock)
            return True
        except OSError:
            return False
        return False

    def release(self, scope: Scope, piece: str) -> None:
        """Drop the claim taken by :meth:`claim`."""
        with contextlib.suppress(OSError):
            os.unlink(self.path(scope, piece) + ".lock")

    async def wait(self, scope: Scope, piece: str, timeout: float = HOST_WAIT_S) -> bytes | None:
        """The bytes of ``piece`` once another process's fetch ends.

        ``None``: the fetch failed, its process died (checked by its pid, so a
        dead claim costs a fraction of a second, not ``timeout``), or
        ``timeout`` passed; the caller then fetches the piece itself.
        """
        path = self.path(scope, piece)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            data = self.read(scope, piece)
            if data is not None:
                return data
            if not os.path.exists(path + ".lock"):
                return self.read(scope, piece)
            if delay >= 0.04 and self._claim_dead(path + ".lock"):
                return self.read(scope, piece)
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)
        return None

    def write(self, scope: Scope, piece: str, data: bytes) -> None:
        """Keep ``data`` for the other processes (atomically: a file is whole or absent)."""
        if len(data) > self.max_bytes:
            return
        path = self.path(scope, piece)
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            logger.debug("host cache: cannot write %s: %s", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        with self._lock:
            self._nbytes += len(data) - self._written.pop(path, 0)
            self._written[path] = len(data)
            while self._nbytes > self.max_bytes and self._written:
                old, size = self._written.popitem(last=False)
                self._nbytes -= size
                with contextlib.suppress(OSError):
                    os.unlink(old)


_HOST: dict[str, HostCache] = {}


def _host_root(token: str) -> str:
    base = config.host_cache_dir() or tempfile.gettempdir()
    return os.path.join(base, f"ngff-dreg-chunks-{token}")


def _sweep_stale(base: str, max_idle_s: float = STALE_S) -> None:
    """Remove run directories nothing wrote to for ``max_idle_s`` (left by killed runs).

    Safe even for a run still going: a missing file is only a cache miss.
    """
    now = time.time()
    try:
        names = [n for n in os.listdir(base) if n.startswith("ngff-dreg-chunks-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            idle = now - os.stat(path).st_mtime
        except OSError:
            continue
        if idle > max_idle_s:
            shutil.rmtree(path, ignore_errors=True)


def open_host_cache(token: str) -> bool:
    """Open this process's view of run ``token``'s host cache (False: disabled).

    Call it in every process of the run (``client.run(open_host_cache, token)``
    and on the client); the budget is ``ngff-dreg.io.host-cache-mb`` and the
    place ``ngff-dreg.io.host-cache-dir``, as set in this process. Directories
    of other runs idle for a day (a killed client never removed them) are
    removed on the way.
    """
    budget = config.host_cache_bytes()
    if budget <= 0 or not cache_enabled():
        return False
    with _CACHE_LOCK:
        if token not in _HOST:
            root = _host_root(token)
            _sweep_stale(os.path.dirname(root))
            try:
                _HOST[token] = HostCache(root, budget)
            except OSError as exc:
                logger.warning("no host chunk cache (%s): %s", root, exc)
                return False
    return True


def close_host_cache(token: str) -> None:
    """Forget run ``token``'s host cache in this process and remove its directory."""
    with _CACHE_LOCK:
        host = _HOST.pop(token, None)
    if _PEERS is not None:
        _PEERS.forget(token)
    shutil.rmtree(host.root if host is not None else _host_root(token), ignore_errors=True)


def host_cache(token: str) -> HostCache | None:
    """The host cache of run ``token`` opened in this process, if any."""
    return _HOST.get(token)


def machine_identity() -> str:
    """What this process shares its host cache with: its host and the host cache's directory.

    Processes with the same identity read each other's chunk files, so a
    chunk is fetched once between them; block placement
    (:mod:`ngff_dreg.locality`) groups workers by it. Without a host cache
    (``io.host-cache-mb`` or ``io.chunk-cache-mb`` 0) it is the host alone, so
    the workers of one host are placed as before (a slab each).
    """
    host = socket.gethostname()
    if config.host_cache_bytes() <= 0 or not cache_enabled():
        return host
    base = config.host_cache_dir() or tempfile.gettempdir()
    return f"{host}:{os.path.realpath(base)}"


class PeerSource(Protocol):
    """Where a piece missing on this machine may come from before the store (a peer machine).

    :mod:`ngff_dreg.io.storage.chunk_exchange` installs one on a worker of a
    cluster of several machines.
    """

    async def ask(self, scope: Scope, piece: str) -> bytes | None:
        """The bytes of ``piece`` from a peer; ``None``: fetch it (then call :meth:`fetched`)."""
        ...

    def fetched(self, scope: Scope, piece: str) -> None:
        """Mark the end of this process's own fetch of ``piece``."""
        ...

    def forget(self, token: str) -> None:
        """Drop what is known of run ``token``."""
        ...


_PEERS: PeerSource | None = None


def set_peer_source(source: PeerSource | None) -> None:
    """Ask ``source`` for pieces this machine misses (``None``: fetch them from the store)."""
    global _PEERS
    _PEERS = source


#: Fetches under way in this process, by (event loop, scope, piece): their outcome
#: is the piece's bytes, :data:`_ABSENT`, or ``None`` when the fetch failed.
_IN_FLIGHT: dict[tuple[int, Scope, str], asyncio.Future[bytes | object | None]] = {}
_ABSENT = object()


class CachingStore(ReadThroughStore):
    """Serves repeated reads of ``store`` from a :class:`ChunkCache`.

    Parameters
    ----------
    store:
        The store to read through (normally a
        :class:`~ngff_dreg.io.storage.counting_store.CountingStore`, so only real
        fetches are counted).
    scope:
        ``(cache token, root URL)``: entries of other scopes are never served.
    image:
        Name under which cache hits are counted.
    cache:
        Defaults to :func:`process_cache`.

    """

    def __init__(
        self, store: Store, scope: Scope, image: str = "", cache: ChunkCache | None = None
    ) -> None:
        super().__init__(store)
        self.scope = scope
        self.image = image
        self.cache = cache if cache is not None else process_cache()

    def _with_store(self, store: Store) -> CachingStore:
        return type(self)(store, self.scope, self.image, self.cache)

    def __repr__(self) -> str:
        return f"CachingStore({self.image!r})"

    def __hash__(self) -> int:
        return hash((type(self), self.scope))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """``key`` (or a range of it) from the cache, else from the store (then kept)."""
        piece = piece_id(key, byte_range)
        held = self._held(piece, key, byte_range)
        if held is not None:
            record_hit(self.image, key, len(held))
            return prototype.buffer.from_bytes(held)
        metadata = is_metadata_key(key)
        host = None if metadata else host_cache(self.scope[0])
        if host is not None:
            return await self._get_shared(host, piece, key, prototype, byte_range)
        return await self._fetch(piece, key, prototype, byte_range)

    def _held(self, piece: str, key: str, byte_range: ByteRequest | None) -> bytes | None:
        """``piece`` from the process cache, or cut from the whole object if that is held."""
        held = self.cache.get(self.scope, piece)
        if held is not None or byte_range is None:
            return held
        whole = self.cache.get(self.scope, key)
        return None if whole is None else slice_range(whole, byte_range)

    async def _get_shared(
        self, host: HostCache, piece: str, key: str, prototype: BufferPrototype,
        byte_range: ByteRequest | None,
    ) -> Buffer | None:
        """``piece`` from the host cache, else fetched once for every process of the machine."""
        data = host.read(self.scope, piece)
        claimed = False
        if data is None:
            claimed = host.claim(self.scope, piece)
            data = host.read(self.scope, piece) if claimed else await host.wait(self.scope, piece)
        peers = _PEERS
        if data is None and peers is not None:
            data = await peers.ask(self.scope, piece)
            if data is not None:
                host.write(self.scope, piece, data)
        if data is not None:
            if claimed:
                host.release(self.scope, piece)
            record_hit(self.image, key, len(data))
            self.cache.put(self.scope, piece, data)
            return prototype.buffer.from_bytes(data)
        try:
            buf = await self._fetch(piece, key, prototype, byte_range)
            if buf is not None:
                host.write(self.scope, piece, buf.to_bytes())
        finally:
            if claimed:
                host.release(self.scope, piece)
            if peers is not None:
                peers.fetched(self.scope, piece)
        return buf

    async def _fetch(
        self, piece: str, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        """Fetch ``piece`` from the wrapped store and keep it in the process cache.

        One fetch per piece and process at a time: a read that misses a piece
        another task of this process is fetching waits for that fetch and is
        served its bytes (counted as a cache hit) instead of fetching it too.
        """
        loop = asyncio.get_running_loop()
        flight = (id(loop), self.scope, piece)
        pending = _IN_FLIGHT.get(flight)
        if pending is not None:
            got = await asyncio.shield(pending)
            if got is _ABSENT:
                return None
            if isinstance(got, bytes):
                record_hit(self.image, key, len(got))
                return prototype.buffer.from_bytes(got)
            # that fetch failed: this read tries for itself
        mine: asyncio.Future[bytes | object | None] = loop.create_future()
        _IN_FLIGHT[flight] = mine
        outcome: bytes | object | None = None
        try:
            buf = await self._fetch_once(piece, key, prototype, byte_range)
            outcome = _ABSENT if buf is None else buf.to_bytes()
            return buf
        finally:
            _IN_FLIGHT.pop(flight, None)
            mine.set_result(outcome)

    async def _fetch_once(
        self, piece: str, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        """One fetch of ``piece`` through the wrapped store, kept in the process cache."""
        tracing = trace_enabled() and not is_metadata_key(key)
        if tracing:
            cause = self.cache.miss_cause(self.scope, piece, start=True)
        try:
            buf = await self._store.get(key, prototype, byte_range)
        finally:
            if tracing:
                self.cache.miss_cause(self.scope, piece, start=False)
        if tracing and buf is not None:
            trace_event("cause", self.image, piece, len(buf), cause)
        if buf is not None:
            self.cache.put(self.scope, piece, buf.to_bytes(), metadata=is_metadata_key(key))
        return buf

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_concurrency: int | None = None,
        max_gap_bytes: int | None = None,
        max_coalesced_bytes: int | None = None,
    ) -> AsyncIterator[RangeBatch]:
        """Ranges of ``key``: the ones held are served here, only the misses go down.

        Pieces are the ranges as asked (not as coalesced below), so a range
        read again later is found whatever else was read with it.
        """
        pieces = [piece_id(key, r) for r in byte_ranges]
        host = host_cache(self.scope[0])
        held: list[tuple[int, Buffer | None]] = []
        misses: list[int] = []
        for i, piece in enumerate(pieces):
            data = self._held(piece, key, byte_ranges[i])
            if data is None and host is not None:
                data = host.read(self.scope, piece)
                if data is not None:
                    self.cache.put(self.scope, piece, data)
            if data is None:
                misses.append(i)
            else:
                record_hit(self.image, key, len(data))
                held.append((i, prototype.buffer.from_bytes(data)))
        peers = _PEERS if host is not None else None
        if peers is not None and misses:
            misses = await self._from_peers(peers, host, key, pieces, misses, held, prototype)
        if held:
            yield held
        if not misses:
            return
        try:
            async for batch in super().get_ranges(
                    key, [byte_ranges[i] for i in misses], prototype=prototype,
                    max_concurrency=max_concurrency, max_gap_bytes=max_gap_bytes,
                    max_coalesced_bytes=max_coalesced_bytes):
                out: list[tuple[int, Buffer | None]] = []
                for j, buf in batch:
                    i = misses[j]
                    if buf is not None:
                        data = buf.to_bytes()
                        self.cache.put(self.scope, pieces[i], data)
                        if host is not None:
                            host.write(self.scope, pieces[i], data)
                    out.append((i, buf))
                yield out
        finally:
            if peers is not None:
                for i in misses:
                    peers.fetched(self.scope, pieces[i])

    async def _from_peers(
        self, peers: PeerSource, host: HostCache | None, key: str, pieces: list[str],
        misses: list[int], held: list[tuple[int, Buffer | None]], prototype: BufferPrototype,
    ) -> list[int]:
        """Ask ``peers`` for the missed pieces; those received join ``held``, the rest returns."""
        got = await asyncio.gather(*(peers.ask(self.scope, pieces[i]) for i in misses))
        rest = []
        for i, data in zip(misses, got):
            if data is None:
                rest.append(i)
                continue
            self.cache.put(self.scope, pieces[i], data)
            if host is not None:
                host.write(self.scope, pieces[i], data)
            record_hit(self.image, key, len(data))
            held.append((i, prototype.buffer.from_bytes(data)))
        return rest


def slice_range(data: bytes, byte_range: ByteRequest) -> bytes | None:
    """The bytes of ``byte_range`` of a whole object ``data`` (``None``: out of it)."""
    start = getattr(byte_range, "start", None)
    if start is not None:
        end = int(byte_range.end)  # type: ignore[union-attr]
        return data[int(start):end] if end <= len(data) else None
    offset = getattr(byte_range, "offset", None)
    if offset is not None:
        return data[int(offset):] if int(offset) <= len(data) else None
    suffix = int(byte_range.suffix)  # type: ignore[union-attr]
    return data[-suffix:] if 0 < suffix <= len(data) else None
