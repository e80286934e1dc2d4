"""The per-process chunk cache and the sharded reader: same voxels as a plain read, fewer fetches.

Local disk and a real moto S3 server; the counts come from the store layer
(:mod:`ngff_dreg.io.storage.store_stats`), so they are what was really fetched.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.abc.store

from ngff_dreg.errors import InvalidInputDataError
from ngff_dreg.geometry import Box
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.chunk_cache import ChunkCache, cache_enabled, process_cache
from ngff_dreg.io.storage.store_stats import StoreCounts, take_counts

SHAPE = (40, 36, 44)
BOXES = [Box((3, 5, 7), (29, 30, 31)), Box((10, 0, 20), (40, 36, 44)), Box((3, 5, 7), (29, 30, 31))]


def _counts(image: str) -> StoreCounts:
    """This process's counts of ``image`` since the last call (then cleared)."""
    _, counts = take_counts()
    return counts.get(image.rstrip("/"), StoreCounts())


def _chunks_touched(box: Box, chunk: int) -> int:
    return int(np.prod([(b - 1) // chunk - a // chunk + 1 for a, b in zip(box.start, box.stop)]))


def _check_cached_reads(url: str, opts: dict[str, Any] | None, data: np.ndarray) -> None:
    plain = OMEZarrReaderConstructor(url, 0, opts)
    cached = OMEZarrReaderConstructor(url, 0, opts, cache=uuid.uuid4().hex)
    _counts(url)
    expected_plain = [plain().read_box(b) for b in BOXES]
    plain_counts = _counts(url)
    got = [cached().read_box(b) for b in BOXES]
    cached_counts = _counts(url)
    for box, a, b in zip(BOXES, expected_plain, got):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(b, data[box.slices])
    # Plain: every box fetches every chunk it touches, again and again.
    assert plain_counts.chunk_requests == sum(_chunks_touched(b, 8) for b in BOXES)
    assert plain_counts.chunk_bytes > plain_counts.distinct_bytes
    # Cached: each distinct chunk once, the rest from the cache.
    assert cached_counts.chunk_requests == len(cached_counts.pieces)
    assert cached_counts.pieces == plain_counts.pieces
    assert cached_counts.chunk_bytes == cached_counts.distinct_bytes
    assert cached_counts.cache_hits == plain_counts.chunk_requests - cached_counts.chunk_requests
    # A new reader of the same constructor in this process fetches nothing at all.
    again = cached().read_box(BOXES[0])
    np.testing.assert_array_equal(again, expected_plain[0])
    nothing = _counts(url)
    assert nothing.requests == 0 and nothing.cache_hits == _chunks_touched(BOXES[0], 8)


def test_cached_reads_equal_plain_reads_local(tmp_path: Any, make_test_image: Any) -> None:
    url = str(tmp_path / "img.ome.zarr")
    data, _ = make_test_image(url, SHAPE, chunks=8, n_levels=1)
    _check_cached_reads(url, None, data)


@pytest.mark.s3
def test_cached_reads_equal_plain_reads_s3(s3_server: Any, make_test_image: Any) -> None:
    opts = s3_server.storage_options()
    url = s3_server.url(s3_server.create_bucket(), "img.ome.zarr")
    data, _ = make_test_image(url, SHAPE, chunks=8, n_levels=1, storage_options=opts)
    _check_cached_reads(url, opts, data)


def test_metadata_is_read_once_and_handed_to_workers(tmp_path: Any, make_test_image: Any) -> None:
    import pickle

    url = str(tmp_path / "img.ome.zarr")
    make_test_image(url, SHAPE, chunks=8, n_levels=2)
    token = uuid.uuid4().hex
    _counts(url)
    ctor = OMEZarrReaderConstructor(url, 1, cache=token)
    assert ctor.geometry.shape == (20, 18, 22)
    first = _counts(url)
    assert first.metadata_requests == len(first.metadata_objects) == 3  # group + 2 levels
    # Another constructor of the run: no metadata request.
    OMEZarrReaderConstructor(url, 0, cache=token).geometry  # noqa: B018
    assert _counts(url).metadata_requests == 0
    # A "worker" (here: a cleared cache) seeds the documents the constructor carries.
    shipped = pickle.loads(pickle.dumps(ctor))
    process_cache().clear()
    from ngff_dreg.io.storage import chunk_cache

    chunk_cache._ARRAYS.clear()
    shipped().read_box(Box((0, 0, 0), (4, 4, 4)))
    worker = _counts(url)
    assert worker.metadata_requests == 0 and worker.chunk_requests == 1


def test_chunk_cache_is_bounded_lru() -> None:
    cache = ChunkCache(max_bytes=10)
    scope = ("t", "u")
    cache.put(scope, "a", b"1234")
    cache.put(scope, "b", b"5678")
    assert cache.get(scope, "a") == b"1234"  # a is now the most recent
    cache.put(scope, "c", b"90ab")  # evicts b, the least recently used
    assert cache.get(scope, "b") is None and cache.get(scope, "a") == b"1234"
    assert cache.nbytes == 8 <= cache.max_bytes
    cache.put(scope, "huge", b"x" * 11)  # larger than the budget: not kept
    assert cache.get(scope, "huge") is None
    cache.put(scope, "zarr.json", b"{}" * 20, metadata=True)  # pinned, outside the budget
    for i in range(5):
        cache.put(scope, f"k{i}", b"abcd")
    assert cache.get(scope, "zarr.json") == b"{}" * 20
    assert cache.get(("other", "u"), "k4") is None  # another run never sees these
    with pytest.raises(ValueError):
        ChunkCache(-1)


def test_the_process_cache_follows_its_budget_setting(ngff_config: Any) -> None:
    """The budget is read at each use: a value set after the cache was made resizes it."""
    cache = process_cache()
    scope = ("budget-test", "u")
    cache.put(scope, "a", b"x" * 600)
    cache.put(scope, "b", b"y" * 600)
    ngff_config({"io.chunk-cache-mb": 0.001})   # 1000 bytes: only the newer chunk fits
    assert process_cache() is cache and cache.max_bytes == 1000
    assert cache.pieces(scope) == ["b"]
    ngff_config({"io.chunk-cache-mb": 0})
    assert not cache_enabled() and process_cache().nbytes == 0


def _sharded_image(url: str, opts: dict[str, Any] | None, make_test_image: Any) -> np.ndarray:
    data, _ = make_test_image(url, SHAPE, chunks=8, n_levels=1, storage_options=opts, shards=16)
    return np.asarray(data)


#: zarr >= 3.3 reads the inner chunks of a partial shard with ``Store.get_ranges``,
#: which merges nearby ranges into one request (zarr's ``array.sharding_coalesce_*``)
COALESCES = hasattr(zarr.abc.store.Store, "get_ranges")


@pytest.mark.s3
@pytest.mark.parametrize("coalesce", [False, True], ids=["one-get-per-range", "zarr-default"])
def test_sharded_reads_fetch_only_the_inner_chunks_needed(
    s3_server: Any, make_test_image: Any, coalesce: bool
) -> None:
    """The same requests, bytes and cache hits on every zarr the project allows.

    Without zarr's range coalescing, any zarr makes one request for the shard
    index and one per inner chunk, and the counts are those of zarr 3.1 exactly;
    with it (zarr >= 3.3's default), the two adjacent inner chunks are one request.
    """
    opts = s3_server.storage_options()
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "sharded.ome.zarr")
    data = _sharded_image(url, opts, make_test_image)
    ctor = OMEZarrReaderConstructor(url, 0, opts, cache=uuid.uuid4().hex)
    assert ctor.shard_shape == (16, 16, 16) and ctor.chunk_shape == (8, 8, 8)
    box = Box((2, 2, 2), (10, 6, 6))  # two inner chunks of one shard
    settings = {} if coalesce else {"array.sharding_coalesce_max_gap_bytes": -1}
    with zarr.config.set(settings):
        _counts(url)
        np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])
        c = _counts(url)
        shard_size = s3_server.client().head_object(
            Bucket=bucket, Key="sharded.ome.zarr/0/c/0/0/0")["ContentLength"]
        # the shard index (a suffix range), then the inner chunks' ranges
        assert sorted(k.split("[")[1] for k in c.pieces)[0].startswith("-")
        assert all("[" in k for k in c.pieces) and c.cache_hits == 0
        assert c.chunk_requests == (2 if coalesce and COALESCES else 3)
        assert c.chunk_bytes < shard_size / 2 and c.chunk_bytes == c.distinct_bytes
        # read again: every piece from the cache, nothing fetched
        np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])
        again = _counts(url)
        assert again.chunk_requests == 0
        assert again.cache_hits == 3  # the index and each range, as asked, on any zarr
        # The whole image, through the cache, equals a plain read.
        full = Box.full(SHAPE)
        np.testing.assert_array_equal(ctor().read_box(full), data)
        np.testing.assert_array_equal(OMEZarrReaderConstructor(url, 0, opts)().read_box(full),
                                      data)


def test_sharded_local_reads_equal_plain(tmp_path: Any, make_test_image: Any) -> None:
    url = str(tmp_path / "sharded.ome.zarr")
    data = _sharded_image(url, None, make_test_image)
    ctor = OMEZarrReaderConstructor(url, 0, cache=uuid.uuid4().hex)
    for box in BOXES:
        np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])


def test_shards_are_refused_for_zarr_v2(tmp_path: Any, make_test_image: Any) -> None:
    url = str(tmp_path / "v2.ome.zarr")
    with pytest.raises(InvalidInputDataError, match="Zarr v3"):
        make_test_image(url, SHAPE, chunks=8, n_levels=1, version="0.4", shards=16)


# ---------------------------------------------------------------- host cache
_OTHER_PROCESS = """
import json, sys
from ngff_dreg.geometry import Box
from ngff_dreg.io.storage.chunk_cache import open_host_cache
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.store_stats import take_counts
url, token, boxes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
assert open_host_cache(token)
ctor = OMEZarrReaderConstructor(url, 0, cache=token)
for start, stop in boxes:
    ctor().read_box(Box(tuple(start), tuple(stop)))
print(json.dumps(take_counts()[1][url].chunk_requests))
"""


def test_host_cache_fetches_each_chunk_once_per_machine(
    tmp_path: Any, make_test_image: Any, ngff_config: Any
) -> None:
    import json
    import os
    import subprocess
    import sys

    from ngff_dreg.io.storage.chunk_cache import close_host_cache, host_cache, open_host_cache

    url = str(tmp_path / "img.ome.zarr")
    data, _ = make_test_image(url, SHAPE, chunks=8, n_levels=1)
    ngff_config({"io.host-cache-dir": str(tmp_path / "host")})
    token = uuid.uuid4().hex
    boxes = json.dumps([[list(b.start), list(b.stop)] for b in BOXES])
    # Another worker process of this machine reads the boxes first...
    out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, url, token, boxes],
                         capture_output=True, text=True, check=True,
                         env={**os.environ,
                              "DASK_NGFF_DREG__IO__HOST_CACHE_DIR": str(tmp_path / "host")})
    first = json.loads(out.stdout.strip().splitlines()[-1])
    distinct = len({
        tuple(lo // 8 + i for lo, i in zip(b.start, idx)) for b in BOXES
        for idx in np.ndindex(*[(hi - 1) // 8 - lo // 8 + 1 for lo, hi in zip(b.start, b.stop)])
    })
    assert first == distinct
    # ...then this process reads the same voxels without fetching a single chunk.
    assert open_host_cache(token)
    _counts(url)
    ctor = OMEZarrReaderConstructor(url, 0, cache=token)
    plain = OMEZarrReaderConstructor(url, 0)
    for box in BOXES:
        got = ctor().read_box(box)
        np.testing.assert_array_equal(got, data[box.slices])
        np.testing.assert_array_equal(got, plain().read_box(box))
    _counts(url)  # the plain reads fetched; the cached ones above did not:
    ctor2 = OMEZarrReaderConstructor(url, 0, cache=token)
    process_cache().clear()  # as if evicted: served from the host cache again
    np.testing.assert_array_equal(ctor2().read_box(BOXES[1]), data[BOXES[1].slices])
    c = _counts(url)
    assert c.chunk_requests == 0 and c.cache_hits == _chunks_touched(BOXES[1], 8)
    close_host_cache(token)
    assert host_cache(token) is None and not (tmp_path / "host").joinpath(
        f"ngff-dreg-chunks-{token}").exists()


def test_host_cache_waits_for_another_fetch_and_keeps_its_budget(tmp_path: Any) -> None:
    import asyncio

    from ngff_dreg.io.storage.chunk_cache import HostCache

    host = HostCache(str(tmp_path / "h"), max_bytes=10)
    scope = ("t", "u")
    assert host.read(scope, "a") is None
    assert host.claim(scope, "a") and not host.claim(scope, "a")  # a second fetcher waits

    async def other_fetch_ends() -> bytes | None:
        waiting = asyncio.ensure_future(host.wait(scope, "a", timeout=5))
        await asyncio.sleep(0.02)
        host.write(scope, "a", b"1234")
        host.release(scope, "a")
        return await waiting

    assert asyncio.run(other_fetch_ends()) == b"1234"
    assert host.claim(scope, "b")
    host.release(scope, "b")  # the fetch failed: a waiter gives up at once
    assert asyncio.run(host.wait(scope, "b", timeout=5)) is None
    host.write(scope, "b", b"5678")
    host.write(scope, "c", b"90ab")  # over the budget: a, written first, goes
    assert host.read(scope, "a") is None and host.read(scope, "c") == b"90ab"
    host.write(scope, "huge", b"x" * 11)
    assert host.read(scope, "huge") is None


def test_a_claim_of_a_dead_process_is_not_waited_for(tmp_path: Any) -> None:
    """Issue #23 item 5: a worker killed while fetching leaves a claim; others move on."""
    import asyncio
    import subprocess
    import sys
    import time

    from ngff_dreg.io.storage.chunk_cache import HostCache

    host = HostCache(str(tmp_path / "h"), max_bytes=100)
    scope = ("t", "u")
    code = ("import sys\nfrom ngff_dreg.io.storage.chunk_cache import HostCache\n"
            f"assert HostCache({str(tmp_path / 'h')!r}, 100).claim(('t', 'u'), 'a')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)  # claims, then exits
    assert not host.claim(scope, "a")  # its claim is still there
    t0 = time.monotonic()
    assert asyncio.run(host.wait(scope, "a", timeout=30)) is None  # the caller fetches it
    assert time.monotonic() - t0 < 2.0
    assert host.claim(scope, "a")  # the dead claim was removed
    # a live claimant (this process's own claim here) is waited for until the timeout
    t0 = time.monotonic()
    assert asyncio.run(host.wait(scope, "a", timeout=0.3)) is None
    assert time.monotonic() - t0 >= 0.3


def test_host_cache_sweeps_directories_of_killed_runs(tmp_path: Any, ngff_config: Any) -> None:
    import os
    import time

    from ngff_dreg.io.storage.chunk_cache import close_host_cache, open_host_cache

    ngff_config({"io.host-cache-dir": str(tmp_path)})
    stale, recent = tmp_path / "ngff-dreg-chunks-old", tmp_path / "ngff-dreg-chunks-busy"
    for d in (stale, recent):
        d.mkdir()
        (d / "chunk").write_bytes(b"x")
    day_ago = time.time() - 2 * 86400
    os.utime(stale, (day_ago, day_ago))
    token = uuid.uuid4().hex
    assert open_host_cache(token)
    assert not stale.exists() and recent.exists()  # another run's live cache stays
    close_host_cache(token)


def test_concurrent_misses_of_one_chunk_fetch_it_once() -> None:
    """Tasks of one process missing the same piece together share one fetch."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    from ngff_dreg.io.storage.chunk_cache import CachingStore, ChunkCache
    from ngff_dreg.io.storage.counting_store import CountingStore

    class Slow(MemoryStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            await asyncio.sleep(0.05)  # long enough for every task to miss together
            return await super().get(key, prototype, byte_range)

    proto = default_buffer_prototype()
    base = Slow()
    asyncio.run(base.set("0/c/0", proto.buffer.from_bytes(b"x" * 100)))
    store = CachingStore(CountingStore(base, "mem://slow"), ("t", "mem://slow"), "mem://slow",
                         ChunkCache(10**6))

    async def many() -> list[Any]:
        return list(await asyncio.gather(*(store.get("0/c/0", proto) for _ in range(8)),
                                         store.get("0/c/9", proto), store.get("0/c/9", proto)))

    take_counts()
    got = asyncio.run(many())
    assert all(b.to_bytes() == b"x" * 100 for b in got[:8]) and got[8:] == [None, None]
    c = take_counts()[1]["mem://slow"]
    assert (c.chunk_requests, c.cache_hits, c.missing) == (1, 7, 1)
