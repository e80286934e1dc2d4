"""CountingStore: counts what reaches the wrapped store, refuses short ranged reads."""

from __future__ import annotations

import asyncio

import pytest
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from ngff_dreg.errors import StoreAccessError
from ngff_dreg.io.storage.chunk_cache import CachingStore, ChunkCache
from ngff_dreg.io.storage.counting_store import CountingStore
from ngff_dreg.io.storage.store_stats import take_counts


class _ShortStore(MemoryStore):
    """Answers ranged reads with one byte too few (a body cut short)."""

    async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
        buf = await super().get(key, prototype, byte_range)
        if buf is not None and byte_range is not None:
            return prototype.buffer.from_bytes(buf.to_bytes()[:-1])
        return buf


def _filled(store: MemoryStore) -> MemoryStore:
    proto = default_buffer_prototype()
    asyncio.run(store.set("0/c/0", proto.buffer.from_bytes(b"0123456789")))
    asyncio.run(store.set("zarr.json", proto.buffer.from_bytes(b"{}")))
    return store


def test_counts_requests_bytes_and_distinct_pieces() -> None:
    store = CountingStore(_filled(MemoryStore()), "mem://img")
    proto = default_buffer_prototype()
    take_counts()
    for _ in range(3):
        asyncio.run(store.get("0/c/0", proto))
    asyncio.run(store.get("0/c/0", proto, RangeByteRequest(2, 5)))
    asyncio.run(store.get("0/c/0", proto, SuffixByteRequest(4)))
    asyncio.run(store.get("zarr.json", proto))
    assert asyncio.run(store.get("0/c/9", proto)) is None
    _, counts = take_counts()
    c = counts["mem://img"]
    assert (c.chunk_requests, c.chunk_bytes) == (5, 3 * 10 + 3 + 4)
    assert c.pieces == {"0/c/0": 10, "0/c/0[2:5]": 3, "0/c/0[-4:]": 4}
    assert (c.metadata_requests, c.metadata_objects, c.missing) == (1, {"zarr.json": 2}, 1)
    s = c.summary()
    # the range and the suffix lie inside the whole object: 10 distinct bytes
    assert s["distinct_bytes"] == 10 and s["distinct_pieces"] == 3
    assert s["reread"] == pytest.approx(37 / 10) and s["metadata_per_object"] == 1.0


def test_short_ranged_read_is_an_error_and_is_not_cached() -> None:
    cache = ChunkCache(10**6)
    store = CachingStore(CountingStore(_filled(_ShortStore()), "mem://short"), ("t", "m"),
                         "mem://short", cache)
    proto = default_buffer_prototype()
    with pytest.raises(StoreAccessError, match=r"mem://short/0/c/0: short read, 2 of the 3"):
        asyncio.run(store.get("0/c/0", proto, RangeByteRequest(2, 5)))
    assert cache.get(("t", "m"), "0/c/0[2:5]") is None and len(cache) == 0
    # Whole objects are not ranges: read and kept.
    assert asyncio.run(store.get("0/c/0", proto)).to_bytes() == b"0123456789"  # type: ignore[union-attr]
    assert cache.get(("t", "m"), "0/c/0") == b"0123456789"


def test_zarr_reads_through_the_wrappers() -> None:
    inner = MemoryStore()
    arr = zarr.create_array(inner, shape=(8,), chunks=(4,), dtype="i4")
    arr[:] = list(range(8))
    store = CachingStore(CountingStore(inner, "mem://z"), ("t", "z"), "mem://z", ChunkCache(1000))
    take_counts()
    assert list(zarr.open_array(store, mode="r")[:]) == list(range(8))
    assert list(zarr.open_array(store, mode="r")[:]) == list(range(8))
    _, counts = take_counts()
    c = counts["mem://z"]
    assert c.chunk_requests == 2 and c.cache_hits == 2
    assert c.metadata_requests == 1 and c.metadata_cache_hits == 1
