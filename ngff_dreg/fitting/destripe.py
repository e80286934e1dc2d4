"""Illumination stripes: find them and divide them out before a fit.

A lightsheet (or any sheet- or line-illuminated) acquisition is shadowed along
the light's path: whatever absorbs upstream darkens a streak behind it, so
the image is multiplied by a factor that is constant along the illumination
axis and changes from one row to the next. Fixed and moving images carry
different streaks (other light paths, other sides), and every similarity
reads them as structure: MIND-SSC descriptors are differences of neighbouring
rows, and an intensity model cannot predict a streak either. Block fits then
align streaks instead of anatomy.

In the log image a streak is an additive profile of the rows, so it is found
as the median along the row of a high-pass across rows (the anatomy's
high-pass changes sign along a row, a streak's does not) and subtracted:

    H = log I - G_σ⊥ * log I       (smoothing across rows only)
    s(row) = median over the row's foreground of H
    I' = I · exp(-s(row))

An axis is treated only when the image shows streaks along it: the
correlation of ``H`` with itself :data:`LAG` voxels further along that axis
(streaks keep it, anatomy does not: 0.26–0.34 along the lit axis of the
suite's 3D lightsheet-like pairs, 0.52–0.92 on its striped 2D slices and
micrographs, against at most 0.07 on any axis of its unstriped images) is
above :data:`MIN_STRIPE_CORRELATION`. Structure that really is constant
along an axis for :data:`LAG` voxels and more (an extruded or upsampled
image) passes that test too; turn destriping off for such data.

The cost of destriping is that structure parallel to the axis within
:data:`ACROSS_SIGMA` voxels across it (an edge along the light) is softened.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "ACROSS_SIGMA",
    "DESTRIPE_MODES",
    "LAG",
    "MIN_STRIPE_CORRELATION",
    "axis_names",
    "destripe",
    "stripe_correlations",
]

#: ``destripe`` option values: ``"auto"`` finds striped axes, ``"off"`` never.
DESTRIPE_MODES = ("auto", "off")
#: Gaussian sigma (voxels) of the smoothing across rows that separates the
#: streaks (a voxel or two wide) from the image's smooth part.
ACROSS_SIGMA = 2.0
#: Lag (voxels along the axis) of the stripe test.
LAG = 16
#: An axis whose high-pass correlates with itself more than this, :data:`LAG`
#: voxels along it, is striped.
MIN_STRIPE_CORRELATION = 0.15
#: Rows with fewer foreground voxels than this are left alone.
MIN_ROW = 16

FloatArray = npt.NDArray[np.float64]


def _foreground(img: FloatArray, valid: npt.NDArray[np.bool_] | None
                ) -> tuple[npt.NDArray[np.bool_], float]:
    sel = img if valid is None else img[valid]
    top = float(np.percentile(sel, 99.0)) if sel.size else 0.0
    floor = 0.1 * top
    fg = img > floor
    if valid is not None:
        fg &= valid
    return fg, floor


class _HighPass:
    """``log I`` minus its foreground-weighted smoothing across the rows of an axis.

    The smoothing is separable, one axis after the other in axis order (as
    :func:`scipy.ndimage.gaussian_filter` does it), so the axes of one image
    share their first passes: in 3D, the pass along axis 0 serves axes 1 and 2.
    The later passes and the result go to buffers reused from call to call.
    """

    def __init__(self, img: FloatArray, fg: npt.NDArray[np.bool_], floor: float) -> None:
        self.shape = img.shape
        self.log = np.log(np.maximum(img, floor))
        w = fg.astype(np.float64)
        self._first: dict[int, tuple[FloatArray, FloatArray]] = {}
        self._weighted = (self.log * w, w)
        self._scratch: tuple[FloatArray, FloatArray] | None = None
        self._out: FloatArray | None = None

    @staticmethod
    def _pass(pair: tuple[FloatArray, FloatArray], axis: int,
              out: tuple[FloatArray, FloatArray] | None = None
              ) -> tuple[FloatArray, FloatArray]:
        """One smoothing pass along ``axis`` of both arrays (into ``out``; may be ``pair``)."""
        num, den = pair
        o_num, o_den = (None, None) if out is None else out
        return (ndimage.gaussian_filter1d(num, ACROSS_SIGMA, axis, mode="nearest", output=o_num),
                ndimage.gaussian_filter1d(den, ACROSS_SIGMA, axis, mode="nearest", output=o_den))

    def __call__(self, axis: int) -> FloatArray:
        """The high-pass across the rows of ``axis``: valid until the next call."""
        across = [k for k, n in enumerate(self.shape) if n > 1 and k != axis]
        pair = self._weighted
        for i, k in enumerate(across):
            if i == 0:  # the first pass is kept for the other axes
                if k not in self._first:
                    self._first[k] = self._pass(pair, k)
                pair = self._first[k]
                continue
            if self._scratch is None:
                self._scratch = (np.empty(self.shape), np.empty(self.shape))
            pair = self._pass(pair, k, self._scratch)
        num, den = pair
        if self._out is None:
            self._out = np.empty(self.shape)
        np.maximum(den, 1e-6, out=self._out)
        np.divide(num, self._out, out=self._out)
        return np.subtract(self.log, self._out, out=self._out)


def _highpass(img: FloatArray, fg: npt.NDArray[np.bool_], floor: float, axis: int
              ) -> FloatArray:
    """``log I`` minus its foreground-weighted smoothing across rows of ``axis``."""
    return _HighPass(img, fg, floor)(axis)


def _row_median(values: FloatArray, mask: npt.NDArray[np.bool_], axis: int
                ) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Median along ``axis`` of ``values`` where ``mask`` (NaN for empty rows) and the counts.

    Sorted in C on every row at once (``np.nanmedian`` loops over rows in
    Python when the axis is long).
    """
    v = np.sort(np.where(mask, values, np.inf), axis=axis)  # masked-out values sort last
    count = mask.sum(axis=axis)
    lo = np.expand_dims(np.maximum(count - 1, 0) // 2, axis)
    hi = np.expand_dims(np.maximum(count, 1) // 2, axis)
    lo_v = np.take_along_axis(v, np.minimum(lo, v.shape[axis] - 1), axis).squeeze(axis)
    hi_v = np.take_along_axis(v, np.minimum(hi, v.shape[axis] - 1), axis).squeeze(axis)
    med = np.where(count % 2 == 1, lo_v, 0.5 * (lo_v + np.where(count > 1, hi_v, lo_v)))
    return np.where(count > 0, med, np.nan), count


def stripe_correlations(image: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None
                        ) -> list[float]:
    """Per axis (NumPy order), the lag correlation of the across-row high-pass.

    NaN for an axis too short for :data:`LAG` or without enough foreground.
    """
    img = np.asarray(image, dtype=np.float64)
    fg, floor = _foreground(img, valid)
    out = []
    highpass = _HighPass(img, fg, floor) if floor > 0 else None
    for axis, n in enumerate(img.shape):
        if n <= 2 * LAG or highpass is None:
            out.append(float("nan"))
            continue
        h = np.moveaxis(highpass(axis), axis, -1)
        m = np.moveaxis(fg, axis, -1)
        ok = m[..., :-LAG] & m[..., LAG:]
        if ok.sum() < 64:
            out.append(float("nan"))
            continue
        a, b = h[..., :-LAG][ok], h[..., LAG:][ok]
        a = a - a.mean()
        b = b - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        out.append(float((a * b).sum() / den) if den > 0 else float("nan"))
    return out


def axis_names(axes: list[int], ndim: int) -> str:
    """ITK names (``x``, ``y``, ``z``) of NumPy-order ``axes`` of an ``ndim`` image."""
    return ", ".join("xyz"[ndim - 1 - a] for a in axes)


def destripe(image: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None,
             axes: list[int] | None = None) -> tuple[FloatArray, list[int]]:
    """``image`` with the streaks along its striped axes divided out.

    ``axes``: the axes to treat; ``None`` finds them (:func:`stripe_correlations`
    above :data:`MIN_STRIPE_CORRELATION`). Returns the image as float64 (a new
    array when an axis was treated; when none was, the input itself if it was
    float64 already) and the axes treated. Memory: a few float64 copies of
    the image (the callers pass one block or one coarse level).
    """
    img = np.asarray(image, dtype=np.float64)
    if axes is None:
        corr = stripe_correlations(img, valid)
        axes = [k for k, c in enumerate(corr) if c > MIN_STRIPE_CORRELATION]
    if not axes:
        return img, []
    out = img.copy()
    for axis in axes:
        fg, floor = _foreground(out, valid)
        if floor <= 0:
            continue
        s, count = _row_median(_highpass(out, fg, floor, axis), fg, axis)
        s = np.where(count >= MIN_ROW, np.nan_to_num(s), 0.0)
        out *= np.expand_dims(np.exp(-s), axis)
    return out, axes
