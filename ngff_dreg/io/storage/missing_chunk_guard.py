"""Refuse to read a chunk as fill value when it existed at planning time.

:class:`MissingChunkGuard` wraps the store a worker reads a level array
through. When the store answers "no such object" (``None``, or a
``FileNotFoundError`` / ``KeyError``) for a chunk key that the level's
:class:`~ngff_dreg.io.storage.chunk_inventory.ChunkInventory` says existed when the
run was planned, the chunk was deleted in between, and zarr would silently
fill the block with the fill value. The guard raises a
:class:`~ngff_dreg.errors.StoreChangedError` naming the array and the key
instead. It is not transient, so :func:`~ngff_dreg.io.storage.retry.retry_transient`
does not retry it; transient failures (raised by the wrapped store as
:class:`~ngff_dreg.errors.StoreAccessError` or the fsspec errors behind
them) pass through untouched. Keys absent at planning stay fill value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from zarr.abc.store import Store

from ngff_dreg.errors import StoreChangedError
from ngff_dreg.io.storage.chunk_inventory import ChunkInventory
from ngff_dreg.io.storage.read_through import RangeBatch, ReadThroughStore
from ngff_dreg.io.storage.urls import redact_url

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["MissingChunkGuard"]


class MissingChunkGuard(ReadThroughStore):
    """Raises :class:`StoreChangedError` for an inventoried chunk that is gone.

    Parameters
    ----------
    store:
        The store the array is read through (rooted where the inventory's
        ``prefix`` is relative to).
    inventory:
        Which objects of the array existed at planning time.
    url:
        The array's URL, for the message (redacted there).

    """

    def __init__(self, store: Store, inventory: ChunkInventory, url: str) -> None:
        super().__init__(store)
        self.inventory = inventory
        self.url = url

    def _with_store(self, store: Store) -> MissingChunkGuard:
        return type(self)(store, self.inventory, self.url)

    def __repr__(self) -> str:
        return f"MissingChunkGuard({redact_url(self.url)!r})"

    def __hash__(self) -> int:
        return hash((type(self), self.url))

    def _gone(self, key: str) -> StoreChangedError:
        return StoreChangedError(
            f"{redact_url(self.url)}: chunk {key!r} existed when the run was planned but is "
            "missing now (deleted or being rewritten); its voxels would have been read as "
            "the fill value. Rerun once the data is complete."
        )

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """``key`` from the store; a missing chunk that existed at planning raises."""
        try:
            buf = await self._store.get(key, prototype, byte_range)
        except (FileNotFoundError, KeyError) as exc:
            if self.inventory.existed(key):
                raise self._gone(key) from exc
            raise
        if buf is None and self.inventory.existed(key):
            raise self._gone(key)
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
        """Ranges of ``key``; an inventoried object that is gone raises (zarr >= 3.3)."""
        try:
            async for batch in super().get_ranges(
                    key, byte_ranges, prototype=prototype, max_concurrency=max_concurrency,
                    max_gap_bytes=max_gap_bytes, max_coalesced_bytes=max_coalesced_bytes):
                yield batch
        except BaseExceptionGroup as group:
            missing, _ = group.split((FileNotFoundError, KeyError))
            if missing is not None and self.inventory.existed(key):
                raise self._gone(key) from group
            raise
