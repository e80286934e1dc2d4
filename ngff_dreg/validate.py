"""Input checks that turn unusable voxel data into clear errors.

Registration works on ``float32`` voxels. Integer data up to 16 bits (and
``int32``/``uint32`` data with a modest offset) converts exactly or nearly so,
but values far from zero with a small spread — e.g. ``int64`` counts with a
large offset, or ``float64`` data around ``1e9`` — collapse to a handful of
``float32`` values, and registering them would silently produce a meaningless
transform. :func:`check_float32_precision` detects that case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidInputDataError

__all__ = ["check_float32_precision", "check_schedule_levels", "MIN_FLOAT32_LEVELS"]

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


def check_schedule_levels(schedule: Any, fixed_levels: Sequence[Any], fixed_url: str) -> list[int]:
    """Resolve every block stage's level up front (before any output is written).

    Parameters
    ----------
    schedule:
        A :class:`ngff_dreg.schedule.Schedule`.
    fixed_levels:
        Geometries of the fixed pyramid, finest first.
    fixed_url:
        For the error message.

    Returns
    -------
    list of int
        The fixed level index of each block stage.

    Raises
    ------
    LevelNotFoundError, ScheduleError
        A stage names a level the fixed image does not have.

    """
    from ngff_dreg.schedule import resolve_level

    return [
        resolve_level(fixed_levels, stage.level, what=f"fixed image {fixed_url}")
        for stage in schedule.stages
    ]
