"""Fast per-block translation by FFT phase correlation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.fitting.smoothing import masked_smooth
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
)
from ngff_dreg.itk_bridge import geometry_of
from ngff_dreg.methods._common import (
    as_itk_transform,
    buffered_float_image,
    checked_result,
    failure,
    nan_rimmed,
    resample_into,
)
from ngff_dreg.validate import has_variation

__all__ = ["PhaseCorrelationTranslation", "phase_correlation_shift"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


def _window(shape: tuple[int, ...], alpha: float) -> FloatArray:
    """Separable Tukey window (``alpha`` = tapered fraction of each axis)."""
    win = np.ones(shape)
    for axis, n in enumerate(shape):
        w = np.ones(n)
        taper = int(round(alpha * n / 2))
        if taper > 0:
            ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(taper) + 0.5) / taper))
            w[:taper] = ramp
            w[n - taper :] = ramp[::-1]
        shp = [1] * len(shape)
        shp[axis] = n
        win = win * w.reshape(shp)
    return win


def _prepare(a: FloatArray, valid: npt.NDArray[np.bool_], window: FloatArray) -> FloatArray:
    mean = float(a[valid].mean()) if valid.any() else 0.0
    out = np.where(valid, a, mean) - mean
    std = float(out[valid].std()) if valid.any() else 1.0
    return out / (std or 1.0) * window


def _parabolic_offset(values: tuple[float, float, float]) -> float:
    """Sub-sample offset of a peak from three equally spaced samples around it."""
    left, centre, right = values
    if min(values) > 0:  # Gaussian (log-parabola) fit: less biased on sharp peaks
        ll, lc, lr = np.log(left), np.log(centre), np.log(right)
        denom = ll - 2.0 * lc + lr
        if denom < 0:
            return float(np.clip(0.5 * (ll - lr) / denom, -0.5, 0.5))
    denom = left - 2.0 * centre + right
    if denom >= 0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def phase_correlation_shift(
    fixed: npt.ArrayLike,
    moving: npt.ArrayLike,
    *,
    max_shift: npt.ArrayLike | None = None,
    window_alpha: float = 0.4,
    valid: npt.ArrayLike | None = None,
) -> tuple[FloatArray, float]:
    """Shift ``s`` (voxels, NumPy order) with ``fixed[i] ≈ moving[i + s]``.

    Parameters
    ----------
    fixed, moving:
        Arrays of the same shape.
    max_shift:
        Largest accepted ``|s|`` per axis (voxels); the peak is searched only
        within it. Defaults to a quarter of each axis.
    window_alpha:
        Tukey window taper fraction, against wrap-around edges.
    valid:
        Boolean mask of voxels where ``moving`` holds data (others are filled
        with its mean before windowing).

    Returns
    -------
    shift, peak:
        Sub-voxel shift (parabolic refinement of the correlation peak) and the
        normalised peak height (1 for a perfect match, ~0 for noise).

    """
    f = np.asarray(fixed, dtype=np.float64)
    m = np.asarray(moving, dtype=np.float64)
    if f.shape != m.shape:
        raise ValueError(f"shapes differ: {f.shape} vs {m.shape}")
    shape = f.shape
    valid_m = np.isfinite(m) if valid is None else (np.asarray(valid, bool) & np.isfinite(m))
    window = _window(shape, window_alpha)
    fa = _prepare(f, np.isfinite(f), window)
    ma = _prepare(m, valid_m, window)
    ff = np.fft.rfftn(fa)
    mf = np.fft.rfftn(ma)
    cross = ff * np.conj(mf)
    mag = np.abs(cross)
    cross /= mag + 1e-3 * (float(mag.max()) or 1.0)
    corr = np.fft.irfftn(cross, s=shape)
    limit = (
        np.asarray([n // 4 for n in shape], dtype=np.float64)
        if max_shift is None
        else np.broadcast_to(np.asarray(max_shift, dtype=np.float64), (len(shape),))
    )
    # correlation lag n corresponds to shift s = -n (mod N)
    masked = corr.copy()
    for axis, n in enumerate(shape):
        lags = np.fft.fftfreq(n, 1.0 / n)
        bad = np.abs(lags) > limit[axis]
        if bad.any():
            idx = [slice(None)] * len(shape)
            idx[axis] = bad
            masked[tuple(idx)] = -np.inf
    peak_index = np.unravel_index(int(np.argmax(masked)), shape)
    peak = float(corr[peak_index])
    lag = np.empty(len(shape))
    for axis, n in enumerate(shape):
        i = peak_index[axis]
        samples = []
        for d in (-1, 0, 1):
            j = list(peak_index)
            j[axis] = (i + d) % n
            samples.append(float(corr[tuple(j)]))
        base = i if i <= n // 2 else i - n
        lag[axis] = base + _parabolic_offset((samples[0], samples[1], samples[2]))
    return -lag, peak


def _ncc(a: FloatArray, b: FloatArray, mask: npt.NDArray[np.bool_]) -> float:
    if mask.sum() < 8:
        return float("nan")
    x = a[mask] - a[mask].mean()
    y = b[mask] - b[mask].mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


@dataclass
class PhaseCorrelationTranslation(BlockPairRegistrationMethod):
    """Per-block translation by FFT phase correlation (fast, for coarse levels).

    The moving region is resampled onto the padded fixed block's grid through
    the initial transform; the residual shift between the fixed block and that
    pre-warped moving block is found by phase correlation with a Tukey window,
    refined to sub-voxel precision by parabolic peak fitting and a few
    re-estimation passes. The result is an ``itk.TranslationTransform`` in
    fixed space (applied before the initial transform).

    Parameters
    ----------
    max_shift_fraction:
        Largest accepted shift as a fraction of the padded block's extent per
        axis.
    refinements:
        Extra passes that re-estimate the residual after shifting by the
        current estimate (each costs one resample and one FFT pair).
    window_alpha:
        Tukey window taper fraction.
    min_correlation:
        Normalised cross-correlation after alignment below which the block is
        reported LOW_QUALITY.
    smoothing_sigma:
        Gaussian pre-smoothing (voxels) of both blocks; 0 disables it.

    """

    max_shift_fraction: float = 0.25
    refinements: int = 2
    window_alpha: float = 0.4
    min_correlation: float = 0.2
    smoothing_sigma: float = 0.0

    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Estimate the residual translation of one block pair.

        See :class:`~ngff_dreg.interfaces.BlockPairRegistrationMethod`.
        """
        import itk

        ndim = fixed_subimage.GetImageDimension()
        fixed = buffered_float_image(fixed_subimage)
        fixed_arr = np.asarray(itk.array_view_from_image(fixed), dtype=np.float64)
        if not has_variation(fixed_arr):
            return failure(BlockRegStatus.NO_SIGNAL, f"block {block_info.chunk_index}: no signal")
        moving = buffered_float_image(moving_subimage)
        initial = as_itk_transform(initial_transform, ndim)
        warped = resample_into(nan_rimmed(moving), fixed, initial, default_value=float("nan"))
        warped_arr = np.asarray(itk.array_view_from_image(warped), dtype=np.float64)
        valid = np.isfinite(warped_arr)
        if valid.mean() < 0.25 or not has_variation(warped_arr[valid]):
            return failure(
                BlockRegStatus.OUT_OF_BOUNDS,
                f"block {block_info.chunk_index}: moving region covers "
                f"{100 * valid.mean():.0f}% of the block",
            )
        warped_arr = np.where(valid, warped_arr, float(warped_arr[valid].mean()))
        if self.smoothing_sigma > 0:
            fixed_arr = ndimage.gaussian_filter(fixed_arr, self.smoothing_sigma)
            warped_arr = masked_smooth(warped_arr, valid, self.smoothing_sigma)
        shape = fixed_arr.shape
        limit = np.asarray([max(1.0, self.max_shift_fraction * n) for n in shape])
        shift = np.zeros(ndim)
        current, cur_valid = warped_arr, valid
        for _ in range(1 + max(0, int(self.refinements))):
            delta, _peak = phase_correlation_shift(
                fixed_arr,
                current,
                max_shift=limit,
                window_alpha=self.window_alpha,
                valid=cur_valid,
            )
            shift = shift + delta
            if np.any(np.abs(shift) > limit):
                return failure(
                    BlockRegStatus.LOW_QUALITY,
                    f"block {block_info.chunk_index}: shift {shift} beyond {limit}",
                )
            # current[i] = warped[i + shift]
            current = ndimage.shift(warped_arr, -shift, order=1, mode="nearest")
            cur_valid = ndimage.shift(valid.astype(np.float32), -shift, order=0, cval=0.0) > 0.5
            if np.max(np.abs(delta)) < 0.01:
                break
        ncc = _ncc(fixed_arr, current, cur_valid)
        if not np.isfinite(ncc) or ncc < self.min_correlation:
            return failure(
                BlockRegStatus.LOW_QUALITY,
                f"block {block_info.chunk_index}: correlation {ncc:.3f} after alignment",
            )
        geom = geometry_of(fixed, "largest")
        offset = geom.index_to_physical_matrix @ shift[::-1]
        transform = itk.TranslationTransform[itk.D, ndim].New()
        transform.SetOffset([float(v) for v in offset])
        logger.debug("block %s: shift %s voxels, ncc %.3f", block_info.chunk_index, shift, ncc)
        return checked_result(
            transform, fixed_subimage, -ncc, max_fraction=self.max_shift_fraction * 2
        )
