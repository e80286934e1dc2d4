"""Chunks served between the machines of a cluster instead of fetched again from the store.

The host cache (:mod:`ngff_dreg.io.storage.chunk_cache`) makes a chunk fetched
once per machine. Blocks placed on different machines still share the chunks
of their halos (and every worker reads the fields of the stage before), so on
a cluster of many machines each of those chunks would be fetched once per
machine that needs it. With the exchange on, a worker that misses a piece (a
chunk, or a byte range of a shard) in its machine's host cache first asks the
cluster who fetched it:

* every piece has a **coordinator**, one of the cluster's workers chosen by a
  hash of the piece, which keeps a directory ``piece -> holder``. The first
  worker to ask is recorded as the holder and told to fetch the piece from the
  store itself (one small message); it then keeps it in its machine's host cache;
* a later asker is given the holder's address and fetches the bytes from the
  holder's worker (through dask's connections between workers). The holder
  serves them from its memory or its host cache, waiting for its own fetch if
  it is still under way.

Anything unusual (a dead or unreachable peer, a holder that evicted the piece
or whose fetch failed, a timeout) makes the asker fetch the piece from the
store itself, as without the exchange: the exchange can cost re-reads, never
a read. Only bytes fetched from the store are counted as fetched
(:mod:`ngff_dreg.io.storage.store_stats`); bytes from a peer count as cache hits.

The exchange is installed on each worker by
:class:`~ngff_dreg.cluster.ChunkExchangePlugin` (:func:`install`, with the
list of coordinators), and only when the cluster has more than one machine
and ``ngff-dreg.cluster.chunk-exchange`` is on. The worker's handlers run on
its event loop; the reads that ask come from zarr's I/O loop and cross over
with :func:`asyncio.run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ngff_dreg.io.storage.chunk_cache import (
    Scope,
    host_cache,
    process_cache,
    set_peer_source,
)

__all__ = ["ChunkExchange", "install", "uninstall", "exchange", "coordinator_of", "counts"]

logger = logging.getLogger(__name__)

#: Longest wait of a holder for its own fetch of a piece a peer asks for, in seconds.
HOLDER_WAIT_S = 30.0
#: Longest wait of an asker for a peer's answer, in seconds.
ASK_TIMEOUT_S = 45.0

WHERE = "ngff_dreg_chunk_where"
GET = "ngff_dreg_chunk_get"


#: Pieces this process served to peers and received from them (diagnosis), ever.
_COUNTS = {"served": 0, "received": 0}


def counts() -> dict[str, int]:
    """Pieces this process served to peers and received from them since it started."""
    return dict(_COUNTS)


def coordinator_of(scope: Scope, piece: str, peers: Sequence[str]) -> str:
    """The worker (one of ``peers``) that keeps the directory entry of ``piece``."""
    digest = hashlib.sha1(f"{scope[0]}\0{scope[1]}\0{piece}".encode()).digest()
    return peers[int.from_bytes(digest[:8], "big") % len(peers)]


class ChunkExchange:
    """A worker's part of the exchange: its directory, its pending fetches, its asks.

    Parameters
    ----------
    worker:
        The ``distributed.Worker`` of this process.
    peers:
        Addresses of the coordinators (the cluster's workers when installed).

    """

    def __init__(self, worker: Any, peers: Sequence[str],
                 holders: dict[tuple[str, str, str], str] | None = None) -> None:
        self.worker = worker
        self.address: str = worker.address
        self.peers = tuple(sorted(peers))
        self._holders = holders if holders is not None else {}
        self._pending: set[tuple[str, str, str]] = set()
        self._dead: set[str] = set()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when there is someone else to ask."""
        return len(self.peers) > 1 or (len(self.peers) == 1 and self.peers[0] != self.address)

    # -- handlers (on the worker's event loop) --------------------------------
    def where(self, token: str, root: str, piece: str, asker: str) -> str | None:
        """Directory lookup: the holder of ``piece``, or ``None`` when ``asker`` is now it."""
        key = (token, root, piece)
        with self._lock:
            holder = self._holders.setdefault(key, asker)
        return None if holder == asker else holder

    async def get(self, token: str, root: str, piece: str) -> bytes | None:
        """The bytes of ``piece`` held on this machine, waiting for this process's own fetch."""
        scope = (token, root)
        key = (token, root, piece)
        deadline = time.monotonic() + HOLDER_WAIT_S
        delay = 0.005
        while True:
            data = self._held(scope, piece)
            with self._lock:
                pending = key in self._pending
            if data is not None or not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)
        if data is None:
            host = host_cache(token)
            if host is not None:
                data = await host.wait(scope, piece, timeout=max(0.0, deadline - time.monotonic()))
        if data is not None:
            _COUNTS["served"] += 1
        return data

    @staticmethod
    def _held(scope: Scope, piece: str) -> bytes | None:
        data = process_cache().get(scope, piece)
        if data is None:
            host = host_cache(scope[0])
            data = host.read(scope, piece) if host is not None else None
        return data

    # -- asking (called from zarr's I/O loop) ---------------------------------
    async def ask(self, scope: Scope, piece: str) -> bytes | None:
        """``piece`` from the peer holding it; ``None``: fetch it from the store.

        When this process is made the piece's holder, it must call
        :meth:`fetched` once its own fetch ended (well or not).
        """
        if not self.active:
            return None
        loop = self.worker.loop.asyncio_loop
        fut = asyncio.run_coroutine_threadsafe(self._ask(scope, piece), loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), ASK_TIMEOUT_S)
        except Exception as exc:  # a timeout, a closing worker: fetch it oneself
            logger.debug("chunk exchange: %s not received: %s", piece, exc)
            return None

    async def _ask(self, scope: Scope, piece: str) -> bytes | None:
        token, root = scope
        coord = coordinator_of(scope, piece, self.peers)
        key = (token, root, piece)
        with self._lock:
            self._pending.add(key)
        if coord == self.address:
            holder = self.where(token, root, piece, self.address)
        else:
            holder = await self._call(coord, WHERE, token=token, root=root, piece=piece,
                                      asker=self.address)
        if holder is None or holder == self.address:
            return None  # this process fetches it (and stays pending until fetched)
        self.fetched(scope, piece)
        data = await self._call(holder, GET, token=token, root=root, piece=piece)
        if isinstance(data, bytes):
            _COUNTS["received"] += 1
            return data
        return None

    async def _call(self, address: str, op: str, **msg: Any) -> Any:
        """One request to a peer; ``None`` if it cannot be reached (then never asked again)."""
        if address in self._dead:
            return None
        try:
            return await getattr(self.worker.rpc(address), op)(**msg)
        except Exception as exc:  # a dead or closing worker
            logger.info("chunk exchange: %s did not answer (%s); not asked again", address, exc)
            self._dead.add(address)
            return None

    def fetched(self, scope: Scope, piece: str) -> None:
        """Mark this process's own fetch of ``piece`` ended: peers waiting for it stop waiting."""
        with self._lock:
            self._pending.discard((scope[0], scope[1], piece))

    def forget(self, token: str) -> None:
        """Drop the directory entries of run ``token``."""
        with self._lock:
            for key in [k for k in self._holders if k[0] == token]:
                del self._holders[key]


_EXCHANGE: ChunkExchange | None = None
#: This worker's directory (as a coordinator), kept when the exchange is installed again.
_DIRECTORY: dict[tuple[str, str, str], str] = {}


def exchange() -> ChunkExchange | None:
    """The exchange installed in this process, if any."""
    return _EXCHANGE


def install(worker: Any, peers: Sequence[str]) -> ChunkExchange:
    """Install the exchange on ``worker`` (its handlers and the read hook), with ``peers``.

    Installing again replaces the peers and keeps the directory (a stage that
    starts with other workers still finds the pieces of the stages before).
    """
    global _EXCHANGE
    ex = ChunkExchange(worker, peers, _DIRECTORY)
    _EXCHANGE = ex
    worker.handlers[WHERE] = ex.where
    worker.handlers[GET] = ex.get
    set_peer_source(ex)
    return ex


def uninstall() -> None:
    """Stop asking peers from this process (the handlers stay and answer ``None``)."""
    global _EXCHANGE
    ex = _EXCHANGE
    _EXCHANGE = None
    set_peer_source(None)
    if ex is not None:
        ex.worker.handlers[WHERE] = _nobody
        ex.worker.handlers[GET] = _nothing


def _nobody(token: str, root: str, piece: str, asker: str) -> None:
    return None


def _nothing(token: str, root: str, piece: str) -> None:
    return None
