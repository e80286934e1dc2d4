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


def _object_in_noise(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc on an empty background, both with 3 % noise, and the disc mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 30**2
    texture = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 2.0)
    image = disc * (1.0 + 2.0 * texture) + 0.03 * rng.standard_normal((96, 96))
    return ndimage.gaussian_filter(image, 0.5), disc


def test_noise_floor_flattens_background_noise_and_keeps_structure() -> None:
    image, disc = _object_in_noise(3)
    background = ndimage.binary_erosion(~disc, iterations=4)
    inner = ndimage.binary_erosion(disc, iterations=4)
    plain = mind_ssc(image, 1.0)
    floored = mind_ssc(image, 1.0, noise_floor=6.0)
    # without the floor, noise on the background takes the descriptors' range
    assert float(plain[:, background].std()) > 0.15
    # with it, the background reads as "all patches alike" (close to 1) ...
    assert float(np.percentile(floored[:, background], 5)) > 0.7
    assert float(floored[:, background].std()) < float(plain[:, background].std()) / 3
    # ... while the textured object keeps its structure
    assert float(floored[:, inner].std()) > 0.1


def test_local_floor_keeps_a_dim_side_structured() -> None:
    """Lit 12-fold less on one side: a global floor flattens that side, a local one not."""
    rng = np.random.default_rng(5)
    image = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 2.0)  # dense texture
    lit = image * np.exp(-2.5 * np.linspace(0, 1, 96))[None, :]
    dim = np.s_[:, :, 72:]

    def mismatch(**floor: float) -> float:
        """Mean descriptor difference on the dim side, lit against unlit."""
        return float(np.abs(mind_ssc(lit, **floor)[dim] - mind_ssc(image, **floor)[dim]).mean())

    local, plain = mismatch(local_floor_sigma=8.0), mismatch()
    assert local < 0.05 and local < 0.3 * plain, (local, plain)
