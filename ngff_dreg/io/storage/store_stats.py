"""Count what the stores fetch: requests, bytes, and the distinct objects behind them.

Every read-only store that :func:`ngff_dreg.io.storage.stores.open_store` opens is
wrapped in a :class:`CountingStore`. It records each ``get`` that reaches the
underlying store (a GET on S3, a file read on disk) in a process-wide table,
keyed by the store's root URL (redacted): one row per image. A row counts

* chunk requests and bytes, and the distinct *pieces* behind them: a whole
  object, or one byte range of it (the inner chunks of a shard);
* metadata requests (``zarr.json``, ``.zarray``...) and distinct metadata
  objects;
* reads served by the per-process chunk cache instead
  (:mod:`ngff_dreg.io.storage.chunk_cache`), which never reach the store.

The table lives in each process (the client and every dask worker).
:func:`take_counts` returns and clears it; :func:`collect_counts` gathers it
from the client's process and every worker of a ``distributed`` client, and
:class:`IOLedger` keeps one :class:`IOStats` per stage of a run, plus their
union, so that the distinct bytes of a run are counted once however many
stages read them.

The figures are load-independent: they count requests and bytes, not time.

For diagnosis, the setting ``ngff-dreg.io.trace-dir`` (:mod:`ngff_dreg.config`;
a run's client's value is applied on its workers) names a directory, and
every process then also logs each fetch (time, image, piece, bytes, and for
cached stores why the cache missed) to ``<directory>/<process>.jsonl``, with
a ``take`` line whenever :func:`take_counts` is called (the stage boundaries
of a run's :class:`IOLedger`); ``benchmarks/io_breakdown.py`` reads these logs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ngff_dreg import config

__all__ = [
    "METADATA_NAMES",
    "StoreCounts",
    "IOStats",
    "IOLedger",
    "is_metadata_key",
    "piece_id",
    "merge_spans",
    "distinct_span_bytes",
    "fetched_span",
    "record_fetch",
    "record_hit",
    "record_listing",
    "take_counts",
    "reset_counts",
    "collect_counts",
    "format_summary",
    "trace_enabled",
    "trace_event",
]

logger = logging.getLogger(__name__)

#: Object names that hold Zarr (v2 or v3) metadata rather than chunk data.
METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")

_PROCESS = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_LOCK = threading.Lock()
_TRACE: list[list[Any]] = []


def trace_enabled() -> bool:
    """True when ``ngff-dreg.io.trace-dir`` names a directory for fetch logs (read now)."""
    return config.trace_dir() is not None


def trace_event(*fields: Any) -> None:
    """Log one event (with the time) when tracing; written out by :func:`take_counts`."""
    if trace_enabled():
        with _LOCK:
            _TRACE.append([time.time(), *fields])


def _flush_trace() -> None:
    """Append the logged events and a ``take`` mark to this process's log (lock held)."""
    trace_dir = config.trace_dir()
    if trace_dir is None:
        _TRACE.clear()
        return
    os.makedirs(trace_dir, exist_ok=True)
    with open(os.path.join(trace_dir, f"{_PROCESS}.jsonl"), "a") as f:
        for ev in _TRACE:
            f.write(json.dumps(ev) + "\n")
        f.write(json.dumps([time.time(), "take"]) + "\n")
    _TRACE.clear()


def is_metadata_key(key: str) -> bool:
    """True for a Zarr metadata object (``zarr.json``, ``.zarray``...)."""
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


def piece_id(key: str, byte_range: Any = None) -> str:
    """A name for what one request fetched: the key, plus its byte range if any.

    ``byte_range`` is a zarr ``ByteRequest`` (``RangeByteRequest``,
    ``OffsetByteRequest``, ``SuffixByteRequest``) or ``None`` for the whole object.
    """
    if byte_range is None:
        return key
    start = getattr(byte_range, "start", None)
    end = getattr(byte_range, "end", None)
    if start is not None and end is not None:
        return f"{key}[{start}:{end}]"
    offset = getattr(byte_range, "offset", None)
    if offset is not None:
        return f"{key}[{offset}:]"
    suffix = getattr(byte_range, "suffix", None)
    return f"{key}[-{suffix}:]"


@dataclass
class StoreCounts:
    """What one image's stores fetched (in one process, or summed over several).

    Attributes
    ----------
    chunk_requests, chunk_bytes:
        Chunk-data requests that reached the store, and the bytes they returned.
    metadata_requests, metadata_bytes:
        The same for metadata objects.
    cache_hits, cache_hit_bytes:
        Chunk reads answered by the chunk cache (no request made).
    metadata_cache_hits:
        Metadata reads answered by the cache.
    missing:
        Requests for objects that do not exist (chunks never written, probes).
    list_calls, listed_keys:
        Listings of the store (the chunk inventory of
        :mod:`ngff_dreg.io.storage.chunk_inventory`) and the keys they returned. On S3
        one listing of ``n`` keys is ``max(1, ceil(n / 1000))`` LIST requests.
    pieces:
        Distinct chunk pieces fetched (:func:`piece_id`) and their sizes.
    spans:
        Byte intervals ``[start, end)`` fetched of each chunk object: what the
        distinct bytes are measured on (:func:`distinct_span_bytes`), so that
        overlapping reads (a whole shard, and ranges inside it) count once.
    sizes:
        Object sizes learned from whole or open-ended reads (places suffix
        ranges among the others).
    metadata_objects:
        Distinct metadata objects fetched and their sizes.

    """

    chunk_requests: int = 0
    chunk_bytes: int = 0
    metadata_requests: int = 0
    metadata_bytes: int = 0
    cache_hits: int = 0
    cache_hit_bytes: int = 0
    metadata_cache_hits: int = 0
    missing: int = 0
    list_calls: int = 0
    listed_keys: int = 0
    pieces: dict[str, int] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    metadata_objects: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Every request that reached the store."""
        return self.chunk_requests + self.metadata_requests

    @property
    def distinct_bytes(self) -> int:
        """Bytes of chunk objects fetched at least once: the union of the fetched ranges."""
        return sum(distinct_span_bytes(v, self.sizes.get(k)) for k, v in self.spans.items())

    def add_span(self, key: str, span: tuple[int, int], size: int | None) -> None:
        """Note that bytes ``span`` of ``key`` were fetched (negative: from the end)."""
        if size is not None:
            self.sizes[key] = size
        held = self.spans.setdefault(key, [])
        held.append(span)
        if len(held) > 64:  # keep each object's list short: merge what overlaps
            self.spans[key] = merge_spans(held, self.sizes.get(key))

    def add(self, other: StoreCounts) -> None:
        """Add ``other``'s counts to these (distinct pieces are united, not summed)."""
        self.chunk_requests += other.chunk_requests
        self.chunk_bytes += other.chunk_bytes
        self.metadata_requests += other.metadata_requests
        self.metadata_bytes += other.metadata_bytes
        self.cache_hits += other.cache_hits
        self.cache_hit_bytes += other.cache_hit_bytes
        self.metadata_cache_hits += other.metadata_cache_hits
        self.missing += other.missing
        self.list_calls += other.list_calls
        self.listed_keys += other.listed_keys
        self.pieces.update(other.pieces)
        self.sizes.update(other.sizes)
        for key, spans in other.spans.items():
            self.spans[key] = merge_spans(self.spans.get(key, []) + spans, self.sizes.get(key))
        self.metadata_objects.update(other.metadata_objects)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (no key lists).

        ``reread`` is chunk bytes fetched / distinct chunk bytes, measured on
        bytes: the distinct bytes are the union of the byte ranges fetched of
        each object, so a shard fetched whole and again by ranges counts its
        ranges as re-read (1.0 = every byte fetched once); ``metadata_per_object``
        is metadata requests per distinct metadata object.
        """
        distinct = self.distinct_bytes
        return {
            "requests": self.requests,
            "chunk_requests": self.chunk_requests,
            "chunk_bytes": self.chunk_bytes,
            "distinct_pieces": len(self.pieces),
            "distinct_bytes": distinct,
            "reread": (self.chunk_bytes / distinct) if distinct else None,
            "metadata_requests": self.metadata_requests,
            "metadata_objects": len(self.metadata_objects),
            "metadata_per_object": (
                self.metadata_requests / len(self.metadata_objects)
                if self.metadata_objects else None
            ),
            "cache_hits": self.cache_hits,
            "cache_hit_bytes": self.cache_hit_bytes,
            "metadata_cache_hits": self.metadata_cache_hits,
            "missing": self.missing,
            "list_calls": self.list_calls,
            "listed_keys": self.listed_keys,
            "arrays": sorted({_array_of(k) for k in self.pieces}),
        }


def merge_spans(spans: list[tuple[int, int]], size: int | None) -> list[tuple[int, int]]:
    """``spans`` as disjoint sorted intervals (suffix spans placed when ``size`` is known)."""
    placed = [(size + a, size + b) if a < 0 and size is not None else (a, b) for a, b in spans]
    out: list[tuple[int, int]] = []
    for a, b in sorted(placed):
        if out and a <= out[-1][1] and (a < 0) == (out[-1][0] < 0):
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def distinct_span_bytes(spans: list[tuple[int, int]], size: int | None = None) -> int:
    """Bytes covered by the union of ``spans`` (see :meth:`StoreCounts.add_span`)."""
    return sum(b - a for a, b in merge_spans(spans, size))


def fetched_span(byte_range: Any, nbytes: int) -> tuple[tuple[int, int], int | None]:
    """The bytes ``[start, end)`` a read returned, and the object's size if it tells.

    A suffix read whose object size is unknown is placed from the end
    (negative offsets), until a whole read of the object tells its size.
    """
    if byte_range is None:
        return (0, nbytes), nbytes
    start = getattr(byte_range, "start", None)
    if start is not None:
        return (int(start), int(start) + nbytes), None
    offset = getattr(byte_range, "offset", None)
    if offset is not None:
        return (int(offset), int(offset) + nbytes), int(offset) + nbytes
    return (-nbytes, 0), None


def _array_of(piece: str) -> str:
    """The array path of a chunk piece (``"0/c/1/2/3[0:10]"`` -> ``"0"``)."""
    key = piece.split("[", 1)[0]
    if "/c/" in key:
        return key.split("/c/", 1)[0]
    return key.rsplit("/", 1)[0] if "/" in key else ""


_COUNTS: dict[str, StoreCounts] = {}


def _row(image: str) -> StoreCounts:
    row = _COUNTS.get(image)
    if row is None:
        row = _COUNTS[image] = StoreCounts()
    return row


def record_fetch(image: str, key: str, byte_range: Any, nbytes: int | None) -> None:
    """Count one request that reached the store (``nbytes`` ``None``: the object is absent)."""
    tracing = trace_enabled()
    with _LOCK:
        row = _row(image)
        if tracing:
            _TRACE.append([time.time(), "fetch", image, piece_id(key, byte_range), nbytes,
                           threading.get_ident()])
        if nbytes is None:
            row.missing += 1
            return
        if is_metadata_key(key):
            row.metadata_requests += 1
            row.metadata_bytes += nbytes
            row.metadata_objects[piece_id(key, byte_range)] = nbytes
        else:
            row.chunk_requests += 1
            row.chunk_bytes += nbytes
            row.pieces[piece_id(key, byte_range)] = nbytes
            span, size = fetched_span(byte_range, nbytes)
            row.add_span(key, span, size)


def record_listing(image: str, nkeys: int) -> None:
    """Count one listing of the store that returned ``nkeys`` keys."""
    with _LOCK:
        row = _row(image)
        row.list_calls += 1
        row.listed_keys += nkeys


def record_hit(image: str, key: str, nbytes: int) -> None:
    """Count one read of ``key`` answered by the chunk cache."""
    with _LOCK:
        row = _row(image)
        if is_metadata_key(key):
            row.metadata_cache_hits += 1
        else:
            row.cache_hits += 1
            row.cache_hit_bytes += nbytes


def take_counts(reset: bool = True) -> tuple[str, dict[str, StoreCounts]]:
    """``(process id, counts by image)`` of this process; cleared unless ``reset=False``."""
    global _COUNTS
    with _LOCK:
        _flush_trace()
        counts = _COUNTS
        if reset:
            _COUNTS = {}
        else:
            counts = {k: _copy(v) for k, v in counts.items()}
    return _PROCESS, counts


def _copy(c: StoreCounts) -> StoreCounts:
    out = StoreCounts()
    out.add(c)
    return out


def reset_counts() -> None:
    """Forget this process's counts."""
    take_counts(reset=True)


@dataclass
class IOStats:
    """Store counts by image, merged over processes (and possibly stages)."""

    images: dict[str, StoreCounts] = field(default_factory=dict)

    def add(self, counts: Mapping[str, StoreCounts]) -> None:
        """Add one process's (or one stage's) counts."""
        for image, c in counts.items():
            self.images.setdefault(image, StoreCounts()).add(c)

    def total(self) -> StoreCounts:
        """All images together."""
        out = StoreCounts()
        for image, c in self.images.items():
            prefixed = StoreCounts()
            prefixed.add(c)
            prefixed.pieces = {f"{image}/{k}": v for k, v in c.pieces.items()}
            prefixed.spans = {f"{image}/{k}": v for k, v in c.spans.items()}
            prefixed.sizes = {f"{image}/{k}": v for k, v in c.sizes.items()}
            prefixed.metadata_objects = {f"{image}/{k}": v for k, v in c.metadata_objects.items()}
            out.add(prefixed)
        return out

    def summary(self) -> dict[str, Any]:
        """``{"total": figures, "images": {url: figures}}`` (see :meth:`StoreCounts.summary`)."""
        return {
            "total": self.total().summary(),
            "images": {k: v.summary() for k, v in sorted(self.images.items())},
        }


def collect_counts(client: Any = None, reset: bool = True) -> IOStats:
    """The counts of this process plus every worker's of a ``distributed`` ``client``.

    A worker that runs in this very process (a threaded cluster) is counted once.
    """
    seen: dict[str, dict[str, StoreCounts]] = {}
    pid, mine = take_counts(reset)
    seen[pid] = mine
    if client is not None and hasattr(client, "run"):
        try:
            answers: Mapping[str, Any] = client.run(take_counts, reset)
        except Exception as exc:  # a dying cluster must not fail the run
            logger.warning("could not collect I/O counts from the workers: %s", exc)
            answers = {}
        for proc, counts in answers.values():
            seen.setdefault(proc, counts)
    stats = IOStats()
    for counts in seen.values():
        stats.add(counts)
    return stats


@dataclass
class IOLedger:
    """One :class:`IOStats` per stage of a run, and their union.

    Attributes
    ----------
    stages:
        ``(label, stats)`` in the order they were collected.

    """

    stages: list[tuple[str, IOStats]] = field(default_factory=list)

    def collect(self, label: str, client: Any = None) -> IOStats:
        """Collect (and clear) the counts made since the last call, as stage ``label``."""
        stats = collect_counts(client)
        self.stages.append((label, stats))
        return stats

    def run_total(self) -> IOStats:
        """Every stage together."""
        out = IOStats()
        for _, st in self.stages:
            out.add(st.images)
        return out

    def summary(self) -> dict[str, Any]:
        """``{"run": figures of the whole run, "stages": {label: figures}}``."""
        return {
            "run": self.run_total().summary(),
            "stages": {label: st.summary() for label, st in self.stages},
        }


def format_summary(summary: Mapping[str, Any], labels: Iterable[str] | None = None) -> list[str]:
    """Readable lines of an :meth:`IOLedger.summary` (for ``-v`` output and logs)."""
    lines = []
    run = summary.get("run", {})
    for name, part in [("run", run.get("total", {}))] + [
        (f"{label}", summary.get("stages", {}).get(label, {}).get("total", {}))
        for label in (labels or summary.get("stages", {}))
    ]:
        lines.append(_line(name, part))
    for url, part in run.get("images", {}).items():
        lines.append(_line(f"  {url}", part))
    return lines


def _line(name: str, s: Mapping[str, Any]) -> str:
    reread = s.get("reread")
    meta = s.get("metadata_per_object")
    return (
        f"I/O {name}: {s.get('chunk_requests', 0)} chunk requests, "
        f"{s.get('chunk_bytes', 0) / 1e6:.1f} MB fetched for "
        f"{s.get('distinct_bytes', 0) / 1e6:.1f} MB of distinct bytes in "
        f"{s.get('distinct_pieces', 0)} pieces (re-read "
        f"{'–' if reread is None else f'{reread:.2f}'}x, on bytes); "
        f"{s.get('metadata_requests', 0)} "
        f"metadata requests for {s.get('metadata_objects', 0)} objects "
        f"({'–' if meta is None else f'{meta:.1f}'} per object); "
        f"{s.get('cache_hits', 0)} cache hits"
        + (f"; {s['list_calls']} listings of {s.get('listed_keys', 0)} keys"
           if s.get("list_calls") else "")
    )
