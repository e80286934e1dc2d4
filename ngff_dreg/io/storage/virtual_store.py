"""A read-only Zarr v3 store whose chunks are computed from their keys (scale tests).

:class:`VirtualStore` serves one image of a
:class:`~ngff_dreg.virtual_image.VirtualPair` as an OME-Zarr 0.5 multiscale
group: ``zarr.json`` (the ``ome.multiscales`` metadata), one array per level
(``<level>/zarr.json``, uncompressed little-endian chunks, ``/``-separated
chunk keys) and every chunk ``<level>/c/<i>/<j>/<k>`` generated on request
from its coordinates. Nothing is written or kept between requests, so a store
for a petabyte image costs the same as one for a kilobyte image, and a request
holds one chunk at most.

ngff-dreg opens it from a ``virtual://fixed?...`` or ``virtual://moving?...``
URL (:meth:`VirtualPair.url`), like any other store: readers on workers
rebuild it from the URL. Listing yields the metadata documents only (a 10 TB
image has millions of chunks; each chunk key that :meth:`exists` says exists
is served, none is listed).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import numpy as np
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from ngff_dreg.virtual_image import ROLES, VirtualPair

__all__ = ["VirtualStore", "open_virtual_store"]

_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


class VirtualStore(Store):
    """One image (``role`` ``"fixed"``, ``"moving"`` or ``"mask"``) of ``pair``, read-only.

    Parameters
    ----------
    pair:
        The procedural pair.
    role:
        ``"fixed"``, ``"moving"`` (the fixed image warped by the pair's
        transform) or ``"mask"`` (uint8, 1 inside the pair's ``mask_box``).

    """

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_listing: bool = True

    def __init__(self, pair: VirtualPair, role: str) -> None:
        super().__init__(read_only=True)
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.pair = pair
        self.role = role

    def __eq__(self, value: object) -> bool:
        return (isinstance(value, VirtualStore) and value.pair == self.pair
                and value.role == self.role)

    def __hash__(self) -> int:
        return hash((self.pair.url(self.role),))

    def __repr__(self) -> str:
        return f"VirtualStore({self.pair.url(self.role)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.pair.url(self.role)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pair, role = VirtualPair.from_url(state["url"])
        self.__init__(pair, role)  # type: ignore[misc]

    def with_read_only(self, read_only: bool = False) -> VirtualStore:
        """The same store (it is read-only whatever is asked: writing raises)."""
        return VirtualStore(self.pair, self.role)

    # ---------------------------------------------------------------- documents
    def group_metadata(self) -> dict[str, Any]:
        """The root ``zarr.json``: a group with OME-Zarr 0.5 ``multiscales``."""
        p = self.pair
        axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in _AXES[p.ndim]]
        datasets = [
            {"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": list(p.level_spacing(level))},
                {"type": "translation", "translation": list(p.level_origin(level))},
            ]}
            for level in range(p.levels)
        ]
        return {
            "zarr_format": 3, "node_type": "group",
            "attributes": {"ome": {"version": "0.5", "multiscales": [
                {"name": f"virtual {self.role}", "axes": axes, "datasets": datasets}]}},
        }

    def array_metadata(self, level: int) -> dict[str, Any]:
        """``<level>/zarr.json``: uncompressed chunks of the pair's chunk shape."""
        p = self.pair
        return {
            "zarr_format": 3, "node_type": "array",
            "shape": list(p.level_shape(level)), "data_type": p.dtype_of(self.role),
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": list(p.chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": {}, "dimension_names": list(_AXES[p.ndim]),
        }

    def _parse(self, key: str) -> tuple[str, int, tuple[int, ...] | None] | None:
        """``("group"|"array"|"chunk", level, chunk coords)`` of a key, ``None`` if absent."""
        if key == "zarr.json":
            return ("group", -1, None)
        parts = key.split("/")
        if not parts[0].isdigit() or int(parts[0]) >= self.pair.levels:
            return None
        level = int(parts[0])
        if parts[1:] == ["zarr.json"]:
            return ("array", level, None)
        if len(parts) != self.pair.ndim + 2 or parts[1] != "c":
            return None
        if not all(c.isdigit() for c in parts[2:]):
            return None
        coords = tuple(int(c) for c in parts[2:])
        grid = [math.ceil(s / c) for s, c in zip(self.pair.level_shape(level), self.pair.chunks)]
        if any(c >= g for c, g in zip(coords, grid)):
            return None
        return ("chunk", level, coords)

    def _bytes(self, key: str) -> bytes | None:
        found = self._parse(key)
        if found is None:
            return None
        kind, level, coords = found
        if kind == "group":
            return json.dumps(self.group_metadata()).encode()
        if kind == "array":
            return json.dumps(self.array_metadata(level)).encode()
        assert coords is not None
        start = [c * n for c, n in zip(coords, self.pair.chunks)]
        data = self.pair.region(self.role, level, start, self.pair.chunks)
        return np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()

    # ---------------------------------------------------------------- reading
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """The bytes of ``key`` (a range of them with ``byte_range``), ``None`` if absent."""
        data = self._bytes(key)
        if data is None:
            return None
        if isinstance(byte_range, RangeByteRequest):
            data = data[byte_range.start : byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            data = data[byte_range.offset :]
        elif isinstance(byte_range, SuffixByteRequest):
            data = data[-byte_range.suffix :] if byte_range.suffix else b""
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """:meth:`get` for each ``(key, byte_range)``."""
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        """True for the metadata documents and every chunk inside a level's grid."""
        return self._parse(key) is not None

    async def getsize(self, key: str) -> int:
        """Size of ``key`` (chunks: computed from the shape, without generating them)."""
        found = self._parse(key)
        if found is None:
            raise FileNotFoundError(key)
        if found[0] == "chunk":
            return math.prod(self.pair.chunks) * np.dtype(self.pair.dtype_of(self.role)).itemsize
        data = self._bytes(key)
        assert data is not None
        return len(data)

    # ---------------------------------------------------------------- no writing
    async def set(self, key: str, value: Buffer) -> None:
        """Refused: the store is read-only."""
        self._check_writable()

    async def delete(self, key: str) -> None:
        """Refused: the store is read-only."""
        self._check_writable()

    @property
    def supports_partial_writes(self) -> Literal[False]:
        """No partial writes (no writes at all)."""
        return False

    async def set_partial_values(self, key_start_values: Iterable[tuple[str, int, Any]]) -> None:
        """Refused: the store is read-only."""
        self._check_writable()

    # ---------------------------------------------------------------- listing
    def _documents(self) -> list[str]:
        return ["zarr.json"] + [f"{level}/zarr.json" for level in range(self.pair.levels)]

    async def list(self) -> AsyncIterator[str]:
        """The metadata documents (chunks are not listed)."""
        for key in self._documents():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """The metadata documents under ``prefix``."""
        for key in self._documents():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Direct children of ``prefix``: the levels and ``zarr.json`` at the root."""
        prefix = prefix.rstrip("/")
        if prefix == "":
            yield "zarr.json"
            for level in range(self.pair.levels):
                yield str(level)
        elif prefix.isdigit() and int(prefix) < self.pair.levels:
            yield "zarr.json"
            yield "c"


def open_virtual_store(url: str) -> VirtualStore:
    """The store of a ``virtual://fixed?...`` or ``virtual://moving?...`` URL."""
    pair, role = VirtualPair.from_url(url)
    return VirtualStore(pair, role)
