"""Every zarr read path goes through the read stack: nothing reaches the store unseen.

Two checks that fail when a zarr release adds a read path the wrappers do not
see (as ``get_ranges`` in zarr 3.3 and the synchronous pipeline in 3.4 did):

* by name: every read method of zarr's ``Store`` and ``WrapperStore`` is one
  :class:`ReadThroughStore` routes itself;
* by counting: a spy under the whole stack records every call that reaches the
  real store; it must see exactly the requests the counting layer counted, and
  nothing but ``get``. Run on local and S3 (moto) stores, sharded and not, with
  and without the cache, with zarr's default and its synchronous (fused) codec
  pipeline where the installed zarr has one.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.abc.store
from zarr.storage import WrapperStore

from ngff_dreg.io.storage.read_through import READ_PATHS, SIZE_PROBES, ReadThroughStore
from ngff_dreg.io.storage.stack import read_stack
from ngff_dreg.io.storage.store_stats import take_counts

#: helpers of zarr 3.1's ``Store`` that read through ``self.get`` (checked below)
VIA_GET = ("_get_bytes", "_get_bytes_sync", "_get_json", "_get_json_sync")
READ_NAME = re.compile(r"^_?get|^exists$")

FUSED = "zarr.core.codec_pipeline.FusedCodecPipeline"
try:
    from zarr.core.codec_pipeline import FusedCodecPipeline  # noqa: F401  (zarr >= 3.4)
    PIPELINES = ["default", "fused"]
except ImportError:
    PIPELINES = ["default"]


def _read_methods(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if callable(v) and READ_NAME.match(n)}


def test_every_read_method_of_zarr_stores_is_routed_by_the_wrappers() -> None:
    own = set(vars(ReadThroughStore))
    forwarded = _read_methods(WrapperStore)  # WrapperStore sends these straight down
    assert forwarded <= own, f"not routed by ReadThroughStore: {sorted(forwarded - own)}"
    known = set(READ_PATHS) | set(SIZE_PROBES) | set(VIA_GET)
    new = _read_methods(zarr.abc.store.Store) - known
    assert not new, f"zarr's Store has read methods the read stack does not know: {sorted(new)}"
    assert set(READ_PATHS) | set(SIZE_PROBES) <= own


class Spy(WrapperStore[Any]):
    """Records every read-like call that reaches the real store, by method name."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.calls: Counter[str] = Counter()

    def _with_store(self, store: Any) -> Spy:
        return Spy(store)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if READ_NAME.match(name) and name not in SIZE_PROBES and callable(value):
            super().__getattribute__("calls")[name] += 1
        return value


def _write(store: Any, sharded: bool) -> np.ndarray:
    data = np.arange(24 * 24 * 24, dtype=np.uint16).reshape(24, 24, 24)
    kwargs: dict[str, Any] = {"chunks": (4, 4, 4)}
    if sharded:
        kwargs["shards"] = (8, 8, 8)
    arr = zarr.create_array(store, name="0", shape=data.shape, dtype=data.dtype,
                            zarr_format=3, **kwargs)
    arr[...] = data
    return data


def _stores(kind: str, tmp_path: Any, s3_server: Any) -> tuple[Any, Any, str]:
    """A writable store, the same location read-only, and its URL."""
    if kind == "local":
        url = str(tmp_path / "img.zarr")
        return (zarr.storage.LocalStore(url), zarr.storage.LocalStore(url, read_only=True),
                url)
    url = s3_server.url(s3_server.create_bucket(), "img.zarr")
    opts = s3_server.storage_options()
    return (zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=False),
            zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True), url)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("sharded", [False, True], ids=["chunks", "shards"])
@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_the_real_store_sees_only_what_the_stack_counted(
    tmp_path: Any, request: pytest.FixtureRequest, kind: str, sharded: bool, cached: bool,
    pipeline: str,
) -> None:
    s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
    writable, base, url = _stores(kind, tmp_path, s3)
    data = _write(writable, sharded)
    spy = Spy(base)
    stack = read_stack(spy, url, cache=uuid.uuid4().hex if cached else None)
    settings = {"codec_pipeline.path": FUSED} if pipeline == "fused" else {}
    with zarr.config.set(settings):
        take_counts()
        arr = zarr.open_array(store=stack, path="0", mode="r")
        boxes = [np.s_[1:7, 2:5, 3:9], np.s_[10:22, 0:24, 5:6], np.s_[1:7, 2:5, 3:9], np.s_[:]]
        for box in boxes:
            np.testing.assert_array_equal(arr[box], data[box])
    counts = take_counts()[1][url.rstrip("/")]
    counted = counts.chunk_requests + counts.metadata_requests + counts.missing
    assert set(spy.calls) == {"get"}, f"read paths that went round the stack: {dict(spy.calls)}"
    assert spy.calls["get"] == counted
    assert counts.chunk_bytes >= counts.distinct_bytes > 0
    if cached:
        assert counts.cache_hits > 0
        if not sharded:
            assert counts.chunk_bytes == counts.distinct_bytes  # nothing fetched twice
        # the same reads again: all from the cache (inner chunks cut from whole shards)
        spy.calls.clear()
        with zarr.config.set(settings):
            for box in boxes:
                np.testing.assert_array_equal(arr[box], data[box])
        again = take_counts()[1][url.rstrip("/")]
        assert spy.calls["get"] == again.chunk_requests == 0 and again.cache_hits > 0


def test_synchronous_reads_of_a_wrapper_go_through_it(tmp_path: Any) -> None:
    base = zarr.storage.LocalStore(str(tmp_path / "img.zarr"))
    _write(base, sharded=True)
    spy = Spy(zarr.storage.LocalStore(str(tmp_path / "img.zarr"), read_only=True))
    stack = read_stack(spy, str(tmp_path / "img.zarr"))
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype

    take_counts()
    whole = stack.get_sync("0/c/0/0/0")
    assert whole is not None
    parts = dict(stack.get_ranges_sync("0/c/0/0/0", [RangeByteRequest(0, 8),
                                                     RangeByteRequest(16, 24)],
                                       prototype=default_buffer_prototype()))
    assert parts[0].to_bytes() == whole.to_bytes()[:8]
    assert parts[1].to_bytes() == whole.to_bytes()[16:24]
    counts = take_counts()[1][str(tmp_path / "img.zarr")]
    assert set(spy.calls) == {"get"} and spy.calls["get"] == counts.chunk_requests
