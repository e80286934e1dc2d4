"""Optional per-block elastix adapter (needs the ``itk-elastix`` extra)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ngff_dreg.errors import NgffDregError
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
)
from ngff_dreg.itk_bridge import displacement_field_to_itk, geometry_of
from ngff_dreg.methods._common import (
    as_itk_transform,
    buffered_float_image,
    checked_result,
    failure,
    nan_rimmed,
    resample_into,
)
from ngff_dreg.validate import has_variation

__all__ = ["ElastixBlockRegistration", "ElastixNotAvailableError", "default_bspline_map"]

logger = logging.getLogger(__name__)

ParameterMap = dict[str, list[str]]


class ElastixNotAvailableError(NgffDregError, ImportError):
    """``itk-elastix`` is not installed (``pip install ngff-dreg[elastix]``)."""


def default_bspline_map(
    grid_spacing: float = 16.0,
    resolutions: int = 2,
    iterations: int = 150,
    samples: int = 2000,
    metric: str = "AdvancedNormalizedCorrelation",
) -> ParameterMap:
    """A light elastix B-spline parameter map for one block.

    Random-coordinate sampling with new samples every iteration, adaptive
    stochastic gradient descent, linear interpolation, no result image: the
    per-block cost is a small fraction of elastix's defaults.
    """
    return {
        "Registration": ["MultiResolutionRegistration"],
        "Metric": [metric],
        "Transform": ["BSplineTransform"],
        "FinalGridSpacingInPhysicalUnits": [f"{float(grid_spacing):g}"],
        "GridSpacingSchedule": [f"{2 ** (resolutions - 1 - i):d}" for i in range(resolutions)],
        "NumberOfResolutions": [str(int(resolutions))],
        "MaximumNumberOfIterations": [str(int(iterations))],
        "NumberOfSpatialSamples": [str(int(samples))],
        "ImageSampler": ["RandomCoordinate"],
        "NewSamplesEveryIteration": ["true"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "AutomaticParameterEstimation": ["true"],
        "Interpolator": ["LinearInterpolator"],
        "ResampleInterpolator": ["FinalLinearInterpolator"],
        "Resampler": ["DefaultResampler"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "DefaultPixelValue": ["0"],
        "WriteResultImage": ["false"],
        "WriteIterationInfo": ["false"],
        "AutomaticTransformInitialization": ["false"],
        "HowToCombineTransforms": ["Compose"],
    }


def _elastix() -> Any:
    import itk

    try:
        itk.ElastixRegistrationMethod  # noqa: B018 - triggers ITK's lazy import
        itk.transformix_deformation_field  # noqa: B018
    except AttributeError as exc:
        raise ElastixNotAvailableError(
            "ElastixBlockRegistration needs itk-elastix: pip install 'ngff-dreg[elastix]'"
        ) from exc
    return itk


@dataclass
class ElastixBlockRegistration(BlockPairRegistrationMethod):
    """Register a block pair with elastix, returned as a fixed-space displacement field.

    The moving block is first resampled onto the padded fixed grid through the
    initial transform; elastix then registers the fixed block against that
    pre-warped block, so its result is exactly a transform in fixed space to
    apply before the initial one. It is converted (transformix deformation
    field) to an ``itk.DisplacementFieldTransform`` over the padded block.

    Parameters
    ----------
    parameter_maps:
        elastix parameter maps as plain dicts ``{name: [values]}``, applied in
        sequence. ``None`` uses :func:`default_bspline_map` with
        ``grid_spacing`` (1-2 resolutions, 2000 random samples, 150
        iterations: light enough for many blocks).
    grid_spacing:
        Final B-spline grid spacing (physical units) of the default map;
        ``None`` picks a quarter of the padded block's smallest extent.
    max_displacement_fraction:
        Results moving some block point more than this fraction of the padded
        block diagonal are reported LOW_QUALITY.
    min_correlation:
        Normalised cross-correlation between the fixed block and the
        registered moving block below which the result is LOW_QUALITY.
    log_to_console:
        Let elastix print its log.

    """

    parameter_maps: list[ParameterMap] | None = None
    grid_spacing: float | None = None
    max_displacement_fraction: float = 0.25
    min_correlation: float = 0.2
    log_to_console: bool = False
    extra: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parameter_maps is not None:
            self.parameter_maps = [
                {str(k): [str(v) for v in vals] for k, vals in pm.items()}
                for pm in self.parameter_maps
            ]
        self.extra = {str(k): [str(v) for v in vals] for k, vals in self.extra.items()}

    def maps_for(self, size: tuple[int, ...], spacing: tuple[float, ...]) -> list[ParameterMap]:
        """The parameter maps used for a padded block (``extra`` merged into each)."""
        if self.parameter_maps is not None:
            maps = [dict(pm) for pm in self.parameter_maps]
        else:
            extent = (np.asarray(size, dtype=float) - 1) * np.asarray(spacing, dtype=float)
            gs = self.grid_spacing if self.grid_spacing is not None else float(extent.min()) / 4
            maps = [default_bspline_map(grid_spacing=gs)]
        for pm in maps:
            pm.update(self.extra)
        return maps

    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Register one block pair with elastix.

        See :class:`~ngff_dreg.interfaces.BlockPairRegistrationMethod`.
        """
        itk = _elastix()
        ndim = fixed_subimage.GetImageDimension()
        fixed = buffered_float_image(fixed_subimage)
        fixed_arr = np.asarray(itk.array_view_from_image(fixed), dtype=np.float64)
        if not has_variation(fixed_arr):
            return failure(BlockRegStatus.NO_SIGNAL, f"block {block_info.chunk_index}: no signal")
        moving = buffered_float_image(moving_subimage)
        initial = as_itk_transform(initial_transform, ndim)
        warped = resample_into(nan_rimmed(moving), fixed, initial, default_value=float("nan"))
        warped_arr = np.asarray(itk.array_view_from_image(warped))
        valid = np.isfinite(warped_arr)
        if valid.mean() < 0.25 or not has_variation(warped_arr[valid]):
            return failure(
                BlockRegStatus.OUT_OF_BOUNDS,
                f"block {block_info.chunk_index}: moving region covers "
                f"{100 * valid.mean():.0f}% of the block",
            )
        warped_arr[~valid] = float(warped_arr[valid].mean())
        geom = geometry_of(fixed)
        params = itk.ParameterObject.New()
        for pm in self.maps_for(geom.size, geom.spacing):
            params.AddParameterMap(pm)
        _, result_params = itk.elastix_registration_method(
            fixed, warped, parameter_object=params, log_to_console=self.log_to_console
        )
        import tempfile

        # transformix writes deformationField.* into its output directory
        # (the working directory by default): keep that out of the user's way.
        with tempfile.TemporaryDirectory(prefix="ngff-dreg-transformix-") as tmp:
            field_img = itk.transformix_deformation_field(
                warped, result_params, output_directory=tmp
            )
        vectors = np.asarray(itk.array_from_image(field_img), dtype=np.float64)
        if vectors.shape != (*geom.shape, ndim):
            return failure(
                BlockRegStatus.FAILURE,
                f"block {block_info.chunk_index}: deformation field shape {vectors.shape}",
            )
        if not np.all(np.isfinite(vectors)):
            return failure(
                BlockRegStatus.LOW_QUALITY, f"block {block_info.chunk_index}: non-finite field"
            )
        field_ngff = np.moveaxis(vectors, -1, 0)[::-1]
        transform = displacement_field_to_itk(field_ngff, geom)
        result_arr = np.asarray(
            itk.array_view_from_image(
                resample_into(warped, fixed, transform, default_value=float("nan"))
            ),
            dtype=np.float64,
        )
        inside = np.isfinite(result_arr)
        a = fixed_arr[inside] - fixed_arr[inside].mean()
        b = result_arr[inside] - result_arr[inside].mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        ncc = float((a * b).sum() / den) if den > 0 else float("nan")
        if not np.isfinite(ncc) or ncc < self.min_correlation:
            return failure(
                BlockRegStatus.LOW_QUALITY,
                f"block {block_info.chunk_index}: correlation {ncc:.3f} after elastix",
            )
        logger.debug(
            "block %s: elastix done, ncc %.4f, max displacement %.3g",
            block_info.chunk_index,
            ncc,
            float(np.abs(vectors).max()),
        )
        return checked_result(
            transform, fixed_subimage, -ncc, max_fraction=self.max_displacement_fraction
        )
