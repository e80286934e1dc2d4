"""Illumination streaks: found along the lit axis only, divided out, and nothing else touched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.fitting.destripe import (
    ACROSS_SIGMA,
    MIN_STRIPE_CORRELATION,
    destripe,
    stripe_correlations,
)


def _tissue(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A positive texture with blobs at several scales, zero outside an ellipse."""
    rng = np.random.default_rng(seed)
    tex = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (1.0, 2.0))
    tex = np.exp(0.3 * tex / tex.std())
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g * g for g in grids) < 0.85
    return np.where(inside, 1000.0 * tex, 0.0)


def _streaks(shape: tuple[int, ...], amount: float, seed: int) -> np.ndarray:
    """exp(amount · n) constant along the last axis (x), n varying across rows."""
    rng = np.random.default_rng(seed)
    n = ndimage.gaussian_filter(rng.standard_normal(shape[:-1]), 1.0)
    n = (n - n.mean()) / n.std()
    return np.exp(amount * n)[..., None] * np.ones(shape)


@pytest.mark.parametrize("shape", [(160, 150), (32, 64, 128)])
def test_streaks_are_found_along_the_lit_axis_only(shape: tuple[int, ...]) -> None:
    clean = _tissue(shape)
    striped = clean * _streaks(shape, 0.15, 1)
    corr = stripe_correlations(striped)
    assert corr[-1] > MIN_STRIPE_CORRELATION
    assert all(c < MIN_STRIPE_CORRELATION for c in corr[:-1] if np.isfinite(c))
    assert all(c < MIN_STRIPE_CORRELATION for c in stripe_correlations(clean) if np.isfinite(c))


@pytest.mark.parametrize("shape", [(160, 150), (32, 64, 128)])
def test_destriping_divides_the_streaks_out(shape: tuple[int, ...]) -> None:
    clean = _tissue(shape, seed=2)
    streaks = _streaks(shape, 0.15, 3)
    out, axes = destripe(clean * streaks)
    assert axes == [len(shape) - 1]
    fg = clean > 0.1 * np.percentile(clean, 99)
    # what is left of the streaks narrower than the smoothing across rows:
    # the row profile of log(out / clean) less the streaks' smooth part
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(fg, np.log(out / clean), 0.0)
    count = fg.sum(axis=-1)
    ok = count >= 16
    rows = left.sum(axis=-1) / np.maximum(count, 1)
    log_streaks = np.log(streaks[..., 0])
    smooth = ndimage.gaussian_filter(log_streaks, ACROSS_SIGMA)
    fine_before = (log_streaks - smooth)[ok]
    fine_after = (rows - smooth)[ok]
    # (what is left is mostly the texture's own row medians: a row holds a
    # few dozen independent texture samples)
    assert (fine_after - fine_after.mean()).std() < 0.6 * fine_before.std()
    assert all(c < MIN_STRIPE_CORRELATION for c in stripe_correlations(out) if np.isfinite(c))
    # and the image is nearer the unstriped one
    assert np.corrcoef(out[fg], clean[fg])[0, 1] > 0.93
    assert np.corrcoef((clean * streaks)[fg], clean[fg])[0, 1] < 0.89


def test_an_image_without_streaks_is_returned_as_it_is() -> None:
    clean = _tissue((40, 72, 64), seed=4)
    out, axes = destripe(clean)
    assert axes == []
    np.testing.assert_array_equal(out, clean)


def test_streaks_along_another_axis_are_found_there() -> None:
    clean = _tissue((150, 160), seed=5)
    striped = (clean.T * _streaks((160, 150), 0.2, 6)).T  # constant along y (axis 0)
    out, axes = destripe(striped)
    assert axes == [0]
    assert np.isfinite(out).all()


def test_shared_smoothing_passes_give_the_per_axis_high_passes() -> None:
    """The axes share their first separable pass: the same values as smoothing
    every axis's complement from scratch."""
    from ngff_dreg.fitting.destripe import _HighPass

    rng = np.random.default_rng(3)
    img = 1.0 + rng.random((20, 1, 23, 18))
    img[3:9] += 2.0
    fg = img > 1.2
    floor = 0.5
    hp = _HighPass(img, fg, floor)
    log = np.log(np.maximum(img, floor))
    w = fg.astype(np.float64)
    for axis in (0, 2, 3, 1):
        sigma = [ACROSS_SIGMA if n > 1 else 0.0 for n in img.shape]
        sigma[axis] = 0.0
        num = ndimage.gaussian_filter(log * w, sigma, mode="nearest")
        den = ndimage.gaussian_filter(w, sigma, mode="nearest")
        np.testing.assert_array_equal(hp(axis), log - num / np.maximum(den, 1e-6))
