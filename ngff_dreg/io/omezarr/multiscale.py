"""Open an OME-Zarr multiscale image: metadata, per-level geometry, lazy arrays."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from ngff_dreg.errors import InvalidMetadataError, LevelNotFoundError, StoreNotFoundError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.storage.retry import retry_transient
from ngff_dreg.io.storage.store_errors import map_read_errors
from ngff_dreg.io.storage.stores import open_group
from ngff_dreg.io.storage.urls import join_url, redact_url
from ngff_dreg.ngff.channels import channel_labels, omero_of
from ngff_dreg.ngff.metadata import Multiscale, parse_multiscale

__all__ = ["LevelInfo", "MultiscaleImage", "open_multiscale", "read_level_info"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LevelInfo:
    """Plain description of one pyramid level (picklable, no handles).

    Attributes
    ----------
    index:
        Position in the pyramid (0 = finest).
    path:
        Array path relative to the multiscale group.
    geometry:
        Spatial geometry (unit-aware).
    shape:
        Full array shape including time/channel axes.
    chunks:
        Full chunk shape (inner chunks when the array is sharded).
    dtype:
        Array dtype.
    spatial_indices:
        Positions of the spatial axes in ``shape``.
    shards:
        Full shard shape, or ``None`` when the array is not sharded.

    """

    index: int
    path: str
    geometry: ImageGeometry
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    spatial_indices: tuple[int, ...]
    shards: tuple[int, ...] | None = None

    @property
    def spatial_chunks(self) -> tuple[int, ...]:
        """Chunk shape of the spatial axes (NumPy order)."""
        return tuple(self.chunks[i] for i in self.spatial_indices)

    @property
    def spatial_shards(self) -> tuple[int, ...] | None:
        """Shard shape of the spatial axes (NumPy order), or ``None`` if unsharded."""
        if self.shards is None:
            return None
        return tuple(self.shards[i] for i in self.spatial_indices)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes (NumPy order)."""
        return tuple(self.shape[i] for i in self.spatial_indices)


def read_level_info(
    group: zarr.Group, multiscale: Multiscale, level: int | str, url: str
) -> tuple[LevelInfo, zarr.Array]:
    """Open one level array of ``group`` and describe it.

    Raises
    ------
    LevelNotFoundError
        If the level is out of range or its array is missing.
    InvalidMetadataError
        If the array's dimensions disagree with the axes.

    """
    idx = multiscale.level_index(level)
    lv = multiscale.levels[idx]
    key = f"datasets[{idx}].path"

    def get() -> Any:
        return group[lv.path]

    try:
        meta = "zarr.json" if int(group.metadata.zarr_format) == 3 else ".zarray"
        arr = map_read_errors(join_url(url, lv.path, meta), f"open level array ('{key}')", get)
    except (KeyError, FileNotFoundError) as exc:
        raise LevelNotFoundError(
            f"{redact_url(url)}: metadata key '{key}' = {lv.path!r}: no array at that path"
        ) from exc
    if not isinstance(arr, zarr.Array):
        raise LevelNotFoundError(
            f"{redact_url(url)}: metadata key '{key}' = {lv.path!r} is a group, not an array"
        )
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) != len(multiscale.axes):
        raise InvalidMetadataError(
            f"{redact_url(url)}: metadata key 'axes' lists {len(multiscale.axes)} axes but level "
            f"{lv.path!r} ('{key}') has {len(shape)} dimensions"
        )
    dim_names = getattr(arr.metadata, "dimension_names", None)
    names = [a.name for a in multiscale.axes]
    if dim_names and list(dim_names) != names:
        logger.warning(
            "%s: level %r dimension_names %s differ from axis names %s",
            redact_url(url), lv.path, list(dim_names), names,
        )
    shards = getattr(arr, "shards", None)
    info = LevelInfo(
        index=idx,
        path=lv.path,
        geometry=multiscale.geometry(idx, shape),
        shape=shape,
        chunks=tuple(int(c) for c in arr.chunks),
        dtype=np.dtype(arr.dtype),
        spatial_indices=multiscale.spatial_indices,
        shards=tuple(int(s) for s in shards) if shards else None,
    )
    return info, arr


_MAX_PARAMETERS = 32 * 33


def _read_parameters(group: zarr.Group, url: str, path: str, key: str) -> Any:
    """The transform parameters stored in the small array at ``path`` of ``group``."""
    where = join_url(url, path)

    def get() -> Any:
        node = group[path]
        if not isinstance(node, zarr.Array):
            raise InvalidMetadataError(f"{redact_url(url)}: metadata key '{key}' = {path!r} "
                                       "is a group, not an array")
        if int(np.prod(node.shape)) > _MAX_PARAMETERS:
            raise InvalidMetadataError(f"{redact_url(url)}: metadata key '{key}' = {path!r}: "
                                       f"array of shape {list(node.shape)} is too large for "
                                       "transform parameters")
        return node[...]

    try:
        return retry_transient(lambda: map_read_errors(where, f"read {key}", get),
                               f"{redact_url(where)}: read transform parameters")
    except (KeyError, StoreNotFoundError) as exc:
        raise InvalidMetadataError(f"{redact_url(url)}: metadata key '{key}' = {path!r}: no "
                                   "array at that path") from exc


@dataclass
class MultiscaleImage:
    """An opened OME-Zarr multiscale image.

    Holds an open Zarr group; do not pickle it (pickle the URL and options, or
    an :class:`~ngff_dreg.io.omezarr.reader.OMEZarrReaderConstructor`, instead).
    """

    url: str
    multiscale: Multiscale
    levels: tuple[LevelInfo, ...]
    group: zarr.Group = field(repr=False)
    zarr_format: int = 3
    _arrays: dict[int, zarr.Array] = field(default_factory=dict, repr=False)
    omero: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def channel_labels(self) -> tuple[str | None, ...]:
        """Channel labels from the ``omero`` metadata (empty when there is none)."""
        return channel_labels(self.omero)

    @property
    def version(self) -> str:
        """NGFF version."""
        return self.multiscale.version

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return self.multiscale.ndim

    def level(self, level: int | str) -> LevelInfo:
        """Description of a level given by index or path."""
        return self.levels[self.multiscale.level_index(level)]

    def geometry(self, level: int | str = 0) -> ImageGeometry:
        """Spatial geometry of a level."""
        return self.level(level).geometry

    def open_array(self, level: int | str = 0) -> zarr.Array:
        """The level's Zarr array (lazy: only metadata is read until sliced)."""
        idx = self.multiscale.level_index(level)
        if idx not in self._arrays:
            _, self._arrays[idx] = read_level_info(self.group, self.multiscale, idx, self.url)
        return self._arrays[idx]

    def __repr__(self) -> str:
        return (
            f"MultiscaleImage(url={redact_url(self.url)!r}, version={self.version!r}, "
            f"levels={[lv.path for lv in self.levels]})"
        )


def open_multiscale(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    unit: str | None = None,
    coordinate_system: str | None = None,
    cache: str | None = None,
) -> MultiscaleImage:
    """Open the OME-Zarr multiscale image at ``url`` (read-only).

    Parameters
    ----------
    url:
        Local path, ``file://``, ``s3://`` or ``http(s)://`` URL of the
        multiscale group.
    storage_options:
        fsspec options for remote URLs.
    name:
        Select a multiscale by ``name`` when the group holds several.
    unit:
        Convert spatial lengths to this unit (e.g. ``"millimeter"``).
    coordinate_system:
        0.6 only: target coordinate system (see
        :func:`~ngff_dreg.ngff.metadata.parse_multiscale`).
    cache:
        A cache token: metadata and chunks are then read through this
        process's chunk cache (see :func:`~ngff_dreg.io.storage.stores.open_store`),
        so opening the same image again in the same run fetches nothing.

    Returns
    -------
    MultiscaleImage
        Metadata of every level; arrays open lazily.

    Raises
    ------
    StoreNotFoundError, StoreAccessError
        The group cannot be found or reached.
    InvalidMetadataError, UnsupportedVersionError, PathEscapeError
        The metadata is missing, unsupported or inconsistent.
    LevelNotFoundError
        A level's array is missing.

    """
    text = os.fspath(url)
    safe = redact_url(text)

    def load() -> tuple[Any, Any]:
        group = open_group(text, storage_options, mode="r", cache=cache)
        return group, map_read_errors(text, "read attributes", lambda: group.attrs.asdict())

    # Metadata reads ride out transient store failures like chunk reads do.
    group, attrs = retry_transient(load, f"{safe}: read metadata")
    multiscale = parse_multiscale(
        attrs, url=safe, name=name, coordinate_system=coordinate_system,
        load_array=functools.partial(_read_parameters, group, text),
    )
    if unit is not None:
        multiscale = multiscale.to_unit(unit)
    fmt = int(group.metadata.zarr_format)
    if (multiscale.version == "0.4") != (fmt == 2):
        logger.warning(
            "%s: NGFF %s stored in Zarr v%d (expected v%d)",
            safe, multiscale.version, fmt, 2 if multiscale.version == "0.4" else 3,
        )
    levels = []
    arrays = {}
    dtype = None
    for i in range(len(multiscale.levels)):
        info, arrays[i] = retry_transient(
            functools.partial(read_level_info, group, multiscale, i, text),
            f"{safe}: read level {i} metadata",
        )
        if dtype is not None and info.dtype != dtype:
            logger.warning("%s: level %r has dtype %s, level 0 has %s", safe, info.path,
                           info.dtype, dtype)
        dtype = dtype or info.dtype
        levels.append(info)
    return MultiscaleImage(
        url=text, multiscale=multiscale, levels=tuple(levels), group=group, zarr_format=fmt,
        _arrays=arrays, omero=omero_of(attrs),
    )
