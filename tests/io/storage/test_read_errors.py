"""A chunk that cannot be read, or decoded, is an error naming its key, never fill values."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from ngff_dreg.errors import (
    CorruptChunkError,
    InvalidInputDataError,
    StoreAccessError,
    StoreChangedError,
    StoreReadError,
)
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.read_errors import ReadErrorStore
from ngff_dreg.io.storage.retry import is_transient

SHAPE = (16, 16, 16)
KEY = "0/c/1/1/1"                       # level 0's chunk (1, 1, 1): voxels [8:16]³
HIT = Box((4, 4, 4), (12, 12, 12))      # touches all 8 chunks
MISS = Box((0, 0, 0), (8, 8, 8))        # chunk (0, 0, 0) only


def _write(url: str, shards: int | None = None, version: str = "0.5") -> np.ndarray:
    data = (np.arange(int(np.prod(SHAPE))) % 250 + 1).reshape(SHAPE).astype(np.uint16)
    geom = ImageGeometry(shape=SHAPE, spacing=(1.0,) * 3, origin=(0.0,) * 3, unit="micrometer")
    write_multiscale(url, data, geom, version=version, chunks=8, n_levels=1, overwrite=True,
                     shards=shards)
    return data


@pytest.fixture
def fast_retries(ngff_config: Any) -> int:
    """Two read attempts, 10 ms apart."""
    ngff_config({"io.read-attempts": 2, "io.read-backoff": 0.01})
    return 2


@pytest.mark.parametrize("cache", [None, "token"])
@pytest.mark.parametrize("inventory", ["auto", False])
def test_a_chunk_that_stays_unreadable_is_an_error_naming_it(
    tmp_path: Path, read_faults: Any, fast_retries: int, ngff_config: Any,
    cache: str | None, inventory: str | bool,
) -> None:
    ngff_config({"io.chunk-inventory": inventory})
    url = str(tmp_path / "img.ome.zarr")
    data = _write(url)
    ctor = OMEZarrReaderConstructor(url, cache=None if cache is None else uuid.uuid4().hex)
    read_faults.fail(tmp_path / "img.ome.zarr" / KEY)
    reader = ctor()
    with pytest.raises(StoreReadError) as info:
        reader.read_box(HIT)
    err = info.value
    msg = str(err)
    assert msg.startswith(f"{url}: cannot read chunk '{KEY}' of level '0'"), msg
    assert "OSError" in msg and "Input/output error" in msg, msg
    assert f"gave up after {fast_retries} attempts" in msg, msg
    assert (err.key, err.level, err.url) == (KEY, "0", url)
    assert read_faults.hits == {str((tmp_path / "img.ome.zarr" / KEY).resolve()): fast_retries}
    # The other chunks still read, and the chunk does again once the store serves it.
    np.testing.assert_array_equal(reader.read_box(MISS), data[MISS.slices])
    read_faults.clear()
    np.testing.assert_array_equal(reader.read_box(HIT), data[HIT.slices])


def test_a_chunk_read_that_fails_twice_then_works_reads_the_stored_voxels(
    tmp_path: Path, read_faults: Any, ngff_config: Any,
) -> None:
    ngff_config({"io.read-backoff": 0.01})   # 4 attempts (the default)
    url = str(tmp_path / "img.ome.zarr")
    data = _write(url)
    read_faults.fail(tmp_path / "img.ome.zarr" / KEY, times=2)
    got = OMEZarrReaderConstructor(url, cache=uuid.uuid4().hex)().read_box(HIT)
    np.testing.assert_array_equal(got, data[HIT.slices])
    assert sum(read_faults.hits.values()) == 2


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"),
                                   ConnectionResetError(104, "Connection reset by peer"),
                                   RuntimeError("HTTP 500 Internal Server Error")])
def test_every_kind_of_store_failure_becomes_a_store_read_error(
    tmp_path: Path, read_faults: Any, fast_retries: int, error: BaseException,
) -> None:
    url = str(tmp_path / "img.ome.zarr")
    _write(url)
    read_faults.fail(tmp_path / "img.ome.zarr" / KEY, error=lambda: error)
    with pytest.raises(StoreReadError, match=rf"'{KEY}'.*{type(error).__name__}: .*"
                                             rf"{str(error).split(']')[-1].strip()}"):
        OMEZarrReaderConstructor(url)().read_box(HIT)


SHARD = "0/c/0/0/0"  # the one 16³ shard of 8³ inner chunks


@pytest.mark.parametrize("coalesce", [False, True], ids=["one-get-per-range", "zarr-default"])
def test_an_inner_chunk_range_that_stays_unreadable_is_a_store_read_error(
    tmp_path: Path, read_faults: Any, fast_retries: int, coalesce: bool,
) -> None:
    """On any zarr: retried, then one StoreReadError naming the shard (no ExceptionGroup)."""
    import zarr

    url = str(tmp_path / "img.ome.zarr")
    data = _write(url, shards=16)
    read_faults.fail(tmp_path / "img.ome.zarr" / SHARD, ranges_only=True,
                     error=lambda: ConnectionResetError(104, "Connection reset by peer"))
    settings = {} if coalesce else {"array.sharding_coalesce_max_gap_bytes": -1}
    with zarr.config.set(settings), pytest.raises(StoreReadError) as info:
        OMEZarrReaderConstructor(url, cache=uuid.uuid4().hex)().read_box(MISS)
    err = info.value
    assert (err.key, err.level) == (SHARD, "0")
    assert "ConnectionResetError" in str(err) and f"after {fast_retries} attempts" in str(err)
    assert sum(read_faults.hits.values()) >= fast_retries
    # transient: failing once, then working (the second of the 2 attempts), gives the voxels
    read_faults.clear()
    read_faults.hits.clear()
    read_faults.fail(tmp_path / "img.ome.zarr" / SHARD, times=1, ranges_only=True,
                     error=lambda: ConnectionResetError(104, "Connection reset by peer"))
    with zarr.config.set({"array.sharding_coalesce_max_gap_bytes": -1} if not coalesce else {}):
        got = OMEZarrReaderConstructor(url, cache=uuid.uuid4().hex)().read_box(MISS)
    np.testing.assert_array_equal(got, data[MISS.slices])


@pytest.mark.parametrize(("version", "shards", "key"),
                         [("0.5", None, KEY), ("0.4", None, "0/1/1/1"), ("0.5", 16, "0/c/0/0/0")])
def test_a_corrupt_chunk_is_an_error_naming_it(
    tmp_path: Path, version: str, shards: int | None, key: str, ngff_config: Any,
) -> None:
    ngff_config({"io.read-backoff": 5})   # a retry would time the test out
    url = str(tmp_path / "img.ome.zarr")
    data = _write(url, shards=shards, version=version)
    chunk = tmp_path / "img.ome.zarr" / key
    size = chunk.stat().st_size
    chunk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)))
    reader = OMEZarrReaderConstructor(url, cache=uuid.uuid4().hex)()
    with pytest.raises(CorruptChunkError) as info:
        reader.read_box(HIT)
    err = info.value
    assert str(err).startswith(f"{url}: chunk '{key}' of level '0' cannot be decoded"), str(err)
    assert err.key == key
    assert isinstance(err, StoreReadError) and isinstance(err, InvalidInputDataError)
    assert not is_transient(err)
    if shards is None:   # the rest of the image still reads
        np.testing.assert_array_equal(reader.read_box(MISS), data[MISS.slices])


def test_a_deleted_chunk_is_still_a_changed_store(tmp_path: Path) -> None:
    """The read-error wrapper leaves "no such object" to the missing-chunk guard."""
    url = str(tmp_path / "img.ome.zarr")
    _write(url)
    worker = pickle.loads(pickle.dumps(OMEZarrReaderConstructor(url)))
    assert worker.meta.inventory is not None
    (tmp_path / "img.ome.zarr" / KEY).unlink()
    with pytest.raises(StoreChangedError, match=KEY):
        worker().read_box(HIT)


class _Broken(MemoryStore):
    """A memory store whose reads of one key raise ``error``."""

    def __init__(self, key: str, error: BaseException) -> None:
        super().__init__()
        self.bad, self.error = key, error

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == self.bad:
            raise self.error
        return await super().get(key, *args, **kwargs)


def _get(store: Any, key: str) -> Any:
    return asyncio.run(store.get(key, default_buffer_prototype()))


def test_the_wrapper_redacts_credentials_and_keeps_missing_objects_missing() -> None:
    url = "https://user:hunter2@example.org/data/img.ome.zarr?X-Amz-Signature=abc123"
    boom = OSError("503 Service Unavailable for https://user:hunter2@example.org/x?token=t0k")
    store = ReadErrorStore(_Broken("0/c/0/0/0", boom), url, "0")
    with pytest.raises(StoreReadError) as info:
        _get(store, "0/c/0/0/0")
    msg = str(info.value)
    assert "hunter2" not in msg and "abc123" not in msg and "t0k" not in msg, msg
    assert "https://***@example.org/data/img.ome.zarr" in msg and "'0/c/0/0/0'" in msg
    assert "OSError: 503 Service Unavailable" in msg
    assert info.value.__cause__ is boom
    assert is_transient(info.value)
    # Missing is not an error; metadata reads are named as such.
    assert _get(store, "0/c/9/9/9") is None
    meta = ReadErrorStore(_Broken("0/zarr.json", boom), "s3://b/img.ome.zarr", "0")
    with pytest.raises(StoreReadError, match=r"cannot read metadata '0/zarr.json'"):
        _get(meta, "0/zarr.json")
    # A short read (a plain StoreAccessError from below) gets the key too.
    short = ReadErrorStore(_Broken("0/c/1", StoreAccessError("short read")), "s3://b/i", "0")
    with pytest.raises(StoreReadError, match=r"s3://b/i: cannot read chunk '0/c/1'.*short read"):
        _get(short, "0/c/1")
    # Other ngff-dreg errors (the missing-chunk guard's) pass through unchanged.
    changed = ReadErrorStore(_Broken("0/c/1", StoreChangedError("gone")), "s3://b/i", "0")
    with pytest.raises(StoreChangedError, match=r"^gone$"):
        _get(changed, "0/c/1")


def test_store_read_errors_survive_pickling_with_their_fields() -> None:
    """Dask sends a task's exception to the client pickled."""
    for cls in (StoreReadError, CorruptChunkError):
        err = cls("s3://b/i: cannot read chunk '0/c/1'", url="s3://b/i", key="0/c/1", level="0")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err)
        assert (back.url, back.key, back.level) == ("s3://b/i", "0/c/1", "0")
