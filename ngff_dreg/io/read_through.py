"""Base of ngff-dreg's read-through store wrappers (counting, caching)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.storage import WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["ReadThroughStore"]


class ReadThroughStore(WrapperStore[Store]):
    """A wrapper whose every read, partial ones included, goes through its ``get``."""

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Several reads, each through :meth:`get`."""
        return list(
            await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges))
        )

    def __eq__(self, value: object) -> bool:
        """The same kind of wrapper around an equal store (subclasses hash their own key)."""
        return isinstance(value, type(self)) and value._store == self._store

    @property
    def wrapped(self) -> Any:
        """The store read through."""
        return self._store
