"""Chunks deleted between planning and reading: the run stops, no field is written.

The chunk inventory made at planning (:mod:`ngff_dreg.io.storage.chunk_inventory`)
costs one S3 LIST request per 1000 objects, measured here through a proxy in
front of moto; transient LIST failures are retried; and a chunk of the fixed
image deleted after a block stage was planned stops ``register`` with a
:class:`~ngff_dreg.errors.StoreChangedError` instead of a field filled in
around a zero block.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_helpers import small_schedule

import ngff_dreg.block_stage
from ngff_dreg.errors import StoreChangedError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.store_stats import take_counts
from ngff_dreg.pipeline import register


def _is_list(line: str) -> bool:
    return line.startswith("GET ") and "list-type=2" in line


def _opts(s3_server: Any, endpoint: str) -> dict[str, Any]:
    opts = s3_server.storage_options()
    opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": endpoint}
    return opts


@pytest.fixture(scope="module")
def many_chunks(s3_server: Any) -> tuple[str, str, int]:
    """A 2-D level of 33 x 33 = 1089 chunk objects on moto: (bucket, URL, objects)."""
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "tiles.ome.zarr")
    data = (np.arange(66 * 66) % 200 + 1).reshape(66, 66).astype(np.uint8)
    geom = ImageGeometry(shape=(66, 66), spacing=(1.0, 1.0), origin=(0.0, 0.0), unit="micrometer")
    write_multiscale(url, data, geom, version="0.5", chunks=2, n_levels=1,
                     storage_options=s3_server.storage_options())
    return bucket, url, 33 * 33


@pytest.mark.s3
def test_planning_lists_a_level_in_one_request_per_1000_objects(
    s3_server: Any, many_chunks: tuple[str, str, int], fault_proxy: Any
) -> None:
    bucket, url, n = many_chunks
    proxy = fault_proxy(s3_server.endpoint_url, mode="none")
    take_counts()
    ctor = OMEZarrReaderConstructor(url, level=0, storage_options=_opts(s3_server,
                                                                        proxy.endpoint_url))
    inv = ctor.meta.inventory
    assert inv is not None and inv.present == n and inv.nbytes == math.ceil(n / 8)
    list_requests = proxy.requests[f"/{bucket}"]    # requests on the bucket: LISTs
    assert list_requests == math.ceil((n + 1) / 1000) == 2   # + the level's zarr.json
    counts = take_counts()[1][url]
    assert counts.list_calls == 1 and counts.listed_keys == n + 1


@pytest.mark.s3
def test_transient_list_failures_are_retried(
    s3_server: Any, many_chunks: tuple[str, str, int], fault_proxy: Any,
    ngff_config: Any,
) -> None:
    ngff_config({"io.read-backoff": 0.05})
    _, url, n = many_chunks
    # More failures in a row than s3fs retries itself (max_attempts=2 in the options).
    proxy = fault_proxy(s3_server.endpoint_url, mode="error", fail_first=3, match=_is_list)
    ctor = OMEZarrReaderConstructor(url, level=0, storage_options=_opts(s3_server,
                                                                        proxy.endpoint_url))
    inv = ctor.meta.inventory
    assert proxy.total_faults == 3
    assert inv is not None and inv.present == n


@pytest.mark.s3
def test_transient_chunk_errors_are_still_retried_with_the_inventory(
    s3_server: Any, many_chunks: tuple[str, str, int], fault_proxy: Any,
    ngff_config: Any,
) -> None:
    ngff_config({"io.read-backoff": 0.05})
    _, url, _ = many_chunks
    direct = OMEZarrReaderConstructor(url, level=0, storage_options=s3_server.storage_options())
    want = direct().read_box(Box((0, 0), (8, 8)))
    proxy = fault_proxy(s3_server.endpoint_url, mode="error", fail_first=3,
                        match=lambda line: line.startswith("GET ") and "/c/" in line)
    ctor = OMEZarrReaderConstructor(url, level=0, storage_options=_opts(s3_server,
                                                                        proxy.endpoint_url))
    assert ctor.meta.inventory is not None
    np.testing.assert_array_equal(ctor().read_box(Box((0, 0), (8, 8))), want)
    assert proxy.total_faults == 3 * 16


@pytest.mark.slow
@pytest.mark.cluster
def test_register_stops_when_a_fixed_chunk_is_deleted_after_planning(
    small_pair: Any, dask_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ngff_config: Any,
) -> None:
    fixed = str(tmp_path / "fixed.ome.zarr")
    moving = str(tmp_path / "moving.ome.zarr")
    shutil.copytree(small_pair.fixed, fixed)
    shutil.copytree(small_pair.moving, moving)
    # No cache token: the global stage must not leave the chunk in a worker's cache.
    ngff_config({"io.chunk-cache-mb": 0})
    chunk = Path(fixed) / "0" / "c" / "0" / "0" / "0"   # a corner: most blocks never read it
    assert chunk.is_file()
    planned = ngff_dreg.block_stage.register_images
    deleted = []

    def plan_then_delete(*args: Any, **kwargs: Any) -> Any:
        schedule = planned(*args, **kwargs)     # the client lists level 0 here
        chunk.unlink()                          # ... and the chunk goes before any read
        deleted.append(chunk)
        return schedule

    monkeypatch.setattr(ngff_dreg.block_stage, "register_images", plan_then_delete)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(StoreChangedError, match=r"fixed\.ome\.zarr/0: chunk '0/c/0/0/0'"):
        register(fixed, moving, out, schedule=small_schedule(), client=dask_client,
                 progress=False)
    assert deleted
    assert output_status(out) != "complete"
