"""Apply a fixed->moving transform: resample a moving OME-Zarr image into fixed space.

Each output chunk is one dask task: it maps *all* its fixed voxel centres
through the transform (so interior displacement larger than at the corners is
seen), takes the bounding box of the mapped points in the moving image plus an
interpolation margin, reads only that region, and interpolates. Chunks are
written once each by :func:`ngff_dreg.io.omezarr.image_writer.write_multiscale`, which
builds the pyramid (level offsets included) and writes metadata last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.geometry import Box, ImageGeometry, one_per_axis
from ngff_dreg.interfaces import RegistrationTransformResult
from ngff_dreg.io.omezarr.shards import ShardSpec
from ngff_dreg.transforms import AffineTransform, TransformChain, map_points

__all__ = [
    "MovingSelection",
    "apply_transform",
    "output_chunks",
    "select_moving",
    "transform_points",
    "warp_chunk",
    "warp_chunk_channels",
]

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]


def _resolve(transform: Any, storage_options: Mapping[str, Any] | None,
             inverse: bool = False, axes: tuple[tuple[str, ...] | None, ...] = (None, None)
             ) -> Any:
    """A transform argument as something that maps points.

    ``axes``: the names of the source and target points' coordinates (ITK
    order) for a ``SCENE:SOURCE:TARGET`` reference (default ``x, y, z``).
    """
    if isinstance(transform, str):
        from ngff_dreg.io.omezarr.scene_reader import SceneMap, parse_scene_reference
        from ngff_dreg.io.omezarr.transform_reader import read_transform

        ref = parse_scene_reference(transform)
        if ref is not None:  # SCENE:SOURCE:TARGET, any RFC-5 scene
            scene = SceneMap(*ref, storage_options=storage_options, axes=axes[0],
                             target_axes=axes[1])
            return (scene.inverse() if inverse else scene).check()
        return read_transform(transform, storage_options, inverse=inverse)
    if isinstance(transform, RegistrationTransformResult):
        return transform.inv_transform if inverse else transform.transform
    return transform


def _invert_points(transform: Any, points: FloatArray, iterations: int = 50,
                   tol: float = 1e-9) -> FloatArray:
    """Solve ``T(x) = y`` for a forward chain by fixed-point iteration.

    For ``T(x) = A(x + D(x))``: ``x = A⁻¹y - D(x)``.
    """
    if isinstance(transform, AffineTransform):
        return transform.inverse().transform_points(points)
    if isinstance(transform, TransformChain) and not transform.affine_first:
        z = transform.affine.inverse().transform_points(points)
        if transform.field is None:
            return z
        x = z.copy()
        for _ in range(iterations):
            new = z - transform.field.sample(x)
            done = float(np.abs(new - x).max()) < tol if len(x) else True
            x = new
            if done:
                break
        return x
    # generic: Newton-free fixed point on x = x - (T(x) - y)
    x = np.asarray(points, dtype=np.float64).copy()
    for _ in range(iterations):
        r = map_points(transform, x) - points
        x = x - r
        if float(np.abs(r).max()) < tol:
            break
    return x


def transform_points(points: npt.ArrayLike, transform: Any, inverse: bool = False, *,
                     storage_options: Mapping[str, Any] | None = None) -> FloatArray:
    """Map physical points fixed->moving, or moving->fixed with ``inverse``.

    Parameters
    ----------
    points:
        ``(N, ndim)`` physical points, ITK order (x, y, z).
    transform:
        A :class:`TransformChain`, an ``itk.Transform``, a
        :class:`~ngff_dreg.interfaces.RegistrationTransformResult` (its
        ``inv_transform`` is used for ``inverse``), or an NGFF scene URL (its
        bijection's inverse is used for ``inverse``).
    inverse:
        Map moving->fixed. Without a stored inverse the forward map is inverted
        point-wise by fixed-point iteration.
    storage_options:
        fsspec options when ``transform`` is a URL.

    Returns
    -------
    numpy.ndarray
        ``(N, ndim)`` mapped points.

    """
    pts = np.asarray(points, dtype=np.float64)
    pts2 = pts.reshape(-1, pts.shape[-1])
    if isinstance(transform, RegistrationTransformResult):
        if inverse and transform.inv_transform is not None:
            return map_points(transform.inv_transform, pts2).reshape(pts.shape)
        transform = transform.transform
    if isinstance(transform, str):
        if inverse:
            try:
                inv = _resolve(transform, storage_options, inverse=True)
            except Exception:  # no bijection stored: invert numerically
                inv = None
            if inv is not None:
                return map_points(inv, pts2).reshape(pts.shape)
        transform = _resolve(transform, storage_options)
    if inverse:
        return _invert_points(transform, pts2).reshape(pts.shape)
    return map_points(transform, pts2).reshape(pts.shape)


def warp_chunk(box: Box, fixed: ImageGeometry, transform: Any, moving_ctor: Any, *,
               order: int = 1, fill_value: float = 0.0, dtype: Any = np.float32
               ) -> npt.NDArray[Any]:
    """Resample one output chunk: ``out[x] = moving(T(x))`` for the fixed voxels in ``box``.

    Parameters
    ----------
    box:
        The chunk (fixed voxel indices, NumPy order).
    fixed:
        Fixed (output) geometry.
    transform:
        Fixed->moving transform (:class:`TransformChain`, ``itk.Transform``...).
    moving_ctor:
        Picklable reader constructor of the moving level; its reader has
        ``geometry`` and ``read_box``.
    order:
        Spline order (0 nearest, 1 linear, 3 cubic).
    fill_value:
        Value where the mapped point falls outside the moving image.
    dtype:
        Output dtype (integers are rounded and clipped).

    """
    planes = warp_chunk_channels(box, fixed, transform, [moving_ctor], order=order,
                                 fill_value=fill_value, dtype=dtype)
    return np.asarray(planes[0])


def warp_chunk_channels(box: Box, fixed: ImageGeometry, transform: Any,
                        moving_ctors: Sequence[Any], *, order: int = 1, fill_value: float = 0.0,
                        dtype: Any = np.float32) -> npt.NDArray[Any]:
    """:func:`warp_chunk` for several moving channels/time points sharing one geometry.

    The chunk's voxel centres are mapped through the transform once; each
    constructor in ``moving_ctors`` (one per channel or time point) then reads
    only the moving region those points fall in. Returns
    ``(len(moving_ctors), *box.shape)``.
    """
    readers = [ctor() for ctor in moving_ctors]
    mgeom: ImageGeometry = readers[0].geometry
    axes = [np.arange(a, b) for a, b in zip(box.start, box.stop)]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, fixed.ndim)
    pts = fixed.array_index_to_physical(idx.astype(np.float64))
    midx = mgeom.physical_to_index(map_points(transform, pts))[:, ::-1]
    dt = np.dtype(dtype)
    out = np.full((len(readers), *box.shape), fill_value, dtype=np.float64)
    finite = np.all(np.isfinite(midx), axis=1)
    if finite.any():
        margin = 1 if order <= 1 else order + 1
        lo = np.floor(midx[finite].min(axis=0)).astype(int) - margin
        hi = np.ceil(midx[finite].max(axis=0)).astype(int) + 1 + margin
        mbox = Box(tuple(lo), tuple(hi)).clip(mgeom.shape)
        if not mbox.is_empty:
            local = midx - np.asarray(mbox.start, dtype=np.float64)
            # points outside the moving image take fill_value; inside, interpolate
            inside = np.all((midx >= -0.5) & (midx <= np.asarray(mgeom.shape) - 0.5), axis=1)
            keep = inside & finite
            for k, reader in enumerate(readers):
                data = np.asarray(reader.read_box(mbox), dtype=np.float64)
                vals = ndimage.map_coordinates(data, local.T, order=order, mode="nearest")
                out[k].reshape(-1)[keep] = vals[keep]
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dt)


@dataclass(frozen=True)
class MovingSelection:
    """Which time points and channels of a moving image are resampled, and how they are written.

    Attributes
    ----------
    leading:
        The time/channel axes of the output, in the moving image's order.
    combos:
        ``(time, channel)`` of each output plane, time-major; ``None`` for an
        axis the image does not have.
    shape:
        Length of each leading axis in the output.
    omero:
        The moving image's ``omero`` block restricted to the chosen channels.

    """

    leading: tuple[Any, ...]
    combos: tuple[tuple[int | None, int | None], ...]
    shape: tuple[int, ...]
    omero: dict[str, Any] | None


def select_moving(moving_url: str, level: int, storage_options: Mapping[str, Any] | None,
                  channels: Sequence[int | str] | None = None,
                  times: Sequence[int | str] | None = None) -> MovingSelection:
    """Resolve the channels and time points to resample (all by default).

    Raises
    ------
    SelectionNotFoundError
        A channel or time point does not exist (the message lists the labels).

    """
    from ngff_dreg.io.omezarr.image_writer import LeadingAxis
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.io.storage.urls import redact_url
    from ngff_dreg.ngff.channels import resolve_selection, subset_omero

    image = open_multiscale(moving_url, storage_options)
    ms = image.multiscale
    info = image.level(level)
    lv = ms.levels[info.index]
    safe = redact_url(moving_url)
    chosen: dict[str, list[int | None]] = {"time": [None], "channel": [None]}
    leading: list[Any] = []
    shape: list[int] = []
    for i, ax in enumerate(ms.axes):
        if ax.type not in ("time", "channel"):
            continue
        wanted = times if ax.type == "time" else channels
        labels = image.channel_labels if ax.type == "channel" else ()
        what = "time point" if ax.type == "time" else "channel"
        picks = (list(range(info.shape[i])) if wanted is None else
                 [resolve_selection(w, size=info.shape[i], labels=labels, what=what, image=safe)
                  for w in wanted])
        chosen[ax.type] = list(picks)
        leading.append(LeadingAxis(ax.name, ax.type, ax.unit, float(lv.scale[i]),
                                   float(lv.translation[i]) if ax.type == "time" else 0.0))
        shape.append(len(picks))
    combos = tuple((t, c) for t in chosen["time"] for c in chosen["channel"])
    omero = None
    if chosen["channel"] != [None]:
        omero = subset_omero(image.omero, [c for c in chosen["channel"] if c is not None])
    return MovingSelection(tuple(leading), combos, tuple(shape), omero)


def apply_transform(
    moving_url: str,
    fixed_url_or_geometry: str | ImageGeometry,
    transform: Any,
    output_url: str,
    *,
    level: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    moving_storage_options: Mapping[str, Any] | None = None,
    fixed_storage_options: Mapping[str, Any] | None = None,
    transform_storage_options: Mapping[str, Any] | None = None,
    output_storage_options: Mapping[str, Any] | None = None,
    chunks: Sequence[int] | int | None = None,
    version: str = "0.5",
    order: int = 1,
    fill_value: float = 0.0,
    n_levels: int | None = None,
    overwrite: bool = False,
    compute: bool = True,
    scheduler: Any = None,
    channels: Sequence[int | str] | None = None,
    times: Sequence[int | str] | None = None,
    factors: Sequence[Sequence[int]] | None = None,
    shards: ShardSpec = None,
    name: str = "resampled",
) -> ImageGeometry:
    """Warp the moving image into fixed space and write it as a multiscale OME-Zarr.

    Every channel and time point of the moving image is resampled (or the
    ``channels``/``times`` chosen), chunk by chunk; the output keeps the moving
    image's axes, dtype (integers rounded and clipped) and ``omero`` channel
    metadata, on a pyramid that follows the fixed image's.

    Parameters
    ----------
    moving_url, output_url:
        Moving OME-Zarr multiscale image; output group (local or fsspec URL).
    fixed_url_or_geometry:
        Fixed OME-Zarr image URL (its level ``level`` gives the output grid) or
        an :class:`ImageGeometry`.
    transform:
        Fixed->moving transform: :class:`TransformChain`, ``itk.Transform``,
        a :class:`~ngff_dreg.interfaces.RegistrationTransformResult`, an NGFF
        scene URL (read lazily) or ``SCENE:SOURCE:TARGET`` (axes by name).
    level:
        Pyramid level of the fixed and moving images to work at.
    storage_options:
        Default fsspec options for every URL; ``moving_storage_options``,
        ``fixed_storage_options``, ``transform_storage_options`` and
        ``output_storage_options`` override it.
    chunks, version, order, fill_value:
        Output spatial chunk shape (NumPy order) or one edge; NGFF version of
        the output (``"0.5"`` default, ``"0.4"``, ``"0.6"``); interpolation
        order; value outside the moving image.
    n_levels, overwrite:
        Output pyramid levels (default: as many as the fixed pyramid has from
        ``level`` on, or automatic for a geometry); replace an existing output.
    compute, scheduler:
        Write now (default; ``False`` only returns the geometry), with this
        dask scheduler (default: the current one).
    channels, times:
        Channels (indices or ``omero`` labels) and time points to resample, in
        output order; all by default.
    factors:
        Per-level downsampling factors of the output pyramid (NumPy order);
        by default those of the fixed pyramid
        (:func:`~ngff_dreg.io.omezarr.image_writer.pyramid_factors`), 2x for a geometry.
    shards:
        Sharded levels (0.5/0.6; :func:`~ngff_dreg.io.omezarr.image_writer.write_multiscale`).
    name:
        The multiscale's ``name`` (viewers show it as the layer name).

    Returns the geometry of the written level 0. Raises ``SelectionNotFoundError``
    for a channel or time point the moving image does not have.

    """
    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    def opts(specific: Mapping[str, Any] | None) -> dict[str, Any] | None:
        chosen = specific if specific is not None else storage_options
        return dict(chosen) if chosen is not None else None

    fixed, fixed_factors = _output_grid(fixed_url_or_geometry, level, opts(fixed_storage_options))
    factors = _capped(fixed_factors if factors is None else factors, n_levels)
    sel = select_moving(moving_url, level, opts(moving_storage_options), channels, times)
    ctors = _moving_readers(moving_url, level, opts(moving_storage_options), sel, fixed.unit)
    chain = _resolve(transform, opts(transform_storage_options),
                     axes=_point_axes(transform, fixed_url_or_geometry, moving_url,
                                      opts(fixed_storage_options), opts(moving_storage_options)))
    dtype = np.dtype(ctors[0].dtype)
    ch = output_chunks(fixed, chunks)
    warped = _warped(fixed, chain, ctors, ch, order, fill_value, dtype, sel.shape)
    logger.info("resampling %d chunks of %s x %s", warped.npartitions, sel.shape, fixed.shape)
    if compute:
        with _computing_on(scheduler):
            write_multiscale(output_url, warped, fixed, version=version, n_levels=n_levels,
                             chunks=ch, storage_options=opts(output_storage_options),
                             overwrite=overwrite, name=name, dtype=dtype, factors=factors,
                             leading_axes=sel.leading, omero=sel.omero, shards=shards)
    return fixed


def _point_axes(transform: Any, fixed: str | ImageGeometry, moving_url: str,
                fixed_options: Mapping[str, Any] | None,
                moving_options: Mapping[str, Any] | None) -> tuple[tuple[str, ...] | None, ...]:
    """The fixed and moving images' spatial axis names, ITK order, for a scene reference.

    Physical points are in ITK order, the image's spatial axes reversed; for a
    ``SCENE:SOURCE:TARGET`` transform these names find the scene systems'
    axes. ``None`` (``x, y, z``) for a fixed geometry, ``(None, None)`` for
    any other transform.
    """
    from ngff_dreg.io.omezarr.scene_reader import parse_scene_reference

    if not isinstance(transform, str) or parse_scene_reference(transform) is None:
        return (None, None)
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    def names(url: str, options: Mapping[str, Any] | None) -> tuple[str, ...]:
        ms = open_multiscale(url, options).multiscale
        return tuple(a.name for a in ms.spatial_axes)[::-1]

    moving = names(moving_url, moving_options)
    return (None if isinstance(fixed, ImageGeometry) else names(fixed, fixed_options), moving)


def _capped(factors: Sequence[Sequence[int]] | None, n_levels: int | None
            ) -> list[Sequence[int]] | None:
    """The level factors of at most ``n_levels`` levels."""
    if factors is None:
        return None
    return list(factors) if n_levels is None else list(factors)[: max(0, n_levels - 1)]


def output_chunks(fixed: ImageGeometry, chunks: Sequence[int] | int | None) -> tuple[int, ...]:
    """Spatial output chunk shape: ``chunks`` (default 64³ / 256²) capped by the shape."""
    default = 64 if fixed.ndim == 3 else 256
    ch = one_per_axis(default if chunks is None else chunks, fixed.ndim, "chunks")
    return tuple(min(int(c), n) for c, n in zip(ch, fixed.shape))


def _output_grid(fixed: str | ImageGeometry, level: int, storage_options: dict[str, Any] | None
                 ) -> tuple[ImageGeometry, list[tuple[int, ...]] | None]:
    """The output geometry and, for a fixed image URL, its pyramid's factors from ``level`` on."""
    if isinstance(fixed, ImageGeometry):
        return fixed, None
    from ngff_dreg.io.omezarr.image_writer import pyramid_factors
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    image = open_multiscale(fixed, storage_options)
    geoms = [lv.geometry for lv in image.levels]
    idx = image.multiscale.level_index(level)
    return geoms[idx], pyramid_factors(geoms[idx:])


def _moving_readers(moving_url: str, level: int, storage_options: dict[str, Any] | None,
                    sel: MovingSelection, unit: str | None) -> list[Any]:
    """One reader constructor per output plane (time point x channel).

    They share one chunk-cache token (:mod:`ngff_dreg.io.storage.chunk_cache`), drawn
    for this call: output chunks whose moving regions overlap fetch the
    chunks they share once per process.
    """
    import uuid

    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
    from ngff_dreg.io.storage.chunk_cache import cache_enabled

    token = uuid.uuid4().hex if cache_enabled() else None
    return [OMEZarrReaderConstructor(moving_url, level, storage_options,
                                     channel=0 if c is None else c, time=0 if t is None else t,
                                     unit=unit, cache=token)
            for t, c in sel.combos]


def _warped(
    fixed: ImageGeometry,
    chain: Any,
    moving_ctors: Sequence[Any],
    chunks: tuple[int, ...],
    order: int,
    fill_value: float,
    dtype: np.dtype[Any],
    leading: tuple[int, ...] = (),
) -> Any:
    """The moving image in fixed space, lazy: one :func:`warp_chunk_channels` per spatial chunk.

    Shape ``leading + fixed.shape``; each task returns every plane of its chunk.
    """
    import dask.array as da

    template = da.empty(fixed.shape, chunks=chunks, dtype=bool)
    n_lead = len(leading)

    def block(_: Any, block_info: Any = None, tx: Any = None) -> npt.NDArray[Any]:
        loc = block_info[None]["array-location"][n_lead:]
        box = Box(tuple(a for a, _ in loc), tuple(b for _, b in loc))
        planes = warp_chunk_channels(box, fixed, tx, moving_ctors, order=order,
                                     fill_value=fill_value, dtype=dtype)
        return planes.reshape(leading + box.shape)

    if not n_lead:
        return da.map_blocks(block, template, dtype=dtype, tx=chain,
                             meta=np.empty((0,) * fixed.ndim, dtype))
    return da.map_blocks(block, template, dtype=dtype, tx=chain, new_axis=list(range(n_lead)),
                         chunks=tuple((n,) for n in leading) + template.chunks,
                         meta=np.empty((0,) * (n_lead + fixed.ndim), dtype))


def _computing_on(scheduler: Any) -> Any:
    """A context computing on ``scheduler`` (if given) whose workers read with our settings.

    The settings of this process (:mod:`ngff_dreg.config`) are applied on the
    workers of a ``distributed`` scheduler, or of the default client.
    """
    import dask

    from ngff_dreg.cluster import share_settings

    share_settings(scheduler)
    return dask.config.set(scheduler=scheduler) if scheduler is not None else _null()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
