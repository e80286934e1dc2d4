"""Input checks that turn unusable images into clear errors, and what counts as signal.

* :func:`check_level_data` refuses an empty, mostly non-finite or constant
  pyramid level before a run starts; :func:`check_overlap` refuses images
  whose physical extents do not meet.
* :func:`has_signal` (a block's range and, optionally, its fraction above a
  threshold) and :func:`has_variation` (a spread above noise) are the one home
  of the "is there anything to register here" tests: the engine skips
  blocks with the first, the block methods refuse blocks with the second.
* :func:`check_float32_precision` guards the conversion to ``float32``.

Registration works on ``float32`` voxels. Integer data up to 16 bits (and
``int32``/``uint32`` data with a modest offset) converts exactly or nearly so,
but values far from zero with a small spread — e.g. ``int64`` counts with a
large offset, or ``float64`` data around ``1e9`` — collapse to a handful of
``float32`` values, and registering them would silently produce a meaningless
transform. :func:`check_float32_precision` detects that case.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import IncompatibleImagesError, InvalidInputDataError
from ngff_dreg.geometry import ImageGeometry

__all__ = [
    "MIN_FLOAT32_LEVELS",
    "check_float32_precision",
    "check_level_data",
    "check_overlap",
    "has_signal",
    "has_variation",
]

logger = logging.getLogger(__name__)

MIN_FLOAT32_LEVELS = 256
"""Fewest distinguishable ``float32`` steps the data's range must span."""

_EXACT_KINDS = {
    np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.float16, np.float32)
}


def check_float32_precision(array: npt.NDArray[Any], what: str) -> None:
    """Raise if converting ``array`` to ``float32`` would wipe out its contrast.

    Parameters
    ----------
    array:
        Voxels in their native dtype.
    what:
        Description of the data for the message (URL, level, box), redacted.

    Raises
    ------
    InvalidInputDataError
        When the values' range spans fewer than :data:`MIN_FLOAT32_LEVELS`
        ``float32`` steps at their magnitude (constant data is not an error
        here: it loses nothing).

    """
    dtype = np.asarray(array).dtype
    if dtype in _EXACT_KINDS or array.size == 0 or dtype.kind not in "iuf":
        return
    if dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
    else:
        # Exact integer arithmetic: float64 would already round int64 extremes.
        lo_i, hi_i = int(array.min()), int(array.max())
        lo, hi = float(lo_i), float(hi_i)
        if hi_i == lo_i:
            return
    spread = hi - lo
    if spread <= 0:
        return
    step = float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
    if spread / step < MIN_FLOAT32_LEVELS:
        raise InvalidInputDataError(
            f"{what}: {dtype} values {lo:.6g}..{hi:.6g} span only {spread / step:.0f} "
            f"float32 steps (registration computes in float32); subtract the offset or "
            f"rescale the image (e.g. to float32 or uint16) before registering"
        )


def has_signal(
    values: npt.ArrayLike,
    *,
    threshold: float | None = None,
    min_fraction: float = 0.05,
    rtol: float = 1e-6,
) -> bool:
    """True when ``values`` are not (nearly) constant and, with a threshold, bright enough.

    Parameters
    ----------
    values:
        Voxels (any shape); read as ``float32``, NaN and infinities as 0.
    threshold:
        With it, at least ``min_fraction`` of the voxels must exceed it.
    min_fraction:
        See ``threshold``.
    rtol:
        Values whose range is at most ``rtol * max(1, |max|)`` are constant.

    """
    block = np.asarray(values)
    if block.size == 0:
        return False
    arr = np.asarray(block, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo <= rtol * max(1.0, abs(hi)):
        return False
    if threshold is None:
        return True
    return float((arr > threshold).mean()) >= min_fraction


def has_variation(array: npt.NDArray[Any], min_std: float = 1e-6) -> bool:
    """True when ``array`` is finite somewhere and not (nearly) constant.

    The finite values' standard deviation must exceed ``min_std`` times their
    largest magnitude (and there must be at least 8 of them).
    """
    values = np.asarray(array)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    finite_mask = np.isfinite(values)
    # no copy when every value is finite (the usual case); sums in float64
    finite = values.reshape(-1) if finite_mask.all() else values[finite_mask]
    if finite.size < 8:
        return False
    std = float(finite.std(dtype=np.float64))
    scale = max(abs(float(finite.max())), abs(float(finite.min())), 1e-30)
    return std > min_std * scale and std > 0.0


def check_level_data(name: str, url: str, level: int, arr: npt.NDArray[Any]) -> None:
    """Refuse a pyramid level that cannot be registered (before anything is written).

    Raises
    ------
    InvalidInputDataError
        The level is empty, more than half NaN/infinite, or constant. Fewer
        non-finite voxels are read as 0, with a warning.

    """
    if arr.size == 0:
        raise InvalidInputDataError(f"{name} image {url} level {level} is empty")
    finite = np.isfinite(arr)
    if not finite.all():
        frac = 1.0 - float(finite.mean())
        if frac > 0.5:
            raise InvalidInputDataError(
                f"{name} image {url} level {level}: {frac:.0%} of voxels are NaN or infinite"
            )
        logger.warning(
            "%s image level %d: %.1f%% NaN/inf voxels read as 0", name, level, 100 * frac
        )
    vals = np.nan_to_num(arr[::4, ::4] if arr.ndim == 2 else arr[::2, ::2, ::2])
    if not has_signal(vals, rtol=1e-12):
        raise InvalidInputDataError(
            f"{name} image {url} level {level} is constant ({float(vals.max())}): "
            "nothing to register"
        )


def check_overlap(
    fixed: str, moving: str, fg: ImageGeometry, mg: ImageGeometry, initial: Any
) -> None:
    """Physical extents must meet unless an initial transform is given.

    Raises
    ------
    IncompatibleImagesError
        The two images' physical extents (grown by one voxel) do not overlap.

    """
    if initial is not None:
        return
    flo, fhi = fg.physical_bounds()
    mlo, mhi = mg.physical_bounds()
    pad_f = np.abs(fg.index_to_physical_matrix).sum(axis=1)
    pad_m = np.abs(mg.index_to_physical_matrix).sum(axis=1)
    if np.any(flo - pad_f > mhi + pad_m) or np.any(mlo - pad_m > fhi + pad_f):
        raise IncompatibleImagesError(
            f"fixed {fixed} spans {np.round(flo, 3).tolist()}..{np.round(fhi, 3).tolist()} "
            f"and moving {moving} spans {np.round(mlo, 3).tolist()}.."
            f"{np.round(mhi, 3).tolist()} (physical): "
            "they do not overlap. Pass initial_transform= (or --initial) to bring them together."
        )
