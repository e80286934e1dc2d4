"""Helpers shared by the block registration methods.

Everything here builds ITK objects on the fly from the images it is handed;
nothing is cached at module level, so the methods stay picklable and safe to
run in many dask worker threads or processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import ImageGeometry, one_per_axis
from ngff_dreg.interfaces import (
    BlockPairRegistrationResult,
    BlockRegStatus,
    ItkTransformLike,
    SupportsToItk,
)
from ngff_dreg.itk_bridge import geometry_of, image_from_array, metadata_image
from ngff_dreg.validate import has_variation

__all__ = [
    "METRICS",
    "buffered_float_image",
    "block_domain",
    "block_center",
    "identity_transform",
    "identity_bspline",
    "mesh_cells",
    "as_itk_transform",
    "resample_into",
    "nan_rimmed",
    "max_displacement",
    "displacement_bound",
    "success",
    "failure",
    "to_affine_transform",
    "make_metric",
    "physical_scales",
    "normalised_intensity",
]

logger = logging.getLogger(__name__)

METRICS = ("mattes", "correlation", "meansquares")
"""Metric names accepted by the ITK v4 based methods."""


def buffered_float_image(image: Any) -> Any:
    """Copy of the buffered part of ``image`` as a float32 image indexed from zero.

    The copy sits at the same physical place (origin moved to the buffered
    region's first voxel), so ITK filters and registration see one clean
    region whatever the input's start index and requested region were.
    Inconsistent regions left by ITK's pickling (largest region reset to
    start at zero) are repaired on ``image`` first.
    """
    import itk

    geom = geometry_of(image, "buffered")
    buffered = image.GetBufferedRegion()
    if not image.GetLargestPossibleRegion().IsInside(buffered):
        # ITK 5.4 pickling keeps the buffered region but resets the largest
        # possible and requested regions to start at zero; restore them so
        # the buffer can be read.
        logger.debug("repairing image regions (largest region misses the buffer)")
        image.SetLargestPossibleRegion(buffered)
        image.SetRequestedRegion(buffered)
    elif not image.GetBufferedRegion().IsInside(image.GetRequestedRegion()):
        image.SetRequestedRegion(buffered)
    arr = np.asarray(itk.array_view_from_image(image), dtype=np.float32)
    return image_from_array(np.ascontiguousarray(arr), geom)


def block_domain(fixed_subimage: Any) -> Any:
    """Unbuffered image spanning the padded (buffered) fixed block."""
    return metadata_image(geometry_of(fixed_subimage, "buffered"))


def block_center(geometry: ImageGeometry) -> npt.NDArray[np.float64]:
    """Physical point at the centre of ``geometry``'s voxel lattice (ITK order)."""
    centre_index = (np.asarray(geometry.size, dtype=np.float64) - 1.0) / 2.0
    return geometry.index_to_physical(centre_index)


def identity_transform(ndim: int) -> Any:
    """An ``itk.IdentityTransform[D, ndim]``."""
    import itk

    return itk.IdentityTransform[itk.D, ndim].New()


def mesh_cells(size: Sequence[int], spacing: Sequence[float],
               control_point_spacing: Any, mesh_size: Any) -> list[int]:
    """B-spline mesh cells per ITK axis for a padded block of ``size`` voxels.

    From ``control_point_spacing`` (physical, one value or one per axis) when it
    is set, else ``mesh_size`` cells per axis.
    """
    ndim = len(size)
    if control_point_spacing is not None:
        extent = (np.asarray(size, dtype=float) - 1) * np.asarray(spacing, dtype=float)
        cps = np.asarray(one_per_axis(control_point_spacing, ndim, "control_point_spacing"),
                         dtype=float)
        return [max(1, round(e / c)) for e, c in zip(extent, cps)]
    return [max(1, int(m)) for m in one_per_axis(mesh_size, ndim, "mesh_size")]


def identity_bspline(fixed: Any, mesh: Sequence[int]) -> Any:
    """An identity cubic ``itk.BSplineTransform`` over the image ``fixed`` with ``mesh`` cells."""
    import itk

    ndim = fixed.GetImageDimension()
    transform = itk.BSplineTransform[itk.D, ndim, 3].New()
    init = itk.BSplineTransformInitializer[type(transform), itk.Image[itk.F, ndim]].New()
    init.SetTransform(transform)
    init.SetImage(fixed)
    init.SetTransformDomainMeshSize(list(mesh))
    init.InitializeTransform()
    transform.SetIdentity()
    return transform


def as_itk_transform(transform: Any, ndim: int) -> Any:
    """An ITK transform from ``transform``.

    ``None`` becomes the identity; objects with a ``to_itk()`` method (the
    plain transforms of :mod:`ngff_dreg.transforms`) are converted; ITK
    transforms pass through.
    """
    if transform is None:
        return identity_transform(ndim)
    if isinstance(transform, ItkTransformLike):
        return transform
    if isinstance(transform, SupportsToItk):
        return transform.to_itk()
    raise TypeError(f"cannot use {type(transform).__name__} as an ITK transform")


def nan_rimmed(image: Any) -> Any:
    """Float copy of ``image``'s buffered voxels framed by one voxel of NaN.

    ITK's linear interpolator treats a point as inside an image up to half a
    voxel past its outermost voxel centres and repeats the edge voxel there.
    Resampled through this copy, those points come out NaN instead, so a
    block method's mask of moving data ends at the last voxel centre and no
    repeated edge value is fitted as if it were data.
    """
    import itk

    geom = geometry_of(image, "buffered")
    arr = np.asarray(itk.array_view_from_image(image), dtype=np.float32)
    padded = np.pad(arr, 1, mode="constant", constant_values=np.nan)
    origin = geom.index_to_physical(np.full(geom.ndim, -1.0))
    framed = ImageGeometry(padded.shape, geom.spacing, tuple(float(v) for v in origin),
                           geom.direction, geom.unit)
    return image_from_array(padded, framed)


def resample_into(moving: Any, reference: Any, transform: Any, default_value: float = 0.0) -> Any:
    """Resample ``moving`` onto ``reference``'s grid through a fixed→moving transform.

    Linear interpolation; voxels that map outside ``moving`` get
    ``default_value``.
    """
    import itk

    ndim = reference.GetImageDimension()
    image_type = itk.Image[itk.F, ndim]
    resampler = itk.ResampleImageFilter[image_type, image_type].New()
    resampler.SetInput(moving)
    resampler.SetTransform(transform)
    resampler.SetReferenceImage(reference)
    resampler.UseReferenceImageOn()
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetInterpolator(itk.LinearInterpolateImageFunction[image_type, itk.D].New())
    resampler.Update()
    return resampler.GetOutput()


def normalised_intensity(array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Zero-mean, unit-variance copy of ``array`` (NaN/inf set to the mean)."""
    a = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(a)
    mean = float(a[finite].mean()) if finite.any() else 0.0
    a = np.where(finite, a, mean) - mean
    std = float(a.std()) or 1.0
    return (a / std).astype(np.float32)


def max_displacement(transform: Any, geometry: ImageGeometry, per_axis: int = 5) -> float:
    """Largest ``|transform(x) - x|`` over a lattice of points covering ``geometry``."""
    pts = geometry.sample_points(per_axis=per_axis)
    worst = 0.0
    for p in pts:
        q = transform.TransformPoint([float(v) for v in p])
        d = math.dist([float(v) for v in q], [float(v) for v in p])
        if not math.isfinite(d):
            return math.inf
        worst = max(worst, d)
    return worst


def displacement_bound(geometry: ImageGeometry, fraction: float) -> float:
    """``fraction`` of the physical diagonal of ``geometry``'s box."""
    extent = np.asarray(geometry.size, dtype=np.float64) * np.asarray(geometry.spacing)
    return float(fraction * np.linalg.norm(extent))


def success(
    transform: Any,
    fixed_subimage: Any,
    metric: float | None = None,
    message: str = "",
) -> BlockPairRegistrationResult:
    """A SUCCESS result valid over the padded fixed block."""
    value = None if metric is None or not math.isfinite(metric) else float(metric)
    return BlockPairRegistrationResult(
        transform=transform,
        transform_domain=block_domain(fixed_subimage),
        inv_transform=None,
        inv_transform_domain=None,
        status=BlockRegStatus.SUCCESS,
        metric=value,
        message=message,
    )


def buffered_pair(
    fixed_subimage: Any, moving_subimage: Any, block_info: Any
) -> tuple[Any, Any, BlockPairRegistrationResult | None]:
    """Float32, index-0 copies of both blocks, or a NO_SIGNAL result.

    Returns ``(fixed, moving, None)`` when both blocks carry signal, else
    ``(fixed, moving, failure)`` with the NO_SIGNAL result to return.
    """
    import itk

    fixed = buffered_float_image(fixed_subimage)
    if not has_variation(itk.array_view_from_image(fixed)):
        return (
            fixed,
            None,
            failure(BlockRegStatus.NO_SIGNAL, f"block {block_info.chunk_index}: no signal"),
        )
    moving = buffered_float_image(moving_subimage)
    if not has_variation(itk.array_view_from_image(moving)):
        return (
            fixed,
            moving,
            failure(
                BlockRegStatus.NO_SIGNAL, f"block {block_info.chunk_index}: moving has no signal"
            ),
        )
    return fixed, moving, None


def failure(status: BlockRegStatus, message: str) -> BlockPairRegistrationResult:
    """A result with no transform (logged at INFO level)."""
    logger.info("block registration: %s (%s)", status.name, message)
    return BlockPairRegistrationResult.failed(status, message)


def checked_result(
    transform: Any,
    fixed_subimage: Any,
    metric: float | None,
    max_fraction: float,
    message: str = "",
) -> BlockPairRegistrationResult:
    """SUCCESS, unless ``transform`` moves some block point more than allowed.

    The bound is ``max_fraction`` of the padded block's physical diagonal;
    beyond it (or on a non-finite metric) the result is LOW_QUALITY.
    """
    geom = geometry_of(fixed_subimage, "buffered")
    moved = max_displacement(transform, geom)
    bound = displacement_bound(geom, max_fraction)
    if not math.isfinite(moved) or moved > bound:
        return failure(
            BlockRegStatus.LOW_QUALITY,
            f"result moves block points by {moved:.4g} > bound {bound:.4g}",
        )
    if metric is not None and not math.isfinite(metric):
        return failure(BlockRegStatus.LOW_QUALITY, f"non-finite metric {metric}")
    return success(transform, fixed_subimage, metric, message)


def to_affine_transform(transform: Any) -> Any:
    """An ``itk.AffineTransform[D, n]`` equal to a linear ITK transform.

    Euler/similarity/versor transforms carry a centre and several parameter
    conventions; an affine with the same matrix and offset is the simplest
    portable form.
    """
    import itk

    ndim = int(transform.GetInputSpaceDimension())
    matrix = np.asarray(itk.array_from_matrix(transform.GetMatrix()), dtype=np.float64)
    offset = [float(v) for v in transform.GetOffset()]
    out = itk.AffineTransform[itk.D, ndim].New()
    out.SetMatrix(itk.matrix_from_array(matrix.copy()))
    out.SetOffset(offset)
    return out


def make_metric(name: str, ndim: int, bins: int = 32) -> Any:
    """A v4 image metric by name: ``mattes``, ``correlation`` or ``meansquares``."""
    import itk

    image_type = itk.Image[itk.F, ndim]
    if name == "mattes":
        metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
        metric.SetNumberOfHistogramBins(int(bins))
    elif name == "correlation":
        metric = itk.CorrelationImageToImageMetricv4[image_type, image_type].New()
    elif name == "meansquares":
        metric = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
    else:
        raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")
    # Central differences at the sampled points only, instead of filtering
    # whole gradient images up front (the dominant cost on a sampled block).
    metric.SetUseFixedImageGradientFilter(False)
    metric.SetUseMovingImageGradientFilter(False)
    return metric


def physical_scales(metric: Any, transform: Any) -> Any:
    """Parameter scales for ``transform`` estimated from physical shifts."""
    import itk

    estimator = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
    estimator.SetMetric(metric)
    estimator.SetTransformForward(True)
    return estimator


def check_levels(shrink_factors: Sequence[int], smoothing_sigmas: Sequence[float]) -> None:
    """Validate a multi-resolution schedule."""
    if len(shrink_factors) == 0 or len(shrink_factors) != len(smoothing_sigmas):
        raise ValueError(
            "shrink_factors and smoothing_sigmas must be non-empty and of equal length, "
            f"got {shrink_factors} and {smoothing_sigmas}"
        )
    if any(int(f) < 1 for f in shrink_factors):
        raise ValueError(f"shrink factors must be >= 1, got {shrink_factors}")
    if any(float(s) < 0 for s in smoothing_sigmas):
        raise ValueError(f"smoothing sigmas must be >= 0, got {smoothing_sigmas}")


def level_shrink_factors(factor: int, geometry: ImageGeometry, min_size: int = 8) -> list[int]:
    """Per-axis shrink factors (ITK order) that keep every axis >= ``min_size`` voxels."""
    out = []
    for n in geometry.size:
        f = max(1, int(factor))
        while f > 1 and n // f < min_size:
            f -= 1
        out.append(f)
    return out
