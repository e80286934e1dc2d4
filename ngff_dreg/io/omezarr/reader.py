"""An ``itk.ImageFileReader``-like reader of one OME-Zarr pyramid level.

:class:`OMEZarrReaderConstructor` is the picklable plug-in
(:class:`~ngff_dreg.interfaces.ConstructReaderMethod`); it holds only plain
fields (URL, level, options, selections), so dask workers rebuild readers
themselves. :class:`OMEZarrReader` answers metadata questions without voxels
and streams exactly the storage chunks that intersect a requested region.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidInputDataError, ScheduleError, SelectionNotFoundError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import ConstructReaderMethod
from ngff_dreg.io.omezarr.consistency import check_unchanged
from ngff_dreg.io.omezarr.multiscale import LevelInfo, open_multiscale
from ngff_dreg.io.storage.chunk_cache import process_cache, shared_array
from ngff_dreg.io.storage.chunk_inventory import ChunkInventory, build_inventory, inventory_wanted
from ngff_dreg.io.storage.read_errors import read_selection
from ngff_dreg.io.storage.retry import retry_transient
from ngff_dreg.io.storage.stack import LevelReads
from ngff_dreg.io.storage.store_errors import map_read_errors
from ngff_dreg.io.storage.store_stats import METADATA_NAMES
from ngff_dreg.io.storage.stores import open_group
from ngff_dreg.io.storage.urls import join_url, location_key, redact_options, redact_url
from ngff_dreg.ngff.channels import resolve_selection
from ngff_dreg.validate import check_float32_precision

__all__ = ["OMEZarrReaderConstructor", "OMEZarrReader"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LevelMeta:
    """Plain, picklable metadata of the selected level.

    ``documents`` holds the raw metadata objects (group and level array) as
    the client read them, when a cache token was given: workers seed their
    chunk cache with them instead of fetching them again. ``inventory``
    records which chunk objects of the level existed when the client read it
    (:mod:`ngff_dreg.io.storage.chunk_inventory`), so that workers refuse to read a
    chunk deleted since as fill value.
    """

    info: LevelInfo
    version: str
    axes: tuple[tuple[str, str | None], ...]
    time_index: int | None
    channel_index: int | None
    channel_labels: tuple[str | None, ...] = ()
    documents: tuple[tuple[str, bytes], ...] = ()
    inventory: ChunkInventory | None = None


def _metadata_keys(path: str) -> list[str]:
    return [f"{prefix}{name}" for prefix in ("", f"{path}/") for name in METADATA_NAMES]


def _load_meta(
    url: str, level: int | str, storage_options: Mapping[str, Any] | None, unit: str | None,
    cache: str | None = None,
) -> tuple[_LevelMeta, Any]:
    image = open_multiscale(url, storage_options, unit=unit, cache=cache)
    info = image.level(level)
    ms = image.multiscale
    docs: dict[str, bytes] = {}
    if cache is not None:
        docs = process_cache().documents((cache, location_key(url)), _metadata_keys(info.path))
    inventory = None
    if inventory_wanted(url):
        memo = None if cache is None else (cache, location_key(url), info.path)
        inventory = build_inventory(image.open_array(info.index), join_url(url, info.path),
                                    memo=memo)
    meta = _LevelMeta(
        info=info,
        version=ms.version,
        axes=tuple((a.name, a.type) for a in ms.axes),
        time_index=ms.axis_index("time"),
        channel_index=ms.axis_index("channel"),
        channel_labels=image.channel_labels,
        documents=tuple(sorted(docs.items())),
        inventory=inventory,
    )
    return meta, image


@dataclass
class OMEZarrReaderConstructor(ConstructReaderMethod):
    """Picklable constructor of :class:`OMEZarrReader` for one pyramid level.

    Parameters
    ----------
    url:
        Multiscale group URL (local path, ``file://``, ``s3://``, ``http(s)://``).
    level:
        Level index (0 = finest, negative counts from the coarsest) or path.
    storage_options:
        fsspec options for remote URLs (never printed unredacted).
    channel, time:
        Entry selected along the channel / time axis, if the image has one:
        an index (negative counts from the end) or, for channels, a label
        from the image's ``omero`` metadata.
    unit:
        Convert spatial lengths to this unit (e.g. ``"millimeter"``).
    cache:
        A cache token (``ngff_dreg.register`` makes one per run). With one,
        each process keeps the level's metadata and a bounded cache of its
        chunks (:mod:`ngff_dreg.io.storage.chunk_cache`): the metadata is fetched
        once by the client and handed to the workers with the constructor,
        and chunks shared by neighbouring blocks are fetched once per
        worker. ``None``: every read goes to the store.

    """

    url: str
    level: int | str = 0
    storage_options: Mapping[str, Any] | None = None
    channel: int | str = 0
    time: int | str = 0
    unit: str | None = None
    cache: str | None = None
    _meta: _LevelMeta | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.url = os.fspath(self.url)
        if self.storage_options is not None:
            self.storage_options = dict(self.storage_options)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_meta" and name in {"url", "level", "storage_options", "unit", "cache"}:
            object.__setattr__(self, "_meta", None)
        object.__setattr__(self, name, value)

    def __call__(self, **kwargs: Any) -> OMEZarrReader:
        """Return a new reader (metadata is read now, voxels on demand)."""
        return OMEZarrReader(self)

    # -- cheap metadata ----------------------------------------------------
    @property
    def meta(self) -> _LevelMeta:
        """Metadata of the level (read once, then cached; picklable)."""
        if self._meta is None:
            self._meta, _ = _load_meta(self.url, self.level, self.storage_options, self.unit,
                                       self.cache)
        return self._meta

    @property
    def geometry(self) -> ImageGeometry:
        """Spatial geometry of the level."""
        return self.meta.info.geometry

    def selection(self) -> tuple[int | None, int | None]:
        """``(time index, channel index)`` selected (``None`` for an absent axis).

        Raises
        ------
        SelectionNotFoundError
            The channel or time point does not exist (the message lists the labels).

        """
        return _resolve(self.url, self.meta, self.channel, self.time)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Spatial storage chunk shape, NumPy order."""
        return self.meta.info.spatial_chunks

    @property
    def shard_shape(self) -> tuple[int, ...] | None:
        """Spatial shard shape (NumPy order) when the level is sharded, else ``None``."""
        return self.meta.info.spatial_shards

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native voxel dtype."""
        return self.meta.info.dtype

    def describe(self) -> str:
        """One-line summary (credentials redacted)."""
        return _describe(self.url, self.level, self.meta, self.channel, self.time,
                         self.storage_options)

    def __repr__(self) -> str:
        return (
            f"OMEZarrReaderConstructor(url={redact_url(self.url)!r}, level={self.level!r}, "
            f"storage_options={redact_options(self.storage_options)!r}, channel={self.channel}, "
            f"time={self.time}, unit={self.unit!r})"
        )


def _resolve(url: str, meta: _LevelMeta, channel: int | str, time: int | str
             ) -> tuple[int | None, int | None]:
    shape = meta.info.shape
    out: list[int | None] = []
    for idx, want, what, labels in (
        (meta.time_index, time, "time point", ()),
        (meta.channel_index, channel, "channel", meta.channel_labels),
    ):
        if idx is None:
            if want not in (0, "0"):
                raise SelectionNotFoundError(
                    f"{redact_url(url)}: has no {what.split()[0]} axis (axes "
                    f"{[a for a, _ in meta.axes]}), so {what} {want!r} cannot be selected"
                )
            out.append(None)
            continue
        out.append(resolve_selection(want, size=shape[idx], labels=labels, what=what,
                                     image=redact_url(url)))
    return out[0], out[1]


def _describe(
    url: str, level: int | str, meta: _LevelMeta, channel: int | str, time: int | str,
    storage_options: Mapping[str, Any] | None,
) -> str:
    info = meta.info
    g = info.geometry
    sel = []
    if meta.time_index is not None:
        sel.append(f"t={time}")
    if meta.channel_index is not None:
        sel.append(f"c={channel}")
    opts = f" options={redact_options(storage_options)}" if storage_options else ""
    return (
        f"{redact_url(url)} [NGFF {meta.version}] level {level!r} (path {info.path!r}): "
        f"shape {info.shape} axes {[a for a, _ in meta.axes]} chunks {info.chunks} "
        f"dtype {info.dtype}; spacing {g.spacing} origin {g.origin} unit {g.unit}"
        f"{'; ' + ', '.join(sel) if sel else ''}{opts}"
    )


class OMEZarrReader:
    """Reads one level of an OME-Zarr image like ``itk.ImageFileReader``.

    ``GetOutput()`` is an ``itk.Image[itk.F, ndim]`` carrying the level's
    geometry and largest possible region but no voxels. After
    ``GetOutput().SetRequestedRegion(region)``, ``Update()`` loads exactly
    that region into the same image object (buffered region = requested
    region, origin = the full image's origin).
    """

    def __init__(self, constructor: OMEZarrReaderConstructor) -> None:
        self._ctor = constructor
        self._meta = constructor.meta
        self._array: Any = None
        self._output: Any = None
        info = self._meta.info
        self._selection_base = self._base_selection(info.shape)

    # -- plain python API ------------------------------------------------
    @property
    def url(self) -> str:
        """The multiscale group's URL."""
        return self._ctor.url

    @property
    def level_info(self) -> LevelInfo:
        """Description of the level being read."""
        return self._meta.info

    @property
    def geometry(self) -> ImageGeometry:
        """Spatial geometry of the level."""
        return self._meta.info.geometry

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Spatial storage chunk shape, NumPy order."""
        return self._meta.info.spatial_chunks

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, NumPy order."""
        return self._meta.info.spatial_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native voxel dtype."""
        return self._meta.info.dtype

    def describe(self) -> str:
        """One-line summary (credentials redacted)."""
        return self._ctor.describe()

    def _base_selection(self, shape: tuple[int, ...]) -> list[Any]:
        sel: list[Any] = [0] * len(shape)
        t, c = _resolve(self.url, self._meta, self._ctor.channel, self._ctor.time)
        for idx, want in ((self._meta.time_index, t), (self._meta.channel_index, c)):
            if idx is not None and want is not None:
                sel[idx] = want
        return sel

    def _zarr_array(self) -> Any:
        if self._array is None:
            token = self._ctor.cache
            if token is None:
                self._array = self._open_array(None)
            else:
                # One open array per level and process: its metadata is read (or
                # seeded from the constructor) once, and reads share the cache.
                scope = (token, location_key(self._ctor.url))

                def open_seeded() -> Any:
                    process_cache().seed(scope, dict(self._meta.documents))
                    return self._open_array(token)

                self._array = shared_array((*scope, "level", self._meta.info.path), open_seeded)
        return self._array

    def _open_array(self, cache: str | None) -> Any:
        # Only the group and this level's array metadata: no re-parse of the pyramid.
        path = self._meta.info.path
        url = join_url(self._ctor.url, path)

        # the level's read stack (ngff_dreg.io.storage.stack): chunks present at
        # planning must not read as fill value now, and a failed read names its key
        level = LevelReads(path, self._meta.inventory)

        def op() -> Any:
            group = open_group(self._ctor.url, self._ctor.storage_options, cache=cache,
                               level=level)
            meta = "zarr.json" if int(group.metadata.zarr_format) == 3 else ".zarray"
            return map_read_errors(join_url(url, meta), "open level array",
                                   lambda: group[path])

        # Transient store failures are retried with backoff (ngff_dreg.io.storage.retry).
        arr = retry_transient(op, f"opening {redact_url(url)}")
        check_unchanged(arr, self._meta.info, url)
        return arr

    def read_box(self, box: Box) -> npt.NDArray[Any]:
        """Voxels of ``box`` (spatial, NumPy order) in the native dtype.

        Only the storage chunks that intersect ``box`` are fetched.

        Transient store failures (network, throttling) are retried with
        exponential backoff (:func:`ngff_dreg.io.storage.retry.retry_transient`).

        Raises
        ------
        ScheduleError
            If ``box`` does not lie inside the level.
        StoreReadError
            A chunk (or shard) could not be read even after every retry; the
            message names the image URL, the level and the chunk key.
        CorruptChunkError
            A chunk was read but cannot be decoded (corrupt or truncated
            bytes); the message names its key. Not retried.
        StoreAccessError
            The level array could not be opened after every retry.
        StoreChangedError
            The array, or a chunk of it, changed since the run was planned.
        InvalidInputDataError
            Wide-dtype values (``int64``, ``float64``...) whose contrast would
            not survive the conversion to ``float32``
            (:func:`ngff_dreg.validate.check_float32_precision`).

        """
        shape = self.shape
        if box.ndim != len(shape) or any(
            a < 0 or b > s or a > b for a, b, s in zip(box.start, box.stop, shape)
        ):
            raise ScheduleError(
                f"{redact_url(self.url)}: box {box.start}-{box.stop} is not inside the "
                f"level shape {shape}"
            )
        if box.is_empty:
            return np.zeros(box.shape, dtype=self.dtype)
        sel = list(self._selection_base)
        for i, sl in zip(self._meta.info.spatial_indices, box.slices):
            sel[i] = sl
        arr = self._zarr_array()
        path = self._meta.info.path
        url = join_url(self.url, path)
        what = f"read box {box.start}-{box.stop}"
        out = retry_transient(
            lambda: map_read_errors(
                url, what, lambda: read_selection(arr, tuple(sel), self.url, path),
                error=InvalidInputDataError),
            f"{redact_url(url)}: {what}",
        )
        data = np.asarray(out)
        check_float32_precision(data, f"{redact_url(url)} box {box.start}-{box.stop}")
        return data

    # -- ITK-like API -------------------------------------------------------
    def GetOutput(self) -> Any:
        """The output ``itk.Image`` (float32); unbuffered until ``Update()``."""
        if self._output is None:
            from ngff_dreg.itk_bridge import metadata_image

            self._output = metadata_image(self.geometry)
        return self._output

    def UpdateOutputInformation(self) -> None:
        """Make sure the output carries the level's metadata and largest region."""
        from ngff_dreg.itk_bridge import itk_region

        out = self.GetOutput()
        out.SetLargestPossibleRegion(itk_region(Box.full(self.shape)))

    def Update(self) -> None:
        """Load the output's requested region (clipped to the image)."""
        from ngff_dreg.itk_bridge import box_from_region, load_region

        out = self.GetOutput()
        box = box_from_region(out.GetRequestedRegion()).clip(self.shape)
        load_region(out, box, self.read_box(box).astype(np.float32, copy=False))

    def UpdateLargestPossibleRegion(self) -> None:
        """Load the whole level."""
        self.UpdateOutputInformation()
        out = self.GetOutput()
        out.SetRequestedRegion(out.GetLargestPossibleRegion())
        self.Update()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None
        state["_output"] = None
        return state

    def __repr__(self) -> str:
        return f"OMEZarrReader({self.describe()})"
