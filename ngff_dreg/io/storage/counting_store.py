"""A zarr store wrapper that counts every read reaching the wrapped store.

:class:`CountingStore` sits directly on the store that talks to the disk or the
network (``LocalStore``, ``FsspecStore``), so what it counts is what was really
fetched: one ``get`` is one GET (or ranged GET) on S3; listings are counted
with the keys they returned. Counts go to the
process-wide table of :mod:`ngff_dreg.io.storage.store_stats`, under the store's root
URL (redacted).

A ranged read that returns fewer bytes than asked for is refused with a
:class:`~ngff_dreg.errors.StoreAccessError` (a transient error the read is
retried for), so a truncated inner chunk of a shard is never decoded or cached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from zarr.abc.store import RangeByteRequest, Store

from ngff_dreg.errors import StoreAccessError
from ngff_dreg.io.storage.read_through import ReadThroughStore
from ngff_dreg.io.storage.store_stats import record_fetch, record_listing

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["CountingStore"]


class CountingStore(ReadThroughStore):
    """Counts the reads of ``store`` under the image name ``image``.

    Parameters
    ----------
    store:
        The store doing the I/O.
    image:
        The name counts are filed under: the store's root URL, redacted.

    """

    def __init__(self, store: Store, image: str = "") -> None:
        super().__init__(store)
        self.image = image

    def _with_store(self, store: Store) -> CountingStore:
        return type(self)(store, self.image)

    def __repr__(self) -> str:
        return f"CountingStore({self.image!r})"

    def __hash__(self) -> int:
        return hash((type(self), self.image))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """Read ``key`` (or a range of it) from the wrapped store and count it."""
        buf = await self._store.get(key, prototype, byte_range)
        nbytes = None if buf is None else len(buf)
        record_fetch(self.image, key, byte_range, nbytes)
        if (
            buf is not None
            and isinstance(byte_range, RangeByteRequest)
            and nbytes is not None
            and nbytes < byte_range.end - byte_range.start
        ):
            raise StoreAccessError(
                f"{self.image}/{key}: short read, {nbytes} of the "
                f"{byte_range.end - byte_range.start} bytes asked for "
                f"({byte_range.start}-{byte_range.end})"
            )
        return buf


    async def _counted(self, keys: AsyncIterator[str]) -> AsyncIterator[str]:
        n = 0
        try:
            async for key in keys:
                n += 1
                yield key
        finally:
            record_listing(self.image, n)

    def list(self) -> AsyncIterator[str]:
        """Every key of the store (counted as one listing)."""
        return self._counted(self._store.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """The keys under ``prefix`` (counted as one listing)."""
        return self._counted(self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The keys and prefixes directly under ``prefix`` (counted as one listing)."""
        return self._counted(self._store.list_dir(prefix))
