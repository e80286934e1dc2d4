"""Merging store counts over processes and stages (pure logic)."""

from __future__ import annotations

from typing import Any

from ngff_dreg.io.storage.store_stats import (
    IOLedger,
    StoreCounts,
    collect_counts,
    distinct_span_bytes,
    format_summary,
    piece_id,
    record_fetch,
    take_counts,
)


def _counts(pieces: dict[str, int], requests: int) -> StoreCounts:
    return StoreCounts(chunk_requests=requests, chunk_bytes=requests * 10, pieces=dict(pieces),
                       spans={k: [(0, v)] for k, v in pieces.items()},
                       sizes=dict(pieces))


class _FakeClient:
    """``client.run`` of two workers, one of them this very process (a threaded worker)."""

    def __init__(self, own: str, worker: dict[str, StoreCounts]) -> None:
        self.own, self.worker = own, worker

    def run(self, func: Any, *args: Any) -> dict[str, Any]:
        return {"tcp://a": ("other-process", self.worker), "tcp://b": (self.own, {})}


def test_piece_ids() -> None:
    class R:
        start, end = 3, 9

    class S:
        suffix = 16

    class O:  # noqa: E742
        offset = 5

    assert piece_id("0/c/0") == "0/c/0"
    assert piece_id("k", R()) == "k[3:9]" and piece_id("k", S()) == "k[-16:]"
    assert piece_id("k", O()) == "k[5:]"


def test_collect_counts_merges_processes_once_and_unites_distinct_pieces() -> None:
    take_counts()
    record_fetch("s3://b/f.zarr", "0/c/0", None, 10)
    record_fetch("s3://b/f.zarr", "zarr.json", None, 2)
    own_pid = take_counts(reset=False)[0]
    client = _FakeClient(own_pid, {"s3://b/f.zarr": _counts({"0/c/0": 10, "0/c/1": 10}, 2)})
    stats = collect_counts(client)
    f = stats.images["s3://b/f.zarr"]
    assert f.chunk_requests == 3 and f.chunk_bytes == 30
    assert f.pieces == {"0/c/0": 10, "0/c/1": 10}  # united, not summed
    assert f.summary()["reread"] == 1.5
    assert take_counts()[1] == {}  # collected counts are cleared


def test_ledger_unites_stages_and_images() -> None:
    ledger = IOLedger()
    take_counts()
    record_fetch("a", "0/c/0", None, 10)
    ledger.collect("stage_0")
    record_fetch("a", "0/c/0", None, 10)
    record_fetch("b", "0/c/0", None, 5)
    ledger.collect("stage_1")
    summary = ledger.summary()
    run = summary["run"]
    assert run["images"]["a"]["reread"] == 2.0 and run["images"]["b"]["reread"] == 1.0
    # The same key in two images is two distinct pieces.
    assert run["total"]["distinct_pieces"] == 2 and run["total"]["distinct_bytes"] == 15
    assert summary["stages"]["stage_0"]["total"]["chunk_bytes"] == 10
    lines = format_summary(summary)
    assert lines[0].startswith("I/O run: 3 chunk requests") and "re-read 1.67x" in lines[0]


class _Range:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end


class _Suffix:
    def __init__(self, suffix: int) -> None:
        self.suffix = suffix


def test_distinct_bytes_are_the_union_of_the_fetched_ranges() -> None:
    take_counts()
    # a shard of 100 bytes: its index (the last 10), two overlapping ranges, then whole
    record_fetch("s3://b/f.zarr", "0/c/0", _Suffix(10), 10)
    record_fetch("s3://b/f.zarr", "0/c/0", _Range(0, 40), 40)
    record_fetch("s3://b/f.zarr", "0/c/0", _Range(30, 60), 30)
    c = take_counts()[1]["s3://b/f.zarr"]
    # before the size is known, the suffix is counted apart: 60 + 10 distinct bytes
    assert c.distinct_bytes == 70 and c.chunk_bytes == 80
    record_fetch("s3://b/f.zarr", "0/c/0", None, 100)
    c.add(take_counts()[1]["s3://b/f.zarr"])
    assert c.distinct_bytes == 100 and c.chunk_bytes == 180
    assert c.summary()["reread"] == 1.8
    assert c.summary()["distinct_pieces"] == 4  # the pieces are still told apart


def test_span_union_places_suffixes_once_the_size_is_known() -> None:
    assert distinct_span_bytes([(0, 10), (5, 20), (30, 40)]) == 30
    assert distinct_span_bytes([(-10, 0), (0, 95)]) == 105  # size unknown: apart
    assert distinct_span_bytes([(-10, 0), (0, 95)], size=100) == 100
