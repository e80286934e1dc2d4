"""MIND-SSC descriptors: contrast-independent, and what the solvers fit across contrasts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.fitting.descriptors import mind_ssc, ssc_pairs


def _two_tissues(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) > 0
    b = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0) > 0.1
    return a.astype(float), b.astype(float)


@pytest.mark.parametrize("ndim, channels", [(2, 4), (3, 12)])
def test_pairs_are_neighbours_on_different_axes(ndim: int, channels: int) -> None:
    pairs = ssc_pairs(ndim)
    assert len(pairs) == channels
    for a, b in pairs:
        assert np.linalg.norm(np.subtract(a, b)) == pytest.approx(np.sqrt(2))


def test_descriptors_do_not_see_contrast_or_smooth_attenuation() -> None:
    """Two weightings of the same tissues, one attenuated 20-fold across the image."""
    a, b = _two_tissues((96, 96), 0)
    t1 = ndimage.gaussian_filter(1.0 * a + 0.5 * b, 1.0)
    t2 = ndimage.gaussian_filter(0.3 + 0.8 * (1 - a) * (1 - b) + 0.2 * a, 1.0)
    ramp = np.exp(-3.0 * np.linspace(0, 1, 96))[None, :]
    d1, d2 = mind_ssc(t1), mind_ssc(t2 * ramp)
    assert d1.shape == (4, 96, 96) and d1.dtype == np.float32
    assert float(d1.max()) <= 1.0 and float(d1.min()) > 0.0
    same = float(np.corrcoef(d1.ravel(), d2.ravel())[0, 1])
    # not a function of each other, yet the intensities correlate poorly
    other = mind_ssc(np.roll(t2 * ramp, 5, axis=0))
    shifted = float(np.corrcoef(d1.ravel(), other.ravel())[0, 1])
    assert same > 0.6, same
    assert same > shifted + 0.3, (same, shifted)


def test_flat_images_read_as_all_alike() -> None:
    d = mind_ssc(np.full((20, 20, 20), 7.0))
    assert d.shape == (12, 20, 20, 20)
    assert np.allclose(d, 1.0)
