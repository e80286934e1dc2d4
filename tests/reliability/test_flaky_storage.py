"""Flaky object storage: a fault-injecting proxy between ngff-dreg and moto.

What happens without ngff-dreg's own retry (measured with this proxy, chunk
GETs faulted on their first N requests): s3fs absorbs up to ~5 faults per
object (HTTP 503 SlowDown, dropped connections, truncated bodies) within ~2 s;
beyond that a truncated body surfaced as ``StoreAccessError
(ClientPayloadError)``. The reader now adds a slower retry layer
(:mod:`ngff_dreg.io.storage.retry`); these tests pin both layers down and check that a
run through a flaky store gives the undisturbed answer, and that a dead store
gives a clear error naming the object and no output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rel_helpers import field_difference, small_schedule, via_endpoint

from ngff_dreg.errors import ConfigError, StoreAccessError, StoreNotFoundError, StoreReadError
from ngff_dreg.geometry import Box
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.retry import RetryPolicy, retry_transient
from ngff_dreg.pipeline import register

pytestmark = [pytest.mark.s3]


def test_retry_policy_retries_only_transient_errors() -> None:
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise StoreAccessError("s3://b/x: cannot access the store")
        return "ok"

    pol = RetryPolicy(attempts=4, backoff=1.0, max_wait=1.5, jitter=0.0)
    assert retry_transient(flaky, "read", policy=pol, sleep=sleeps.append) == "ok"
    assert sleeps == [1.0, 1.5]  # doubled, capped

    def missing() -> None:
        calls["n"] += 1
        raise StoreNotFoundError("s3://b/x: not found")

    calls["n"] = 0
    with pytest.raises(StoreNotFoundError):
        retry_transient(missing, "read", policy=pol, sleep=sleeps.append)
    assert calls["n"] == 1  # never retried

    def dead() -> None:
        raise StoreAccessError("s3://b/x/0: cannot access the store")

    with pytest.raises(StoreAccessError, match=r"s3://b/x/0.*gave up after 4 attempts"):
        retry_transient(dead, "read", policy=pol, sleep=lambda s: None)


def test_retry_policy_from_config(ngff_config: Any) -> None:
    ngff_config({"io.read-attempts": 7, "io.read-backoff": 0.25})
    pol = RetryPolicy.from_config()
    assert (pol.attempts, pol.backoff, pol.max_wait) == (7, 0.25, 8.0)
    ngff_config({"io.read-attempts": "lots"})
    with pytest.raises(ConfigError, match=r"ngff-dreg\.io\.read-attempts='lots'"):
        RetryPolicy.from_config()


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_reader_rides_out_an_outage_longer_than_s3fs_retries(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, mode: str,
    ngff_config: Any,
) -> None:
    ngff_config({"io.read-backoff": 0.05})
    _, _, moving = s3_pair
    direct = OMEZarrReaderConstructor(moving, storage_options=s3_server.storage_options())
    reference = direct().read_box(Box.full((48, 48, 48)))
    # 8 consecutive faults per chunk: more than s3fs's own retries absorb.
    proxy = fault_proxy(s3_server.endpoint_url, mode=mode, fail_first=8)
    opts = via_endpoint(s3_server, proxy.endpoint_url)
    ctor = OMEZarrReaderConstructor(moving, storage_options=opts)
    data = ctor().read_box(Box.full((48, 48, 48)))
    assert proxy.total_faults == 8 * 27  # every one of the 27 chunks hit 8 times
    np.testing.assert_array_equal(data, reference)  # never silently different


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_metadata_reads_ride_out_an_outage_too(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, mode: str,
    ngff_config: Any,
) -> None:
    """Opening an image (group and array ``zarr.json`` GETs) is retried like chunk reads."""
    ngff_config({"io.read-backoff": 0.05})
    _, _, moving = s3_pair
    reference = open_multiscale(moving, s3_server.storage_options())
    proxy = fault_proxy(s3_server.endpoint_url, mode=mode, fail_first=8,
                        match=lambda line: line.startswith("GET ") and "zarr.json" in line)
    image = open_multiscale(moving, via_endpoint(s3_server, proxy.endpoint_url))
    assert proxy.total_faults >= 8 * 2  # the group and at least one array, 8 times each
    assert [lv.geometry for lv in image.levels] == [lv.geometry for lv in reference.levels]


def test_reader_gives_a_clear_error_when_the_store_stays_down(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any,
    ngff_config: Any,
) -> None:
    ngff_config({"io.read-attempts": 2, "io.read-backoff": 0.05})
    _, _, moving = s3_pair
    proxy = fault_proxy(s3_server.endpoint_url, mode="truncate", probability=1.0)
    opts = via_endpoint(s3_server, proxy.endpoint_url)
    ctor = OMEZarrReaderConstructor(moving, storage_options=opts)
    with pytest.raises(StoreReadError) as info:
        ctor().read_box(Box((16, 16, 16), (32, 32, 32)))
    msg = str(info.value)
    # the box is chunk (1, 1, 1) of level 0
    assert msg.startswith(f"{moving}: cannot read chunk '0/c/1/1/1' of level '0'"), msg
    assert "gave up after 2 attempts" in msg
    assert "testing" not in msg  # no credentials in the message


@pytest.mark.slow
def test_registration_through_flaky_storage_matches_undisturbed_run(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, reference_run: Any,
    small_pair: Any, dask_client: Any, tmp_path: Any,
) -> None:
    _, fixed, moving = s3_pair
    _, reference = reference_run
    # A third of every chunk GET dropped or cut short, some delayed: on the workers too.
    # (The host chunk cache fetches each chunk once per run, so there are few GETs.)
    proxy = fault_proxy(s3_server.endpoint_url, mode="reset", probability=0.35, seed=3)
    out = str(tmp_path / "flaky.zarr")
    result = register(
        fixed, moving, out, schedule=small_schedule(), client=dask_client, progress=False,
        storage_options=via_endpoint(s3_server, proxy.endpoint_url),
    )
    assert proxy.total_faults >= 8, proxy.faults
    assert output_status(out) == "complete"
    diff = field_difference(result.transforms.transform, reference.transforms.transform,
                            small_pair)
    assert diff < 1e-3, diff


def test_registration_against_a_dead_store_fails_cleanly_without_output(
    s3_server: Any, s3_pair: tuple[str, str, str], fault_proxy: Any, dask_client: Any,
    tmp_path: Any, ngff_config: Any,
) -> None:
    ngff_config({"io.read-attempts": 2, "io.read-backoff": 0.05})
    _, fixed, moving = s3_pair
    proxy = fault_proxy(s3_server.endpoint_url, mode="truncate", probability=1.0)
    out = str(tmp_path / "dead.zarr")
    with pytest.raises(StoreReadError,
                       match=r"(fixed|moving)\.ome\.zarr: cannot read chunk '\d/c/[\d/]+'"):
        register(
            fixed, moving, out, schedule=small_schedule(), client=dask_client, progress=False,
            storage_options=via_endpoint(s3_server, proxy.endpoint_url),
        )
    assert proxy.total_faults > 0
    assert output_status(out) == "absent"


@pytest.mark.parametrize("sharded", [False, True])
def test_cached_retried_reads_never_return_or_keep_a_partial_chunk(
    s3_server: Any, fault_proxy: Any, make_test_image: Any, ngff_config: Any,
    sharded: bool,
) -> None:
    """Bodies cut short (whole chunks, or inner-chunk ranges of shards) are refetched, never cached.

    Every chunk GET is truncated on its first 8 attempts, more than s3fs
    absorbs, so the reader's own retry must run; the cache must then hold
    exactly the stored bytes of each object or range.
    """
    import uuid

    from ngff_dreg.io.storage.chunk_cache import process_cache
    from ngff_dreg.io.storage.store_stats import take_counts

    ngff_config({"io.read-backoff": 0.05})
    bucket = s3_server.create_bucket()
    opts = s3_server.storage_options()
    url = s3_server.url(bucket, "img.ome.zarr")
    data, _ = make_test_image(url, (32, 32, 32), chunks=16, n_levels=1, storage_options=opts,
                              shards=32 if sharded else None)
    proxy = fault_proxy(s3_server.endpoint_url, mode="truncate", fail_first=8)
    token = uuid.uuid4().hex
    proxied = via_endpoint(s3_server, proxy.endpoint_url)
    ctor = OMEZarrReaderConstructor(url, storage_options=proxied, cache=token)
    # Sharded: 4 of the shard's 8 inner chunks, so they are fetched as ranges.
    box = Box((0, 0, 0), (32, 32, 12)) if sharded else Box.full((32, 32, 32))
    take_counts()
    got = ctor().read_box(box)
    np.testing.assert_array_equal(got, data[box.slices])
    assert proxy.total_faults >= 8 * (1 if sharded else 8)
    _, counts = take_counts()
    held_pieces = process_cache().pieces((token, url))
    if sharded:  # the shard index (a suffix range) and 4 inner-chunk ranges, as asked
        assert len(held_pieces) == 5
        # fetched in 5 requests, or 2 when zarr >= 3.3 coalesces the adjacent ranges
        assert len(counts[url].pieces) in (5, 2)
    else:
        assert sorted(held_pieces) == sorted(counts[url].pieces)
    # What the cache holds is byte for byte what the store holds.
    client = s3_server.client()
    assert held_pieces
    for piece in held_pieces:
        key, _, rng = piece.partition("[")
        stored = client.get_object(Bucket=bucket, Key=f"img.ome.zarr/{key}")["Body"].read()
        if rng:  # "a:b" or "-n:" (the last n bytes)
            a, b = rng.rstrip("]").split(":")
            stored = stored[int(a):int(b)] if b else stored[int(a):]
        held = process_cache().get((token, url), piece)
        assert held == stored, piece
    # Read again: from the cache, the same voxels, no request.
    np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])
    _, again = take_counts()
    assert again[url].chunk_requests == 0 and again[url].cache_hits == len(held_pieces)
