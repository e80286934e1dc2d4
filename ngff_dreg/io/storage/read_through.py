"""Base of ngff-dreg's store wrappers: every read path goes through the wrapper.

zarr's :class:`~zarr.storage.WrapperStore` forwards each method to the store
it wraps. A wrapper that overrides only ``get`` is therefore bypassed by every
other read path, and zarr has added read paths over its releases:

=====================  ==========================================================
``get``                one object, or one byte range of it (every version)
``get_partial_values`` several ranges at once (every version)
``_get_many``          several objects (every version)
``get_ranges``         zarr ≥ 3.3: a partial shard read, byte ranges coalesced
                       into fewer fetches
``get_sync``,          zarr ≥ 3.4: the synchronous (fused) codec pipeline, used
``get_ranges_sync``    when a store says it supports synchronous I/O
=====================  ==========================================================

:class:`ReadThroughStore` routes all of them through the wrapper's own
asynchronous methods: ``get_partial_values`` and ``_get_many`` call
:meth:`~ReadThroughStore.get` once per piece; ``get_ranges`` is passed down the
stack layer by layer (each layer may serve or check ranges on the way), and the
bottom layer runs zarr's coalescer over its own ``get``
(:meth:`ReadThroughStore.coalesced_ranges`), so every fetch that reaches the
real store is one ``get`` of the bottom wrapper. A wrapped store reports that
it has *no* synchronous I/O (``_supports_sync_io = False``), so zarr's fused
pipeline falls back to the asynchronous path; ``get_sync`` and
``get_ranges_sync``, called directly, run the asynchronous path to completion.

``tests/io/storage/test_read_paths.py`` fails when a zarr release adds a read
path that a wrapper does not see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.storage import WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["ReadThroughStore", "RangeBatch", "READ_PATHS", "SIZE_PROBES"]

#: ``(input index, buffer)`` pairs of one batch of :meth:`ReadThroughStore.get_ranges`.
RangeBatch = Sequence[tuple[int, "Buffer | None"]]

#: The read paths of zarr's stores (any version the project allows) that every
#: :class:`ReadThroughStore` routes through its own ``get``.
READ_PATHS = ("get", "get_partial_values", "_get_many", "get_ranges", "get_sync",
              "get_ranges_sync")
#: Size probes (a HEAD request, no data): forwarded on purpose, not counted as reads.
SIZE_PROBES = ("exists", "getsize", "getsize_prefix")


def _coalescing_kwargs(max_concurrency: int | None, max_gap_bytes: int | None,
                       max_coalesced_bytes: int | None) -> dict[str, int]:
    """The coalescing settings given (``None``: the store's default)."""
    given = {"max_concurrency": max_concurrency, "max_gap_bytes": max_gap_bytes,
             "max_coalesced_bytes": max_coalesced_bytes}
    return {k: int(v) for k, v in given.items() if v is not None}


class ReadThroughStore(WrapperStore[Store]):
    """A wrapper whose every read, partial and batched ones included, goes through it.

    Subclasses override :meth:`get` and, where ranges need handling of their
    own, :meth:`get_ranges`; everything else here routes to those two.
    """

    #: zarr ≥ 3.4 consults this before using a store's synchronous methods:
    #: a wrapped store is read through the asynchronous path only.
    _supports_sync_io = False

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """``key`` (or a range of it) from the wrapped store."""
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Several reads, each through :meth:`get`."""
        return list(
            await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges))
        )

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        """Several objects, each through :meth:`get`."""
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

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
        """Many ranges of ``key``: passed to the wrapped store when it is a wrapper too.

        The bottom wrapper (over the real store) coalesces them over its own
        :meth:`get` instead (:meth:`coalesced_ranges`), so the real store sees
        only ``get`` calls that went through the whole stack below the top.
        """
        kwargs = _coalescing_kwargs(max_concurrency, max_gap_bytes, max_coalesced_bytes)
        if isinstance(self._store, ReadThroughStore):
            source = self._store.get_ranges(key, byte_ranges, prototype=prototype, **kwargs)
        else:
            source = self.coalesced_ranges(key, byte_ranges, prototype=prototype, **kwargs)
        async for batch in source:
            yield batch

    async def coalesced_ranges(
        self, key: str, byte_ranges: Sequence[ByteRequest | None], *,
        prototype: BufferPrototype, **kwargs: int,
    ) -> AsyncIterator[RangeBatch]:
        """Zarr's coalescing range reader (``Store.get_ranges``) over this wrapper's ``get``.

        zarr < 3.3 has no coalescer: one :meth:`get` per range, in one batch,
        a missing object raised as zarr >= 3.3 raises it.
        """
        default = getattr(Store, "get_ranges", None)
        if default is None:
            bufs = await asyncio.gather(*(self.get(key, prototype, r) for r in byte_ranges))
            if any(b is None for b in bufs):
                raise BaseExceptionGroup("range read failed", [FileNotFoundError(key)])
            yield list(enumerate(bufs))
            return
        async for batch in default(self, key, byte_ranges, prototype=prototype, **kwargs):
            yield batch

    # -- synchronous reads: run the asynchronous path ------------------------
    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """:meth:`get` run to completion (never on zarr's event loop thread)."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        return sync(self.get(key, prototype or default_buffer_prototype(), byte_range))

    def get_ranges_sync(
        self, key: str, byte_ranges: Sequence[ByteRequest | None], *,
        prototype: BufferPrototype, max_gap_bytes: int | None = None,
        max_coalesced_bytes: int | None = None,
    ) -> RangeBatch:
        """:meth:`get_ranges` run to completion, its batches joined."""
        from zarr.core.sync import sync

        kwargs = _coalescing_kwargs(None, max_gap_bytes, max_coalesced_bytes)

        async def collect() -> list[tuple[int, Buffer | None]]:
            out: list[tuple[int, Buffer | None]] = []
            async for batch in self.get_ranges(key, byte_ranges, prototype=prototype,
                                               **kwargs):
                out.extend(batch)
            return out

        return sync(collect())

    # -- size probes: forwarded (a HEAD request, not a data read) ------------
    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (asked of the wrapped store)."""
        return await self._store.exists(key)

    async def getsize(self, key: str) -> int:
        """Size of ``key`` (asked of the wrapped store)."""
        return await self._store.getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        """Total size under ``prefix`` (asked of the wrapped store)."""
        return await self._store.getsize_prefix(prefix)

    def __eq__(self, value: object) -> bool:
        """The same kind of wrapper around an equal store (subclasses hash their own key)."""
        return isinstance(value, type(self)) and value._store == self._store

    @property
    def wrapped(self) -> Any:
        """The store read through."""
        return self._store
