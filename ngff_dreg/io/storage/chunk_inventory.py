"""Which chunk objects of a level array existed when a run was planned.

Zarr reads a missing chunk object as the fill value: it cannot tell a chunk
that was never written (zarr 3 skips empty chunks) from one deleted after the
run was planned. A block read from a half-deleted level would then register
against zeros without any error. To tell the two apart, the client lists the
level's objects once at planning time (:func:`build_inventory`) and keeps one
bit per storage object (per shard when the array is sharded) in a
:class:`ChunkInventory`: 125 KB for a level of 10**6 chunks, picklable, handed
to the workers inside the reader constructor. When a worker then finds an
object missing that the inventory says existed,
:class:`~ngff_dreg.io.storage.missing_chunk_guard.MissingChunkGuard` raises a
:class:`~ngff_dreg.errors.StoreChangedError` instead of letting zarr return
fill values. A chunk absent at planning and absent at read stays fill value.

Listing costs one LIST request per 1000 objects on S3 (far fewer requests
than the GETs of the same chunks). It is counted with the store's other
requests (:mod:`ngff_dreg.io.storage.store_stats`, ``list_calls`` and
``listed_keys``), and controlled by a setting of the client
(:mod:`ngff_dreg.config`)::

    ngff-dreg.io.chunk-inventory   auto (default): list every store but http(s)://
                                   (and virtual://)
                                   false: never list (missing chunks read as fill value)
                                   true: list http(s):// stores too

HTTP servers have no standard listing: fsspec scrapes the links of
directory index pages, one GET per directory, which most object-store HTTP
front ends do not serve. ``http(s)://`` levels therefore get no inventory
unless asked for, and a store whose listing fails (no ``s3:ListBucket``
permission, listing unsupported; transient failures are retried like reads)
gets none either, with a warning: their
deleted chunks still read as fill value. Levels with more than
:data:`MAX_GRID_CHUNKS` storage objects are not listed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding

from ngff_dreg import config
from ngff_dreg.errors import NgffDregError, StoreAccessError
from ngff_dreg.io.storage.retry import retry_transient
from ngff_dreg.io.storage.store_errors import map_store_errors
from ngff_dreg.io.storage.urls import redact_url

__all__ = [
    "ChunkInventory",
    "MAX_GRID_CHUNKS",
    "KeyScheme",
    "build_inventory",
    "inventory_wanted",
    "key_scheme",
    "storage_grid",
]

logger = logging.getLogger(__name__)

#: Levels with more storage objects than this get no inventory (12.5 MB of bits).
MAX_GRID_CHUNKS = 10**8

_BATCH = 1 << 16
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class KeyScheme:
    """How the storage keys of one array are spelled, below the array's path.

    ``lead`` precedes the coordinates (``"c/"`` for zarr 3's default
    encoding, ``""`` for v2 keys), and ``separator`` joins them
    (``"/"`` or ``"."``): ``c/0/1/2``, ``0.1.2``, ``0/1/2``.
    """

    lead: str
    separator: str
    ndim: int

    def encode(self, coords: Iterable[int]) -> str:
        """The key (below the array's path) of the object at grid ``coords``."""
        return self.lead + self.separator.join(str(int(c)) for c in coords)

    def decode(self, rest: str) -> tuple[int, ...] | None:
        """Grid coordinates of key ``rest`` (below the array's path), or ``None``.

        ``None`` for anything that is not a chunk key of this array
        (``zarr.json``, ``.zattrs``, stray files, ``01`` for ``1``).
        """
        if not rest.startswith(self.lead):
            return None
        parts = rest[len(self.lead):].split(self.separator)
        if len(parts) != self.ndim or not all(p.isdigit() for p in parts):
            return None
        coords = tuple(int(p) for p in parts)
        return coords if self.encode(coords) == rest else None


def key_scheme(arr: Any) -> KeyScheme | None:
    """The key scheme of a zarr array, from zarr's own chunk key encoding.

    Returns ``None`` for an encoding it does not know (a custom one). The
    scheme is checked against the array's own ``encode_chunk_key`` on the
    last grid object, so a scheme that would spell keys differently from
    zarr is never used.
    """
    md = arr.metadata
    ndim = len(arr.shape)
    if ndim == 0:
        return None
    if int(md.zarr_format) == 2:
        scheme = KeyScheme("", str(md.dimension_separator), ndim)
    else:
        enc = md.chunk_key_encoding
        if isinstance(enc, DefaultChunkKeyEncoding):
            scheme = KeyScheme("c" + enc.separator, enc.separator, ndim)
        elif isinstance(enc, V2ChunkKeyEncoding):
            scheme = KeyScheme("", enc.separator, ndim)
        else:
            return None
    probe = tuple(max(0, g - 1) for g in storage_grid(arr))
    return scheme if md.encode_chunk_key(probe) == scheme.encode(probe) else None


def storage_grid(arr: Any) -> tuple[int, ...]:
    """Objects per axis of a zarr array: its shard grid if sharded, else its chunk grid."""
    outer = getattr(arr, "shards", None) or arr.chunks
    # An axis of length 0 may have chunks of length 0: no object along it.
    return tuple(math.ceil(int(s) / int(c)) if int(c) else 0 for s, c in zip(arr.shape, outer))


@dataclass(frozen=True)
class ChunkInventory:
    """One bit per storage object of a level array: did it exist when the run was planned.

    Attributes
    ----------
    prefix:
        The array's path in its store (keys are ``prefix/<chunk key>``).
    scheme:
        How chunk keys are spelled.
    grid:
        Objects per axis (the shard grid of a sharded array).
    bits:
        ``numpy.packbits`` of the C-order grid of existence flags.
    present:
        How many objects existed.

    """

    prefix: str
    scheme: KeyScheme
    grid: tuple[int, ...]
    bits: bytes = field(repr=False)
    present: int

    @property
    def nbytes(self) -> int:
        """Size of the bit array."""
        return len(self.bits)

    @property
    def size(self) -> int:
        """Objects on the grid."""
        return math.prod(self.grid)

    def coords_of(self, key: str) -> tuple[int, ...] | None:
        """Grid coordinates of store key ``key`` of this array, or ``None`` if it is not one."""
        head = f"{self.prefix}/" if self.prefix else ""
        if not key.startswith(head):
            return None
        coords = self.scheme.decode(key[len(head):])
        if coords is None or any(c >= g for c, g in zip(coords, self.grid)):
            return None
        return coords

    def existed(self, key: str) -> bool:
        """True when store key ``key`` is a chunk of this array that existed at planning."""
        coords = self.coords_of(key)
        if coords is None:
            return False
        flat = int(np.ravel_multi_index(coords, self.grid))
        return bool(self.bits[flat >> 3] & (0x80 >> (flat & 7)))


def inventory_wanted(url: str) -> bool:
    """Whether to list the level arrays of ``url`` (``ngff-dreg.io.chunk-inventory``)."""
    mode = config.chunk_inventory()
    if mode != "auto":
        return mode == "on"
    # virtual:// images (scale tests) list no chunks: there are millions
    return not str(url).lower().startswith(("http://", "https://", "virtual://"))


async def _collect(keys: AsyncIterator[str]) -> list[str]:
    return [k async for k in keys]


def _list_keys(store: Any, prefix: str) -> list[str]:
    from zarr.core.sync import sync

    return sync(_collect(store.list_prefix(f"{prefix}/" if prefix else "")))


_MEMO: dict[tuple[str, ...], ChunkInventory | None] = {}
_MEMO_LOCK = threading.Lock()
_MEMO_MAX = 64


def build_inventory(arr: Any, url: str, memo: tuple[str, ...] | None = None
                    ) -> ChunkInventory | None:
    """List the objects of level array ``arr`` and record which exist.

    Parameters
    ----------
    arr:
        The zarr array, opened on the client at planning time.
    url:
        Its URL (for messages; redacted).
    memo:
        A key (a run's cache token and the array's location) under which the
        inventory is kept in this process, so readers of the same level in
        the same run list it once. ``None``: always list.

    Returns
    -------
    ChunkInventory or None
        ``None`` when the array cannot be inventoried: listing failed or is
        not supported, the key encoding is unknown, or the grid has more than
        :data:`MAX_GRID_CHUNKS` objects (logged; reads then behave as before).

    """
    if memo is not None:
        with _MEMO_LOCK:
            if memo in _MEMO:
                return _MEMO[memo]
    inv = _build(arr, url)
    if memo is not None:
        with _MEMO_LOCK:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.pop(next(iter(_MEMO)))
            _MEMO[memo] = inv
    return inv


def _build(arr: Any, url: str) -> ChunkInventory | None:
    safe = redact_url(url)
    scheme = key_scheme(arr)
    grid = storage_grid(arr)
    size = math.prod(grid)
    if scheme is None:
        logger.warning("%s: unknown chunk key encoding; deleted chunks cannot be detected", safe)
        return None
    if size > MAX_GRID_CHUNKS:
        logger.warning("%s: %d storage objects (more than %d): not listed; deleted chunks "
                       "cannot be detected", safe, size, MAX_GRID_CHUNKS)
        return None
    store = arr.store_path.store
    prefix = str(arr.store_path.path).strip("/")
    if not getattr(store, "supports_listing", False):
        logger.warning("%s: the store cannot list; deleted chunks cannot be detected", safe)
        return None
    t0 = time.perf_counter()
    try:
        keys = retry_transient(
            lambda: map_store_errors(url, "list chunks", lambda: _list_keys(store, prefix)),
            f"{safe}: list chunks")
    except (StoreAccessError, NotImplementedError, NgffDregError) as exc:
        logger.warning("%s: cannot list the chunks (%s); deleted chunks cannot be detected",
                       safe, exc)
        return None
    inv = _pack(prefix, scheme, grid, keys)
    if not inv.present:
        # Legitimate for a blank level (zarr 3 writes no empty chunk); the usual
        # sign of an HTTP server without directory listings.
        http = str(url).lower().startswith(("http://", "https://"))
        logger.log(logging.WARNING if http else logging.INFO,
                   "%s: the listing found no chunk object (an empty level, or a store that "
                   "lists nothing); deleted chunks cannot be detected", safe)
    logger.info("%s: %d of %d storage objects exist (%d keys listed, %d-byte inventory, "
                "%.2fs)", safe, inv.present, size, len(keys), inv.nbytes,
                time.perf_counter() - t0)
    return inv


def _pack(prefix: str, scheme: KeyScheme, grid: tuple[int, ...], keys: Iterable[str]
          ) -> ChunkInventory:
    """The inventory of ``keys`` (full store keys; non-chunk keys are ignored)."""
    size = math.prod(grid)
    packed = np.zeros((size + 7) // 8, dtype=np.uint8)
    probe = ChunkInventory(prefix, scheme, grid, b"", 0)
    batch: list[tuple[int, ...]] = []

    def flush() -> None:
        if batch:
            flat = np.ravel_multi_index(tuple(np.asarray(batch).T), grid)
            np.bitwise_or.at(packed, flat >> 3,
                             (np.uint8(0x80) >> (flat & 7).astype(np.uint8)))
            batch.clear()

    for key in keys:
        coords = probe.coords_of(key)
        if coords is not None:
            batch.append(coords)
            if len(batch) >= _BATCH:
                flush()
    flush()
    present = int(_POPCOUNT[packed].sum(dtype=np.int64))
    return ChunkInventory(prefix, scheme, grid, packed.tobytes(), present)
