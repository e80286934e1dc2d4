"""Write a multiscale OME-Zarr image (NGFF 0.4, 0.5 or 0.6) from a NumPy/dask array.

Levels are built by block averaging with dask (2x, or the per-axis factors of
a source pyramid), each from the previous level *as stored*, so memory stays
bounded by a few chunks whatever the image size. Time and channel axes may lead
the spatial ones; they are never downsampled.
Voxel data is written first and the OME metadata last: a group whose
attributes lack ``multiscales`` is an interrupted write.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg import config
from ngff_dreg.blocks import GridSlabs
from ngff_dreg.errors import (
    InvalidInputDataError,
    InvalidMetadataError,
    OutputExistsError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import ImageGeometry, one_per_axis
from ngff_dreg.io.omezarr.shards import ShardSpec, level_shards, requested_shards, resolve_shards
from ngff_dreg.io.storage.store_errors import map_store_errors
from ngff_dreg.io.storage.stores import destination_state, open_store, zarr_group
from ngff_dreg.io.storage.urls import redact_url
from ngff_dreg.ngff.metadata import normalize_unit

__all__ = [
    "LeadingAxis",
    "WRITER_VERSIONS",
    "level_factors",
    "level_geometries",
    "multiscale_attributes",
    "pyramid_factors",
    "write_multiscale",
]

logger = logging.getLogger(__name__)

WRITER_VERSIONS = ("0.4", "0.5", "0.6")
_AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


@dataclass(frozen=True)
class LeadingAxis:
    """A time or channel axis written before the spatial ones (never downsampled).

    Attributes
    ----------
    name:
        Axis name (``"t"``, ``"c"``).
    type:
        NGFF axis type (``"time"``, ``"channel"`` or a custom one).
    unit:
        Unit (time axes), or ``None``.
    scale, translation:
        The axis's coordinate transform, the same on every level.

    """

    name: str
    type: str | None = None
    unit: str | None = None
    scale: float = 1.0
    translation: float = 0.0

    def __post_init__(self) -> None:
        if self.type == "space":
            raise InvalidInputDataError(f"leading axis {self.name!r} cannot be a space axis")

    def json(self) -> dict[str, Any]:
        """The NGFF ``axes`` entry."""
        out: dict[str, Any] = {"name": self.name}
        if self.type:
            out["type"] = self.type
        if self.unit:
            out["unit"] = self.unit
        return out


def _resolve_downsample_axes(
    downsample_axes: Sequence[int | str] | None, ndim: int
) -> tuple[int, ...]:
    names = _AXIS_NAMES[ndim]
    if downsample_axes is None:
        return tuple(range(ndim))
    out = []
    for a in downsample_axes:
        if isinstance(a, str):
            if a not in names:
                raise InvalidInputDataError(f"downsample_axes: unknown axis {a!r}; use {names}")
            out.append(names.index(a))
        else:
            i = int(a)
            if not -ndim <= i < ndim:
                raise InvalidInputDataError(f"downsample_axes: axis {i} out of range")
            out.append(i % ndim)
    return tuple(sorted(set(out)))


def level_factors(
    ndim: int,
    n_levels: int,
    downsample_axes: Sequence[int] | None = None,
    factors: Sequence[Sequence[int]] | None = None,
) -> list[tuple[int, ...]]:
    """Cumulative downsampling factor of every level (spatial axes, NumPy order).

    With ``factors`` (one per-axis factor per level after the first, relative
    to the level before it), level ``N`` is the product of the first ``N``;
    otherwise it is ``2**N`` along ``downsample_axes`` (all axes by default).
    """
    if factors is not None:
        out = [(1,) * ndim]
        for step in factors[: max(0, n_levels - 1)]:
            out.append(tuple(int(a) * int(b) for a, b in zip(out[-1], step)))
        return out
    axes = tuple(range(ndim)) if downsample_axes is None else tuple(downsample_axes)
    return [tuple(2**n if i in axes else 1 for i in range(ndim)) for n in range(n_levels)]


def level_geometries(
    geometry: ImageGeometry,
    n_levels: int,
    downsample_axes: Sequence[int] | None = None,
    factors: Sequence[Sequence[int]] | None = None,
) -> list[ImageGeometry]:
    """Geometries of a pyramid (pixel-centre convention).

    Level ``N`` has ``shape = ceil(shape_0 / f_N)`` (NumPy order),
    ``spacing_N = spacing_0 * f_N`` and
    ``origin_N = origin_0 + D @ (spacing_N - spacing_0) / 2``, where ``f_N`` is
    the level's cumulative factor (:func:`level_factors`: ``2**N`` along
    ``downsample_axes`` by default, or the products of ``factors``).
    """
    out = []
    d = geometry.direction_matrix
    s0 = np.asarray(geometry.spacing)
    for f in level_factors(geometry.ndim, n_levels, downsample_axes, factors):
        factor_np = np.asarray(f)
        shape = tuple(int(math.ceil(s / f)) for s, f in zip(geometry.shape, factor_np))
        sn = s0 * factor_np[::-1]
        origin = np.asarray(geometry.origin) + d @ ((sn - s0) / 2.0)
        out.append(ImageGeometry(shape, sn, origin, geometry.direction, geometry.unit))
    return out


def pyramid_factors(geometries: Sequence[ImageGeometry]) -> list[tuple[int, ...]]:
    """Per-level downsampling factors of an existing pyramid (NumPy order, level ``N`` vs ``N-1``).

    Each factor is the spacing ratio rounded to an integer (at least 1), so a
    pyramid that kept ``z`` at full resolution on level 1 gives ``(1, 2, 2)``
    there. Give the result to :func:`write_multiscale` (``factors=``) to make
    a pyramid that follows its source.
    """
    out = []
    for prev, cur in itertools.pairwise(geometries):
        ratio = np.asarray(cur.spacing, dtype=np.float64) / np.asarray(prev.spacing)
        out.append(tuple(max(1, round(float(r))) for r in ratio[::-1]))
    return out


def _default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    edge = 64 if len(shape) == 3 else 256
    return tuple(max(1, min(edge, int(s))) for s in shape)


def _default_levels(shape: Sequence[int], chunks: Sequence[int], axes: Sequence[int]) -> int:
    n = 1
    cur = list(shape)
    while n < 12 and axes and any(cur[a] > chunks[a] for a in axes):
        cur = [int(math.ceil(c / 2)) if i in axes else c for i, c in enumerate(cur)]
        n += 1
    return n


def _is_proper_rotation(m: npt.NDArray[np.float64]) -> bool:
    return bool(np.allclose(m @ m.T, np.eye(len(m)), atol=1e-9) and np.linalg.det(m) > 0)


def multiscale_attributes(
    geometries: Sequence[ImageGeometry],
    paths: Sequence[str],
    version: str,
    name: str = "image",
    leading_axes: Sequence[LeadingAxis] = (),
    omero: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Group attributes describing a pyramid in NGFF ``version``.

    Returns the full attribute mapping: ``{"multiscales": [...]}`` for 0.4,
    ``{"ome": {"version": ..., "multiscales": [...]}}`` for 0.5/0.6.
    ``leading_axes`` (time, channel) come before the spatial axes; ``omero``
    (channel labels, colours, windows) is stored next to ``multiscales``.
    """
    g0 = geometries[0]
    oblique = not g0.is_axis_aligned
    if oblique and version != "0.6":
        raise InvalidMetadataError(
            f"NGFF {version} cannot store the direction {g0.direction_matrix.tolist()}; "
            "write version '0.6' (rotation/affine) instead"
        )
    if oblique and leading_axes:
        raise InvalidMetadataError(
            "an oblique direction is written for spatial-only images; "
            f"drop the axes {[a.name for a in leading_axes]} or resample to an axis-aligned grid"
        )
    axes = [a.json() for a in leading_axes] + _spatial_axes(g0)
    lead_scale = [float(a.scale) for a in leading_axes]
    lead_trans = [float(a.translation) for a in leading_axes]
    s0 = np.asarray(g0.spacing)
    datasets = []
    for path, g in zip(paths, geometries):
        scale = lead_scale + [float(v) for v in reversed(g.spacing)]
        if oblique:
            # intrinsic frame: axis-aligned, origin_0 at 0; rotation applied after
            trans = [float(v) for v in reversed((np.asarray(g.spacing) - s0) / 2.0)]
        else:
            trans = lead_trans + [float(v) for v in reversed(g.origin)]
        datasets.append({"path": path, "coordinateTransformations": _dataset_ct(
            version, path, scale, trans, oblique)})
    ms: dict[str, Any] = {"name": name}
    if version == "0.6":
        systems = [{"name": "physical", "axes": axes}]
        if oblique:
            systems.append({"name": "intrinsic", "axes": [dict(a) for a in axes]})
        ms["coordinateSystems"] = systems
    else:
        ms["axes"] = axes
    ms["datasets"] = datasets
    if oblique:
        ms["coordinateTransformations"] = [_oblique_transform(g0)]
    ms["type"] = "mean"
    ms["metadata"] = {"method": "ngff_dreg block mean", "pixel_convention": "center"}
    if version == "0.4":
        ms["version"] = "0.4"
        out: dict[str, Any] = {"multiscales": [ms]}
        if omero:
            out["omero"] = dict(omero)
        return out
    ome: dict[str, Any] = {"version": version, "multiscales": [ms]}
    if omero:
        ome["omero"] = dict(omero)
    return {"ome": ome}


def _spatial_axes(g0: ImageGeometry) -> list[dict[str, Any]]:
    unit = normalize_unit(g0.unit) if g0.unit else None
    if g0.unit and unit is None:
        unit = g0.unit
    axes: list[dict[str, Any]] = []
    for nm in _AXIS_NAMES[g0.ndim]:
        ax: dict[str, Any] = {"name": nm, "type": "space"}
        if unit:
            ax["unit"] = unit
        axes.append(ax)
    return axes


def _dataset_ct(version: str, path: str, scale: list[float], trans: list[float],
                oblique: bool) -> list[dict[str, Any]]:
    if version == "0.6":
        return [{
            "type": "sequence",
            "input": {"path": path},
            "output": {"name": "intrinsic" if oblique else "physical"},
            "transformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": trans},
            ],
        }]
    return [
        {"type": "scale", "scale": scale},
        {"type": "translation", "translation": trans},
    ]


def _oblique_transform(g0: ImageGeometry) -> dict[str, Any]:
    d_np = g0.direction_matrix[::-1, ::-1]
    o_np = [float(v) for v in reversed(g0.origin)]
    if _is_proper_rotation(d_np):
        return {
            "type": "sequence",
            "input": {"name": "intrinsic"},
            "output": {"name": "physical"},
            "transformations": [
                {"type": "rotation", "rotation": d_np.tolist()},
                {"type": "translation", "translation": o_np},
            ],
        }
    affine = np.concatenate([d_np, np.asarray(o_np)[:, None]], axis=1)
    return {
        "type": "affine",
        "affine": affine.tolist(),
        "input": {"name": "intrinsic"},
        "output": {"name": "physical"},
    }


def _downsample(prev: Any, factor: Sequence[int], chunks: Sequence[int],
                dtype: np.dtype[Any]) -> Any:
    """Block mean of a dask array by ``factor`` per axis (edges padded by replication)."""
    import dask.array as da

    axes = [i for i, f in enumerate(factor) if f > 1]
    pad = [(0, (-prev.shape[i]) % factor[i]) for i in range(prev.ndim)]
    x = prev
    if any(p[1] for p in pad):
        x = da.pad(x, pad, mode="edge")
    work = np.float32 if dtype == np.float32 else np.float64
    x = x.astype(work)
    x = x.rechunk(tuple(f * c for f, c in zip(factor, chunks)))
    if axes:
        x = da.coarsen(np.mean, x, {a: factor[a] for a in axes}, trim_excess=False)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = da.clip(da.round(x), info.min, info.max)
    elif dtype == np.bool_:
        x = x >= 0.5
    return x.astype(dtype)


def write_multiscale(
    url: str | os.PathLike[str],
    data: Any,
    geometry: ImageGeometry,
    *,
    version: str = "0.5",
    n_levels: int | None = None,
    chunks: Sequence[int] | int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    name: str = "image",
    downsample_axes: Sequence[int | str] | None = None,
    dtype: Any = None,
    factors: Sequence[Sequence[int]] | None = None,
    leading_axes: Sequence[LeadingAxis] = (),
    omero: Mapping[str, Any] | None = None,
    shards: ShardSpec = None,
) -> None:
    """Write ``data`` as a multiscale OME-Zarr image.

    Parameters
    ----------
    url:
        Destination group (local path, ``file://`` or fsspec URL such as ``s3://``).
    data:
        NumPy or dask array, NumPy order: the ``leading_axes`` (if any) then
        the spatial axes (``z, y, x`` or ``y, x``). Dask input is streamed
        chunk by chunk.
    geometry:
        Spatial geometry of ``data``; ``geometry.shape`` must equal the
        spatial part of ``data.shape``.
    version:
        ``"0.4"`` (Zarr v2), ``"0.5"`` (Zarr v3) or ``"0.6"`` (Zarr v3,
        ``coordinateSystems``; a non-identity direction is stored as a
        multiscales-level ``rotation``/``affine``). 0.4/0.5 cannot store a
        direction.
    n_levels:
        Number of levels; by default ``len(factors) + 1`` with ``factors``,
        else until the coarsest level fits in one chunk along the downsampled
        axes.
    chunks:
        Spatial chunk shape (NumPy order) or one edge for all spatial axes;
        64 (3D) or 256 (2D) by default, capped by the shape. Leading axes are
        chunked by 1.
    storage_options, overwrite, name:
        fsspec options for remote URLs; replace an existing group (otherwise
        raise :class:`OutputExistsError`); the multiscale's ``name``.
    downsample_axes:
        Axes halved per level (indices or names ``"z"``, ``"y"``, ``"x"``); all
        by default. Ignored with ``factors``.
    dtype:
        Output dtype (default: ``data.dtype``); integers are rounded and clipped.
    factors:
        Per-level spatial downsampling factors (NumPy order), each relative
        to the level before it, e.g. from :func:`pyramid_factors` of a source
        pyramid so that the new one follows it.
    leading_axes:
        Time/channel axes before the spatial ones (:class:`LeadingAxis`).
    omero:
        ``omero`` metadata to store (channel labels, colours, windows).
    shards:
        Zarr v3 only: store each level in shards of this spatial shape (NumPy
        order, or one edge for all spatial axes; the ``sharding_indexed``
        codec) of whole ``chunks``, or ``"auto"`` (4 chunks per axis); capped
        per level, leading axes sharded by 1. One dask task writes each shard
        whole (memory: one shard). ``None`` (default): one object per chunk.

    Raises
    ------
    OutputExistsError
        The destination exists and ``overwrite`` is false.
    InvalidInputDataError
        ``data`` and ``geometry`` disagree or options are invalid.
    UnsupportedVersionError
        ``version`` is not one ngff-dreg writes.
    InvalidMetadataError
        The direction cannot be stored in ``version``.
    StoreAccessError
        The store cannot be written.

    """
    text = os.fspath(url)
    safe = redact_url(text)
    version = str(version)
    lead = tuple(leading_axes)
    chunk_shape, axes, n_levels = _check_arguments(
        safe, data, geometry, version, n_levels, chunks, downsample_axes, factors, len(lead)
    )
    if geometry.unit is None:
        logger.warning("%s: geometry has no unit; axes are written without 'unit'", safe)
    plan = _plan_pyramid(safe, geometry, version, name, n_levels, axes, factors, lead, omero,
                         chunk_shape, np.dtype(data.dtype if dtype is None else dtype), shards)

    root = _create_root(text, storage_options, overwrite, plan.fmt)
    _write_levels(root, text, data, plan)

    # Metadata last: a group without it is an interrupted write.
    map_store_errors(text, "write metadata", lambda: root.attrs.put(plan.attrs))
    logger.info("%s: wrote NGFF %s pyramid with %d level(s)", safe, version, n_levels)


@dataclass(frozen=True)
class _Pyramid:
    """What :func:`write_multiscale` writes, every part checked before anything is."""

    fmt: int
    geoms: tuple[ImageGeometry, ...]
    paths: tuple[str, ...]
    steps: tuple[tuple[int, ...], ...]  # spatial factor of each level over the one before
    chunk_shape: tuple[int, ...]  # spatial
    out_dtype: np.dtype[Any]
    lead: tuple[LeadingAxis, ...]
    shard_shape: tuple[int, ...] | None  # spatial; None: not sharded
    attrs: dict[str, Any]


def _plan_pyramid(
    safe: str, geometry: ImageGeometry, version: str, name: str, n_levels: int,
    axes: tuple[int, ...], factors: Sequence[Sequence[int]] | None,
    lead: tuple[LeadingAxis, ...], omero: Mapping[str, Any] | None,
    chunk_shape: tuple[int, ...], out_dtype: np.dtype[Any],
    shards: ShardSpec,
) -> _Pyramid:
    """Level geometries, factors, metadata and shard shape of a write (validated)."""
    geoms = level_geometries(geometry, n_levels, axes, factors)
    cumulative = level_factors(geometry.ndim, n_levels, axes, factors)
    paths = [str(i) for i in range(n_levels)]
    attrs = multiscale_attributes(geoms, paths, version, name, lead, omero)
    fmt = 2 if version == "0.4" else 3
    return _Pyramid(
        fmt=fmt, geoms=tuple(geoms), paths=tuple(paths),
        steps=tuple(tuple(b // a for a, b in zip(p, c))
                    for p, c in itertools.pairwise(cumulative)),
        chunk_shape=chunk_shape, out_dtype=out_dtype, lead=lead,
        shard_shape=_check_shards(safe, shards, chunk_shape, tuple(geometry.shape), fmt),
        attrs=attrs,
    )


def _create_root(text: str, storage_options: Mapping[str, Any] | None, overwrite: bool,
                 fmt: int) -> Any:
    """The destination group, created empty (refusing to replace what must not be)."""
    safe = redact_url(text)
    store = open_store(text, storage_options, read_only=False)
    state = map_store_errors(text, "check destination", lambda: destination_state(store))
    if state == "foreign":
        raise OutputExistsError(
            f"{safe}: exists and holds data that is not a Zarr group; refusing to replace it"
        )
    if state == "zarr" and not overwrite:
        raise OutputExistsError(f"{safe}: a Zarr node exists already; pass overwrite=True")
    return map_store_errors(
        text, "create group",
        lambda: zarr_group(store, mode="w", zarr_format=fmt),
    )


def _check_shards(
    safe: str, shards: ShardSpec, chunk_shape: tuple[int, ...], shape: tuple[int, ...], fmt: int
) -> tuple[int, ...] | None:
    """The requested spatial shard shape, checked against level 0 (``None``: not sharded)."""
    if shards is None:
        return None
    if fmt != 3:
        raise InvalidInputDataError(f"{safe}: shards need Zarr v3 (NGFF 0.5 or 0.6), not 0.4")
    resolve_shards(shards, chunk_shape, shape, where=safe)  # malformed or split chunks: an error
    return requested_shards(shards, chunk_shape, where=safe)


def _check_arguments(
    safe: str,
    data: Any,
    geometry: ImageGeometry,
    version: str,
    n_levels: int | None,
    chunks: Sequence[int] | int | None,
    downsample_axes: Sequence[int | str] | None,
    factors: Sequence[Sequence[int]] | None = None,
    n_lead: int = 0,
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``(spatial chunk shape, downsampled axes, number of levels)`` of a write, all checked."""
    if version not in WRITER_VERSIONS:
        raise UnsupportedVersionError(
            f"{safe}: cannot write NGFF version {version!r}; choose one of {WRITER_VERSIONS}"
        )
    shape = tuple(getattr(data, "shape", ()))
    ndim = len(shape) - n_lead
    if ndim not in (2, 3):
        raise InvalidInputDataError(
            f"{safe}: data must have {n_lead} leading axis(es) and 2 or 3 spatial ones, "
            f"got shape {shape}"
        )
    if shape[n_lead:] != tuple(geometry.shape):
        raise InvalidInputDataError(
            f"{safe}: data shape {shape} differs from geometry shape {geometry.shape}"
        )
    if not geometry.is_axis_aligned and version != "0.6":
        raise InvalidMetadataError(
            f"{safe}: NGFF {version} cannot store a non-identity direction; use version='0.6'"
        )
    try:
        chunk_shape = (
            _default_chunks(geometry.shape)
            if chunks is None
            else tuple(max(1, min(int(c), int(s)))
                       for c, s in zip(one_per_axis(chunks, ndim, "chunks"), geometry.shape))
        )
    except ValueError as exc:
        raise InvalidInputDataError(f"{safe}: {exc}") from exc
    axes = _resolve_downsample_axes(downsample_axes, ndim)
    if factors is not None:
        bad = [f for f in factors if len(f) != ndim or any(int(v) < 1 for v in f)]
        if bad:
            raise InvalidInputDataError(
                f"{safe}: factors must be {ndim} integers >= 1 per level, got {bad[0]}"
            )
        if n_levels is None:
            n_levels = len(factors) + 1
        elif int(n_levels) > len(factors) + 1:
            raise InvalidInputDataError(
                f"{safe}: n_levels={n_levels} but only {len(factors)} level factor(s) given"
            )
    if n_levels is None:
        n_levels = _default_levels(geometry.shape, chunk_shape, axes)
    if int(n_levels) < 1:
        raise InvalidInputDataError(f"{safe}: n_levels must be >= 1, got {n_levels}")
    return chunk_shape, axes, int(n_levels)


def store_regions(chunks: Sequence[Sequence[int]], limit: int) -> list[tuple[slice, ...]]:
    """Regions of at most ``limit`` chunks each that cover an array once, in order.

    ``chunks``: the array's chunk sizes per axis (dask's ``chunks``). The
    chunk grid is cut as a block stage's grid is (:class:`~ngff_dreg.blocks.GridSlabs`):
    slabs of whole chunk rows along the slowest axis; where one row alone
    holds more than ``limit`` chunks, it is cut along the next axis the same
    way (a single chunk is always one region).
    """
    if not chunks:
        return [()]
    if not all(len(c) for c in chunks):
        return []
    edges = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    slabs = GridSlabs([len(c) for c in chunks], max(1, int(limit)))
    return [tuple(slice(int(e[a]), int(e[b])) for e, a, b in zip(edges, box.start, box.stop))
            for box in slabs.boxes()]


def _write_levels(root: Any, text: str, data: Any, plan: _Pyramid) -> None:
    """Write level 0, then each coarser level from the one stored before it.

    A sharded level is written one whole shard per dask task. A level of more
    write chunks (or shards) than ``ngff-dreg.output.store-chunks`` is written
    in slabs (:func:`store_regions`), one compute each.
    """
    import dask.array as da

    safe = redact_url(text)
    geoms, paths, steps, chunk_shape = plan.geoms, plan.paths, plan.steps, plan.chunk_shape
    out_dtype, fmt, lead, shard_shape = plan.out_dtype, plan.fmt, plan.lead, plan.shard_shape
    n_lead = len(lead)
    level = da.asarray(data)
    if level.dtype != out_dtype:
        if np.issubdtype(out_dtype, np.integer) and not np.issubdtype(level.dtype, np.integer):
            info = np.iinfo(out_dtype)
            level = da.clip(da.round(level), info.min, info.max)
        level = level.astype(out_dtype)
    names = [a.name for a in lead] + list(_AXIS_NAMES[len(chunk_shape)])
    lead_shape = tuple(int(n) for n in level.shape[:n_lead])
    prev_stored: Any = None
    for i, (path, g) in enumerate(zip(paths, geoms)):
        if prev_stored is not None:
            level = _downsample(prev_stored, (1,) * n_lead + steps[i - 1],
                                (1,) * n_lead + chunk_shape, out_dtype)
        full = lead_shape + g.shape
        if tuple(level.shape) != full:
            raise AssertionError(f"level {i} shape {level.shape} != {full}")
        # a chunk edge is at least 1 (zarr >= 3.4 refuses 0, even on an empty axis)
        level_chunks = (1,) * n_lead + tuple(max(1, min(c, s))
                                             for c, s in zip(chunk_shape, g.shape))
        kwargs: dict[str, Any] = {
            "name": path, "shape": full, "chunks": level_chunks, "dtype": out_dtype,
            "fill_value": 0, "overwrite": True,
        }
        if fmt == 3:
            kwargs["dimension_names"] = names
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        write_chunks = level_chunks
        if shard_shape is not None:
            write_chunks = (1,) * n_lead + level_shards(shard_shape, level_chunks[n_lead:],
                                                        g.shape)
            kwargs["shards"] = write_chunks
        arr = map_store_errors(
            text, f"create level {path}", functools.partial(root.create_array, **kwargs)
        )
        level = level.rechunk(write_chunks)
        regions = store_regions(level.chunks, config.store_chunks())
        for region in regions:
            map_store_errors(
                text, f"write level {path}",
                functools.partial(da.store, level[region], arr, regions=region, lock=False,
                                  compute=True),
            )
        if len(regions) > 1:
            logger.debug("%s: level %s written in %d slabs", safe, path, len(regions))
        prev_stored = da.from_array(arr, chunks=level_chunks)
        logger.debug("%s: wrote level %s shape %s", safe, path, full)
