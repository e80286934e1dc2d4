"""Shard shapes of sharded Zarr v3 outputs, and the shard-aligned write units that fill them.

A sharded array (the ``sharding_indexed`` codec) stores many inner chunks in
one object per shard. Writing one inner chunk rewrites the whole shard object,
so two tasks writing different inner chunks of one shard would race (the last
one wins, the other's chunk is lost). Every sharded output ngff-dreg writes is
therefore written by :class:`WriteUnit`: one task computes all the inner
chunks of one shard, assembles them and writes the shard once. A task's memory
is then bounded by one shard (plus one inner chunk being computed), not by the
array.

A shard request (:data:`ShardSpec`) is the spatial shard shape in NumPy
order, one edge for every spatial axis, or ``"auto"``: :data:`AUTO_CHUNKS`
chunks per axis. ``None`` (the default everywhere) writes one object per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidInputDataError
from ngff_dreg.geometry import Box, chunk_boxes

__all__ = [
    "AUTO_CHUNKS",
    "ShardSpec",
    "WriteUnit",
    "assemble",
    "check_shard_request",
    "level_shards",
    "requested_shards",
    "resolve_shards",
    "WriteUnits",
    "write_units",
]

#: Inner chunks per axis of a shard with ``shards="auto"`` (4³ = 64 chunks in 3D).
AUTO_CHUNKS = 4

#: A shard request: spatial shape (NumPy order), one edge, ``"auto"`` or ``None`` (checked
#: at run time by :func:`check_shard_request`).
ShardSpec = int | Sequence[int] | str | None


def check_shard_request(shards: Any, ndim: int, *, option: str = "shards",
                        where: str = "") -> tuple[int, ...] | Literal["auto"] | None:
    """The form of a shard request checked (its fit to the chunks is :func:`resolve_shards`).

    Returns ``None``, ``"auto"`` or one positive edge per spatial axis.

    Raises
    ------
    InvalidInputDataError
        ``shards`` is not ``"auto"``, one positive integer or ``ndim`` of them;
        the message names ``option``.

    """
    if shards is None:
        return None
    prefix = f"{where}: " if where else ""
    if isinstance(shards, str):
        if shards.strip().lower() == "auto":
            return "auto"
        raise InvalidInputDataError(
            f"{prefix}{option}={shards!r}: give a shard edge, {ndim} edges (NumPy order) "
            "or 'auto'"
        )
    values = (shards,) * ndim if np.ndim(shards) == 0 else tuple(shards)
    if len(values) == 1 and ndim > 1:
        values = values * ndim
    ok = len(values) == ndim and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and int(v) >= 1
        for v in values
    )
    if not ok:
        raise InvalidInputDataError(
            f"{prefix}{option}={shards!r} must be one positive integer edge or {ndim} of them"
        )
    return tuple(int(v) for v in values)


def requested_shards(shards: Any, chunks: Sequence[int], *, option: str = "shards",
                     where: str = "") -> tuple[int, ...] | None:
    """The shard request as a spatial shape, ``"auto"`` resolved against ``chunks``.

    Not yet checked against the chunks nor capped by an array
    (:func:`resolve_shards` does both); ``None``: unsharded.
    """
    request = check_shard_request(shards, len(chunks), option=option, where=where)
    if request == "auto":
        return tuple(AUTO_CHUNKS * int(c) for c in chunks)
    return request


def resolve_shards(shards: Any, chunks: Sequence[int], shape: Sequence[int], *,
                   option: str = "shards", where: str = "") -> tuple[int, ...] | None:
    """The shard shape of one array with spatial ``chunks`` and ``shape``, or ``None``.

    ``"auto"`` is :data:`AUTO_CHUNKS` chunks per axis. An explicit shape must
    hold whole chunks: each edge a multiple of the chunk edge, or at least
    the array's extent along that axis (one shard then spans the axis). The
    result is capped by the array (:func:`level_shards`).

    Raises
    ------
    InvalidInputDataError
        The request is malformed or an edge is not a whole number of chunks;
        the message names ``option`` and the axis.

    """
    chunks = tuple(int(c) for c in chunks)
    request = requested_shards(shards, chunks, option=option, where=where)
    if request is None:
        return None
    prefix = f"{where}: " if where else ""
    for axis, (sh, c, n) in enumerate(zip(request, chunks, shape)):
        if sh % c and sh < n:
            raise InvalidInputDataError(
                f"{prefix}{option}={shards!r}: edge {sh} on axis {axis} is not a whole number "
                f"of chunks (chunk edge {c}); use a multiple of {c}"
            )
    return level_shards(request, chunks, shape)


def level_shards(shard_shape: Sequence[int], chunks: Sequence[int], shape: Sequence[int]
                 ) -> tuple[int, ...]:
    """A level's shard shape: whole chunks, at least one, no more than the level needs."""
    out = []
    for sh, c, n in zip(shard_shape, chunks, shape):
        c = max(1, int(c))
        need = max(1, -(-int(n) // c)) * c
        out.append(min(need, max(c, -(-int(sh) // c) * c)))
    return tuple(out)


@dataclass(frozen=True)
class WriteUnit:
    """What one write task computes and writes: a shard (or a chunk) and its inner chunks.

    Attributes
    ----------
    box:
        The region written at once (a shard clipped to the array, or a chunk).
    chunks:
        The inner chunks tiling ``box``, in C order (as :func:`chunk_boxes`).

    """

    box: Box
    chunks: tuple[Box, ...]


class WriteUnits:
    """The write units of an array, in C order, each made when asked for.

    A level's field can have hundreds of thousands of units (305,809 at
    level 0 of a 10 TB image), so they are not held as a list: a unit is
    computed from its number, and :meth:`spans` gives the grid's extents
    along one axis.
    """

    def __init__(self, shape: Sequence[int], chunks: Sequence[int],
                 shard_shape: Sequence[int] | None) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.chunks = tuple(int(v) for v in chunks)
        self.shard_shape = None if shard_shape is None else tuple(int(v) for v in shard_shape)
        self.outer = self.shard_shape or self.chunks
        self.grid = tuple(-(-n // e) for n, e in zip(self.shape, self.outer))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def __iter__(self) -> Iterator[WriteUnit]:
        return (self[c] for c in range(len(self)))

    def __getitem__(self, c: int) -> WriteUnit:
        n = len(self)
        if not -n <= c < n:
            raise IndexError(f"write unit {c} of {n}")
        index = np.unravel_index(c % n, self.grid)
        start = tuple(int(i) * e for i, e in zip(index, self.outer))
        box = Box(start, tuple(min(a + e, s) for a, e, s in zip(start, self.outer, self.shape)))
        if self.shard_shape is None:
            return WriteUnit(box, (box,))
        return WriteUnit(box, tuple(
            Box(tuple(a + s for a, s in zip(b.start, box.start)),
                tuple(a + s for a, s in zip(b.stop, box.start)))
            for b in chunk_boxes(box.shape, self.chunks)))

    def spans(self, axis: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` of each unit index along ``axis``."""
        e, n = self.outer[axis], self.shape[axis]
        return [(a, min(a + e, n)) for a in range(0, n, e)]


def write_units(shape: Sequence[int], chunks: Sequence[int],
                shard_shape: Sequence[int] | None) -> WriteUnits:
    """The write tasks of an array: one per shard, or one per chunk without shards.

    Inner chunks follow the same grid (and C order) as without shards, so the
    values computed per chunk are the same either way.
    """
    return WriteUnits(shape, chunks, shard_shape)


def assemble(box: Box, parts: Iterable[tuple[Box, npt.ArrayLike]], dtype: Any,
             lead: tuple[int, ...] = ()) -> npt.NDArray[Any]:
    """One array over ``box`` from ``(chunk, data)`` parts that tile it.

    ``lead`` is the shape of axes before the spatial ones (the field's
    component axis). Each part is cast to ``dtype`` as it is placed, so only
    the result and one part are held at a time.
    """
    out = np.zeros((*lead, *box.shape), dtype=dtype)
    head = (slice(None),) * len(lead)
    for chunk, data in parts:
        out[(*head, *chunk.relative_to(box))] = data
    return out
