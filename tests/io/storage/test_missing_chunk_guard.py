"""A chunk deleted between planning and reading is an error, never fill values."""

from __future__ import annotations

import asyncio
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from ngff_dreg.errors import StoreChangedError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.chunk_inventory import ChunkInventory, KeyScheme
from ngff_dreg.io.storage.missing_chunk_guard import MissingChunkGuard
from ngff_dreg.io.storage.store_stats import take_counts

SHAPE = (16, 16, 16)
WRITTEN = Box((0, 0, 0), (8, 8, 8))     # chunk (0, 0, 0): written, deleted later
BLANK = Box((8, 8, 8), (16, 16, 16))    # chunk (1, 1, 1): all zeros, never written
OTHER = Box((0, 8, 0), (8, 16, 8))      # chunk (0, 1, 0): written, left alone


def _data() -> np.ndarray:
    data = (np.arange(int(np.prod(SHAPE))) % 250 + 1).reshape(SHAPE).astype(np.uint16)
    data[BLANK.slices] = 0
    return data


def _write(url: str, version: str, storage_options: dict[str, Any] | None = None,
           shards: int | None = None) -> np.ndarray:
    data = _data()
    geom = ImageGeometry(shape=SHAPE, spacing=(1.0,) * 3, origin=(0.0,) * 3, unit="micrometer")
    write_multiscale(url, data, geom, version=version, chunks=8, n_levels=1, overwrite=True,
                     storage_options=storage_options, shards=shards)
    return data


def _key(version: str, coords: tuple[int, ...] = (0, 0, 0)) -> str:
    """Store key (below the image group) of level 0's chunk at ``coords``."""
    spelled = "/".join(map(str, coords))
    return f"0/{spelled}" if version == "0.4" else f"0/c/{spelled}"


def _planned(url: str, **kwargs: Any) -> OMEZarrReaderConstructor:
    """A reader constructor planned on the client, as a worker receives it."""
    ctor = OMEZarrReaderConstructor(url, level=0, **kwargs)
    assert ctor.meta.inventory is not None        # listed at planning time
    return pickle.loads(pickle.dumps(ctor))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("cache", [None, "run-token"])
def test_deleted_chunk_is_an_error_naming_the_key(tmp_path: Path, version: str,
                                                 cache: str | None) -> None:
    url = str(tmp_path / "img.zarr")
    data = _write(url, version)
    worker = _planned(url, cache=None if cache is None else f"{cache}-{uuid.uuid4().hex}")
    (tmp_path / "img.zarr" / _key(version)).unlink()     # deleted after planning
    reader = worker()
    with pytest.raises(StoreChangedError) as info:
        reader.read_box(WRITTEN)
    msg = str(info.value)
    assert f"{url}/0" in msg and repr(_key(version)) in msg
    # The chunks still there read as before; the never-written one is fill value.
    np.testing.assert_array_equal(reader.read_box(OTHER), data[OTHER.slices])
    np.testing.assert_array_equal(reader.read_box(BLANK), 0)


def test_deleted_shard_is_an_error(tmp_path: Path) -> None:
    url = str(tmp_path / "sharded.zarr")
    data = _write(url, "0.5", shards=16)                # one shard of 2x2x2 inner chunks
    worker = _planned(url)
    assert worker.meta.inventory is not None and worker.meta.inventory.grid == (1, 1, 1)
    np.testing.assert_array_equal(worker().read_box(OTHER), data[OTHER.slices])
    (tmp_path / "sharded.zarr" / "0" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreChangedError, match=r"'0/c/0/0/0'"):
        _planned_again(worker).read_box(WRITTEN)


def _planned_again(worker: OMEZarrReaderConstructor) -> Any:
    return pickle.loads(pickle.dumps(worker))()


def test_never_written_chunk_still_reads_as_fill_value(tmp_path: Path) -> None:
    url = str(tmp_path / "img.zarr")
    _write(url, "0.5")
    assert not (tmp_path / "img.zarr" / _key("0.5", (1, 1, 1))).exists()
    reader = _planned(url)()
    np.testing.assert_array_equal(reader.read_box(BLANK), 0)
    np.testing.assert_array_equal(reader.read_box(Box.full(SHAPE)), _data())


def test_without_the_inventory_a_deleted_chunk_reads_as_zeros(
    tmp_path: Path, ngff_config: Any
) -> None:
    """The escape hatch restores zarr's behaviour, which is what the guard prevents."""
    ngff_config({"io.chunk-inventory": False})
    url = str(tmp_path / "img.zarr")
    _write(url, "0.5")
    ctor = OMEZarrReaderConstructor(url, level=0)
    assert ctor.meta.inventory is None
    (tmp_path / "img.zarr" / _key("0.5")).unlink()
    np.testing.assert_array_equal(ctor().read_box(WRITTEN), 0)


def test_a_chunk_restored_after_planning_reads_normally(tmp_path: Path) -> None:
    url = str(tmp_path / "img.zarr")
    data = _write(url, "0.5")
    path = tmp_path / "img.zarr" / _key("0.5")
    keep = tmp_path / "chunk"
    shutil.copy(path, keep)
    worker = _planned(url)
    path.unlink()
    with pytest.raises(StoreChangedError):
        pickle.loads(pickle.dumps(worker))().read_box(WRITTEN)
    shutil.copy(keep, path)                               # the writer finished
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(worker))().read_box(WRITTEN),
                                  data[WRITTEN.slices])


class _Raising(zarr.storage.MemoryStore):
    """A store whose ``get`` raises for missing keys (as some fsspec stores do)."""

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await super().get(key, prototype, byte_range)
        if buf is None:
            raise FileNotFoundError(key)
        return buf


def test_guard_maps_file_not_found_of_an_inventoried_chunk() -> None:
    inv = ChunkInventory("0", KeyScheme("c/", "/", 1), (2,), b"\x80", 1)  # c/0 existed
    guard = MissingChunkGuard(_Raising(), inv, "s3://b/img.zarr/0")
    proto = default_buffer_prototype()
    with pytest.raises(StoreChangedError, match=r"s3://b/img.zarr/0: chunk '0/c/0'") as info:
        asyncio.run(guard.get("0/c/0", proto))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(FileNotFoundError):                 # never written: untouched
        asyncio.run(guard.get("0/c/1", proto))


# -- S3 (moto) ------------------------------------------------------------------
@pytest.mark.s3
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_deleted_chunk_on_s3(s3_server: Any, version: str) -> None:
    opts = s3_server.storage_options()
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "img.ome.zarr")
    data = _write(url, version, storage_options=opts)
    take_counts()
    worker = _planned(url, storage_options=opts)
    counts = take_counts()[1][url]
    assert counts.list_calls == 1 and counts.listed_keys >= 7   # 7 chunks + metadata
    s3_server.client().delete_object(Bucket=bucket, Key=f"img.ome.zarr/{_key(version)}")
    reader = worker()
    with pytest.raises(StoreChangedError) as info:
        reader.read_box(WRITTEN)
    assert f"{url}/0" in str(info.value) and repr(_key(version)) in str(info.value)
    np.testing.assert_array_equal(reader.read_box(OTHER), data[OTHER.slices])
    np.testing.assert_array_equal(reader.read_box(BLANK), 0)


# -- HTTP: no listing by default ------------------------------------------------------


def test_http_store_is_not_listed_and_reads_as_before(http_root: tuple[Path, str]) -> None:
    root, base = http_root
    data = _write(str(root / "h.zarr"), "0.5")
    take_counts()
    ctor = OMEZarrReaderConstructor(f"{base}/h.zarr", level=0)
    assert ctor.meta.inventory is None
    np.testing.assert_array_equal(ctor().read_box(Box.full(SHAPE)), data)
    assert take_counts()[1][f"{base}/h.zarr"].list_calls == 0
