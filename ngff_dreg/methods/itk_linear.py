"""Per-block linear registration (translation, rigid, affine) with ITK v4."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
)
from ngff_dreg.itk_bridge import geometry_of
from ngff_dreg.methods._common import (
    METRICS,
    as_itk_transform,
    block_center,
    buffered_pair,
    check_levels,
    checked_result,
    failure,
    make_metric,
    physical_scales,
    to_affine_transform,
)

__all__ = ["ItkLinearRegistration", "run_v4_registration"]

logger = logging.getLogger(__name__)

KINDS = ("translation", "rigid", "affine")


def run_v4_registration(
    fixed: Any,
    moving: Any,
    initial_transform: Any,
    transform: Any,
    metric: Any,
    optimizer: Any,
    *,
    shrink_factors: tuple[int, ...],
    smoothing_sigmas: tuple[float, ...],
    sampling_percentage: float | Sequence[float],
    seed: int,
    adaptors: list[Any] | None = None,
) -> float:
    """Optimise ``transform`` in place so that ``initial(transform(x))`` aligns the pair.

    ``fixed`` and ``moving`` are float images indexed from zero. The initial
    transform is the registration's *moving initial transform*, so the
    optimised transform acts on fixed points first. Returns the final metric
    value (lower is better).
    """
    import itk

    ndim = fixed.GetImageDimension()
    image_type = itk.Image[itk.F, ndim]
    reg = itk.ImageRegistrationMethodv4[image_type, image_type].New()
    reg.SetFixedImage(fixed)
    reg.SetMovingImage(moving)
    reg.SetMetric(metric)
    reg.SetOptimizer(optimizer)
    reg.SetMovingInitialTransform(initial_transform)
    reg.SetInitialTransform(transform)
    reg.InPlaceOn()
    reg.SetNumberOfLevels(len(shrink_factors))
    reg.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    percentages = np.broadcast_to(
        np.asarray(sampling_percentage, dtype=np.float64), (len(shrink_factors),)
    )
    if np.any(percentages < 1.0):
        reg.SetMetricSamplingStrategy(
            itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM
        )
        reg.SetMetricSamplingPercentagePerLevel([float(v) for v in percentages])
        reg.MetricSamplingReinitializeSeed(int(seed))
    if adaptors is not None:
        reg.SetTransformParametersAdaptorsPerLevel(adaptors)
    reg.Update()
    return float(optimizer.GetValue())


@dataclass
class ItkLinearRegistration(BlockPairRegistrationMethod):
    """Per-block translation, rigid or affine registration with ``ImageRegistrationMethodv4``.

    The initial transform is set as the moving initial transform; the
    optimised transform is centred on the padded block's centre and scaled by
    physical shifts, so the optimiser's step is in physical units whatever the
    spacing. The returned transform is an ``itk.TranslationTransform`` (kind
    ``"translation"``) or an ``itk.AffineTransform`` (``"rigid"``,
    ``"affine"``), acting on fixed points before the initial transform.

    Parameters
    ----------
    kind:
        ``"translation"``, ``"rigid"`` (Euler 2D/3D) or ``"affine"``.
    metric:
        ``"mattes"`` (mutual information, multimodal), ``"correlation"`` or
        ``"meansquares"``.
    shrink_factors, smoothing_sigmas:
        Per-level shrink factors and Gaussian sigmas (voxels), coarse to fine.
    iterations:
        Maximum iterations per level.
    sampling_percentage:
        Fraction of voxels randomly sampled by the metric (1 = all).
    learning_rate:
        Largest first step, in multiples of the smallest voxel spacing.
    min_step:
        Stop when the regular-step optimiser's step falls below this
        (relative to ``learning_rate``).
    relaxation:
        Step shrink factor when the gradient changes direction.
    histogram_bins:
        Bins of the Mattes metric.
    max_displacement_fraction:
        Results that move some block point by more than this fraction of the
        padded block diagonal are reported LOW_QUALITY.
    seed:
        Seed of the random metric sampling (results are reproducible).

    """

    kind: str = "rigid"
    metric: str = "mattes"
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas: tuple[float, ...] = (1.0, 0.0)
    iterations: int = 100
    sampling_percentage: float = 0.1
    learning_rate: float = 2.0
    min_step: float = 0.01
    relaxation: float = 0.5
    histogram_bins: int = 32
    max_displacement_fraction: float = 0.25
    seed: int = 20240601

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        self.shrink_factors = tuple(int(f) for f in self.shrink_factors)
        self.smoothing_sigmas = tuple(float(s) for s in self.smoothing_sigmas)
        check_levels(self.shrink_factors, self.smoothing_sigmas)
        if not 0 < self.sampling_percentage <= 1:
            raise ValueError(
                f"sampling_percentage must be in (0, 1], got {self.sampling_percentage}"
            )

    def _make_transform(self, ndim: int, center: np.ndarray) -> Any:
        import itk

        if self.kind == "translation":
            return itk.TranslationTransform[itk.D, ndim].New()
        if self.kind == "rigid":
            tx = (itk.Euler2DTransform if ndim == 2 else itk.Euler3DTransform)[itk.D].New()
        else:
            tx = itk.AffineTransform[itk.D, ndim].New()
        tx.SetCenter([float(v) for v in center])
        return tx

    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Register one block pair.

        See :class:`~ngff_dreg.interfaces.BlockPairRegistrationMethod`.
        """
        import itk

        ndim = fixed_subimage.GetImageDimension()
        fixed, moving, skipped = buffered_pair(fixed_subimage, moving_subimage, block_info)
        if skipped is not None:
            return skipped
        geom = geometry_of(fixed)
        transform = self._make_transform(ndim, block_center(geom))
        metric = make_metric(self.metric, ndim, self.histogram_bins)
        optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
        optimizer.SetScalesEstimator(physical_scales(metric, transform))
        step = float(self.learning_rate) * float(min(geom.spacing))
        optimizer.SetLearningRate(step)
        optimizer.SetMinimumStepLength(step * float(self.min_step))
        optimizer.SetRelaxationFactor(float(self.relaxation))
        optimizer.SetNumberOfIterations(int(self.iterations))
        optimizer.SetGradientMagnitudeTolerance(1e-8)
        optimizer.SetReturnBestParametersAndValue(False)
        # Keep the learning rate in physical units: one estimate of the
        # per-parameter scale, no re-estimation of the step.
        optimizer.SetDoEstimateLearningRateOnce(False)
        optimizer.SetDoEstimateLearningRateAtEachIteration(False)
        initial = as_itk_transform(initial_transform, ndim)
        value = run_v4_registration(
            fixed,
            moving,
            initial,
            transform,
            metric,
            optimizer,
            shrink_factors=self.shrink_factors,
            smoothing_sigmas=self.smoothing_sigmas,
            sampling_percentage=self.sampling_percentage,
            seed=self.seed,
        )
        if not math.isfinite(value):
            return failure(
                BlockRegStatus.LOW_QUALITY,
                f"block {block_info.chunk_index}: metric diverged ({value})",
            )
        if self.kind != "translation":
            transform = to_affine_transform(transform)
        logger.debug(
            "block %s: %s %s, metric %.4g, stop: %s",
            block_info.chunk_index,
            self.kind,
            list(transform.GetParameters()),
            value,
            optimizer.GetStopConditionDescription(),
        )
        return checked_result(
            transform, fixed_subimage, value, max_fraction=self.max_displacement_fraction
        )
