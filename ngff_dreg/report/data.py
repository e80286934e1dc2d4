"""What the registration report shows, read from an output scene with bounded memory.

Only coarse pyramid levels, single planes and streamed histograms are read:
the report of a terabyte registration loads a few megabytes.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.geometry import Box, ImageGeometry, chunk_boxes
from ngff_dreg.io.omezarr.output_state import MARKER_KEY, Checkpoints, StageReport, stage_reports
from ngff_dreg.transforms import TransformChain

__all__ = [
    "Plane",
    "SceneInfo",
    "choose_level",
    "displacement_planes",
    "image_planes",
    "jacobian_histogram",
    "jacobian_planes",
    "read_scene_info",
    "versions",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Largest edge (voxels) of the pyramid level the report reads.
MAX_LEVEL_EDGE = 256
#: Largest edge (pixels) of a displayed plane.
MAX_PLANE_EDGE = 512


@dataclass
class SceneInfo:
    """Attributes of an ngff-dreg output scene.

    Attributes
    ----------
    url:
        The output scene URL.
    fixed_url, moving_url:
        The registered images, as recorded in the scene (``ngff_dreg.images``).
    report:
        The final reduction's figures.
    stages:
        One :class:`~ngff_dreg.io.omezarr.output_state.StageReport` per stage, in run order.

    """

    url: str
    fixed_url: str | None
    moving_url: str | None
    report: dict[str, Any]
    stages: list[StageReport]


def read_scene_info(url: str, storage_options: Mapping[str, Any] | None = None) -> SceneInfo:
    """Read the scene attributes and the checkpoint manifest of an output.

    Parameters
    ----------
    url:
        Output scene written by :func:`ngff_dreg.pipeline.register`.
    storage_options:
        fsspec options for a remote URL.

    Returns
    -------
    SceneInfo
        Image URLs, final report and per-stage summaries.

    Raises
    ------
    InvalidMetadataError, IncompleteOutputError
        ``url`` is not a complete ngff-dreg scene.

    """
    from ngff_dreg.io.omezarr.transform_reader import read_scene_attributes

    attrs = read_scene_attributes(url, storage_options)
    own = attrs.get(MARKER_KEY, {}) if isinstance(attrs.get(MARKER_KEY), Mapping) else {}
    images = own.get("images", {}) if isinstance(own.get("images"), Mapping) else {}
    # a scene written by hand has no manifest
    manifest: Mapping[str, Any] = Checkpoints(url, storage_options).read() or {}
    stages = stage_reports(manifest.get("stages", {}))
    if not stages and own.get("status_map") is not None:
        status = np.asarray(own["status_map"], dtype=np.int16)
        stages = [StageReport("final", 0, 0, "?", status=status, seconds=float("nan"),
                              report=dict(own.get("report", {})))]
    return SceneInfo(
        url=url,
        fixed_url=images.get("fixed"),
        moving_url=images.get("moving"),
        report=dict(own.get("report", {}) or {}),
        stages=stages,
    )


def choose_level(geometries: Sequence[ImageGeometry], max_edge: int = MAX_LEVEL_EDGE) -> int:
    """Index of the finest level whose largest edge is at most ``max_edge``.

    Falls back to the coarsest level when every level is larger.
    """
    for i, g in enumerate(geometries):
        if max(g.shape) <= max_edge:
            return i
    return len(geometries) - 1


@dataclass
class Plane:
    """One displayed plane of the fixed grid.

    Attributes
    ----------
    name:
        Human-readable name, e.g. ``"axial (z = 24)"``.
    axes:
        The two NumPy axes shown (rows, columns).
    index_zyx:
        NumPy-order fixed-level indices of the plane's pixels, ``(rows, cols, ndim)``.
    extent:
        Physical extent ``(left, right, bottom, top)`` for ``imshow``.

    """

    name: str
    axes: tuple[int, int]
    index_zyx: FloatArray
    extent: tuple[float, float, float, float]

    @property
    def shape(self) -> tuple[int, int]:
        """Rows, columns."""
        return (int(self.index_zyx.shape[0]), int(self.index_zyx.shape[1]))

    def points(self, geometry: ImageGeometry) -> FloatArray:
        """Physical points (ITK order) of the plane's pixels, ``(rows*cols, ndim)``."""
        return geometry.array_index_to_physical(self.index_zyx.reshape(-1, geometry.ndim))


_AXIS_NAMES = {0: "z", 1: "y", 2: "x"}
_PLANE_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


def mid_planes(geometry: ImageGeometry, max_edge: int = MAX_PLANE_EDGE) -> list[Plane]:
    """The three orthogonal mid-planes of a 3D grid (or the image itself in 2D).

    Planes larger than ``max_edge`` pixels are subsampled.
    """
    shape = geometry.shape
    ndim = geometry.ndim
    if ndim == 2:
        choices: list[tuple[int | None, tuple[int, int]]] = [(None, (0, 1))]
    elif ndim == 3:
        choices = [(0, (1, 2)), (1, (0, 2)), (2, (0, 1))]
    else:
        raise InvalidMetadataError(f"the report shows 2D or 3D images, not {ndim}D")
    planes: list[Plane] = []
    for normal, (ra, ca) in choices:
        rows = _display_axis(shape[ra], max_edge)
        cols = _display_axis(shape[ca], max_edge)
        idx = np.zeros((rows.size, cols.size, ndim))
        if normal is not None:
            idx[..., normal] = (shape[normal] - 1) // 2
        idx[..., ra] = rows[:, None]
        idx[..., ca] = cols[None, :]
        sp = geometry.spacing[::-1]  # NumPy order
        extent = (
            -0.5 * sp[ca],
            (shape[ca] - 0.5) * sp[ca],
            (shape[ra] - 0.5) * sp[ra],
            -0.5 * sp[ra],
        )
        if normal is None:
            name = "image"
        else:
            name = f"{_PLANE_NAMES[normal]} ({_AXIS_NAMES[normal]} = {(shape[normal] - 1) // 2})"
        planes.append(Plane(name, (ra, ca), idx, extent))
    return planes


def _display_axis(n: int, max_edge: int) -> FloatArray:
    step = max(1, math.ceil(n / max_edge))
    return np.arange(0, n, step, dtype=np.float64)


def sample_level(
    reader: Any, geometry: ImageGeometry, points: FloatArray, *, order: int = 1
) -> FloatArray:
    """Values of a pyramid level at physical ``points`` (zero outside).

    Only the bounding box of the points (plus one voxel) is read.
    """
    from scipy import ndimage

    idx = geometry.physical_to_index(points)[:, ::-1]
    shape = np.asarray(geometry.shape)
    finite = np.all(np.isfinite(idx), axis=1)
    out = np.zeros(points.shape[0])
    if not finite.any():
        return out
    lo = np.floor(idx[finite].min(axis=0)).astype(int) - 1
    hi = np.floor(idx[finite].max(axis=0)).astype(int) + 2
    box = Box(tuple(np.clip(lo, 0, shape)), tuple(np.clip(hi, 0, shape)))
    if box.is_empty:
        return out
    data = np.nan_to_num(np.asarray(reader.read_box(box), dtype=np.float32))
    local = (idx[finite] - np.asarray(box.start)).T
    out[finite] = ndimage.map_coordinates(data, local, order=order, mode="constant", cval=0.0)
    return out


@dataclass
class ImagePlanes:
    """Fixed, moving-before and moving-after values on one :class:`Plane`."""

    plane: Plane
    fixed: FloatArray
    before: FloatArray
    after: FloatArray


def image_planes(
    fixed_url: str,
    moving_url: str,
    transform: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    max_edge: int = MAX_LEVEL_EDGE,
) -> tuple[list[ImagePlanes], ImageGeometry, int]:
    """Fixed and moving (before / after registration) on the fixed mid-planes.

    The fixed and moving images are read at a coarse level (largest edge at
    most ``max_edge``). "Before" samples the moving image at the same physical
    points; "after" samples it at ``transform(points)``.

    Returns
    -------
    planes, geometry, level:
        One :class:`ImagePlanes` per plane, the fixed level's geometry and its index.

    """
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
    from ngff_dreg.schedule import matching_level

    fms = open_multiscale(fixed_url, storage_options)
    fgeoms = [lvl.geometry for lvl in fms.levels]
    f_level = choose_level(fgeoms, max_edge)
    fg = fgeoms[f_level]
    unit = fg.unit
    mms = open_multiscale(moving_url, storage_options, unit=unit) if unit else open_multiscale(
        moving_url, storage_options
    )
    mgeoms = [lvl.geometry for lvl in mms.levels]
    m_level = matching_level(mgeoms, fg.spacing)
    f_reader = OMEZarrReaderConstructor(
        fixed_url, level=f_level, storage_options=storage_options, unit=unit
    )()
    m_reader = OMEZarrReaderConstructor(
        moving_url, level=m_level, storage_options=storage_options, unit=unit
    )()
    mg = m_reader.geometry
    fg = f_reader.geometry
    out: list[ImagePlanes] = []
    for plane in mid_planes(fg):
        pts = plane.points(fg)
        shape = plane.shape
        fixed = sample_level(f_reader, fg, pts, order=0).reshape(shape)
        before = sample_level(m_reader, mg, pts).reshape(shape)
        mapped = np.asarray(transform.transform_points(pts), dtype=np.float64)
        after = sample_level(m_reader, mg, mapped).reshape(shape)
        out.append(ImagePlanes(plane, fixed, before, after))
    logger.info("report images: fixed level %d %s, moving level %d", f_level, fg.shape, m_level)
    return out, fg, f_level


def displacement_planes(
    transform: Any, geometry: ImageGeometry, planes: Sequence[Plane]
) -> list[FloatArray]:
    """The deformable part of ``transform`` on each plane, ``(rows, cols, ndim)`` NumPy order.

    For a chain ``A(x + d(x))`` this is ``d`` (the affine removed); for a
    chain without a field it is zero; for any other transform, ``T(x) - x``.
    """
    out: list[FloatArray] = []
    for plane in planes:
        pts = plane.points(geometry)
        chain = transform if isinstance(transform, TransformChain) else None
        if chain is not None and chain.field is None:
            disp = np.zeros_like(pts)
        elif chain is not None and chain.field is not None and not chain.affine_first:
            disp = np.asarray(chain.field.sample(pts), dtype=np.float64)
        else:
            disp = np.asarray(transform.transform_points(pts), dtype=np.float64) - pts
        out.append(disp[:, ::-1].reshape(*plane.shape, geometry.ndim))
    return out


def _jacobian_array(url: str, storage_options: Mapping[str, Any] | None) -> Any | None:
    from ngff_dreg.io.storage.stores import zarr_array

    try:
        return zarr_array(url, "quality/jacobian", storage_options, mode="r")
    except Exception as exc:
        logger.info("no quality/jacobian in %s (%s)", url, exc)
        return None


def jacobian_planes(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    field_geometry: ImageGeometry | None = None,
    max_edge: int = MAX_PLANE_EDGE,
) -> list[tuple[str, FloatArray, tuple[float, float, float, float]]] | None:
    """Mid-planes of ``quality/jacobian`` (only those planes are read).

    Returns ``[(name, plane, extent), ...]`` or ``None`` without a Jacobian map.
    """
    arr = _jacobian_array(url, storage_options)
    if arr is None:
        return None
    shape = tuple(int(s) for s in arr.shape)
    ndim = len(shape)
    if field_geometry is not None and tuple(field_geometry.shape) == shape:
        geom = field_geometry
    else:
        geom = ImageGeometry(shape, (1.0,) * ndim, (0.0,) * ndim)
    out = []
    for plane in mid_planes(geom, max_edge):
        ra, ca = plane.axes
        sel: list[Any] = [slice(None)] * ndim
        for ax in range(ndim):
            if ax not in (ra, ca):
                sel[ax] = (shape[ax] - 1) // 2
        rstep = max(1, math.ceil(shape[ra] / max_edge))
        cstep = max(1, math.ceil(shape[ca] / max_edge))
        sel[ra] = slice(None, None, rstep)
        sel[ca] = slice(None, None, cstep)
        data = np.asarray(arr[tuple(sel)], dtype=np.float64)
        out.append((plane.name, data, plane.extent))
    return out


def jacobian_histogram(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    bins: int = 80,
    lo: float = -0.5,
    hi: float = 3.0,
) -> tuple[npt.NDArray[np.int64], FloatArray, dict[str, float]] | None:
    """Histogram of the Jacobian determinant, streamed chunk by chunk.

    Values outside ``[lo, hi]`` are counted in the end bins.

    Returns
    -------
    counts, edges, stats:
        ``stats`` has ``min``, ``max``, ``mean``, ``folded_fraction``
        (determinant ≤ 0) and ``n``. ``None`` without a Jacobian map.

    """
    arr = _jacobian_array(url, storage_options)
    if arr is None:
        return None
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    n = 0
    folded = 0
    total = 0.0
    vmin, vmax = math.inf, -math.inf
    step = [max(c, 1) for c in arr.chunks]
    # Read whole chunks but at most ~8M values at a time.
    while math.prod(step) > 8_000_000:
        k = int(np.argmax(step))
        step[k] = max(1, step[k] // 2)
    for box in chunk_boxes(arr.shape, step):
        v = np.asarray(arr[box.slices], dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        counts += np.histogram(np.clip(v, lo, hi), edges)[0]
        n += v.size
        folded += int((v <= 0).sum())
        total += float(v.sum())
        vmin, vmax = min(vmin, float(v.min())), max(vmax, float(v.max()))
    stats = {
        "min": vmin if n else math.nan,
        "max": vmax if n else math.nan,
        "mean": total / n if n else math.nan,
        "folded_fraction": folded / n if n else math.nan,
        "n": float(n),
    }
    return counts, edges, stats


def versions() -> dict[str, str]:
    """Versions of ngff-dreg and the libraries it ran with."""
    out: dict[str, str] = {}
    for dist in ("ngff-dreg", "itk", "itk-elastix", "zarr", "dask", "distributed", "numpy",
                 "scipy", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out
