"""The read stack: which wrappers a read-only store gets, and in which order.

This is the one place the order is decided. From the store that does the I/O
up to what zarr reads through:

1. the **base store**: ``zarr.storage.LocalStore`` or ``FsspecStore``
   (s3fs, HTTP), opened by :func:`~ngff_dreg.io.storage.stores.open_store`;
2. :class:`~ngff_dreg.io.storage.counting_store.CountingStore`: counts every
   request that reaches the base store, with its byte range and size
   (:mod:`~ngff_dreg.io.storage.store_stats`), and refuses a short ranged read.
   It is the bottom wrapper, so zarr's coalesced range reads are coalesced
   here, and each merged fetch is one counted request;
3. :class:`~ngff_dreg.io.storage.chunk_cache.CachingStore` (with a run's cache
   token): serves pieces already fetched, from the process's memory or the
   machine's host cache, and passes only the misses down;
4. :class:`~ngff_dreg.io.storage.missing_chunk_guard.MissingChunkGuard` (with
   a level's chunk inventory): a chunk that existed at planning and reads as
   missing raises :class:`~ngff_dreg.errors.StoreChangedError` instead of
   becoming fill value;
5. :class:`~ngff_dreg.io.storage.read_errors.ReadErrorStore` (when a level is
   read): any other failure becomes a
   :class:`~ngff_dreg.errors.StoreReadError` naming the image, level and key,
   never wrapped in an ``ExceptionGroup``.

Around a whole read, outside the store,
:func:`~ngff_dreg.io.storage.retry.retry_transient` retries transient
failures (layer 5's errors) with backoff, and
:func:`~ngff_dreg.io.storage.read_errors.read_selection` names a chunk that
cannot be decoded (:class:`~ngff_dreg.errors.CorruptChunkError`). A retried
read re-runs zarr's decode; what already arrived is served by layer 3.

Every wrapper derives from
:class:`~ngff_dreg.io.storage.read_through.ReadThroughStore`, which routes all
of zarr's read paths (``get``, ``get_partial_values``, ``get_ranges``, the
synchronous ones) through the wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass

from zarr.abc.store import Store

from ngff_dreg.io.storage.chunk_cache import CachingStore
from ngff_dreg.io.storage.chunk_inventory import ChunkInventory
from ngff_dreg.io.storage.counting_store import CountingStore
from ngff_dreg.io.storage.missing_chunk_guard import MissingChunkGuard
from ngff_dreg.io.storage.read_errors import ReadErrorStore
from ngff_dreg.io.storage.urls import join_url, location_key, redact_url

__all__ = ["LevelReads", "read_stack"]


@dataclass(frozen=True)
class LevelReads:
    """The level array a store is opened to read.

    Attributes
    ----------
    path:
        The level's path inside the image group (errors name it).
    inventory:
        Which of its chunks existed at planning (``None``: no guard).

    """

    path: str
    inventory: ChunkInventory | None = None


def read_stack(base: Store, url: str, *, cache: str | None = None,
               level: LevelReads | None = None) -> Store:
    """``base`` wrapped for reading, in the order of the module docstring.

    Parameters
    ----------
    base:
        The store doing the I/O, rooted at ``url``.
    url:
        The store's root URL (an image group); counts are filed under it,
        redacted.
    cache:
        A run's cache token: repeated reads are served from the chunk cache
        (layer 3). ``None``: no cache.
    level:
        The level array read (layers 4 and 5). ``None``: metadata only.

    """
    image = redact_url(url.rstrip("/"))
    store: Store = CountingStore(base, image)
    if cache is not None:
        store = CachingStore(store, (cache, location_key(url)), image)
    if level is not None:
        if level.inventory is not None:
            store = MissingChunkGuard(store, level.inventory, join_url(url, level.path))
        store = ReadErrorStore(store, url, level.path)
    return store
