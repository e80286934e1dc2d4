"""The intensity model: remaps and bias fields are absorbed, and it is a least-squares fit."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.fitting.intensity import IntensityModel, polynomial_terms


def _samples(n: int = 40000, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 1.0, n)
    pos = rng.uniform(-1.0, 1.0, (n, 2))
    return w, pos


def test_affine_model_recovers_a_linear_relation() -> None:
    w, _ = _samples()
    f = 3.0 * w - 0.5
    model = IntensityModel.for_samples("affine", 12, None, len(w))
    pred, slope = model.fit(w, f)
    np.testing.assert_allclose(pred, f, atol=1e-9)
    np.testing.assert_allclose(slope, 3.0, atol=1e-9)


def test_piecewise_model_follows_a_monotone_remap() -> None:
    w, _ = _samples()
    f = np.sqrt(w)
    model = IntensityModel.for_samples("piecewise", 16, None, len(w))
    pred, slope = model.fit(w, f)
    inner = (w > 0.1) & (w < 0.95)  # linear interpolation of sqrt: error h²|f''|/8 < 0.004
    assert np.abs(pred - f)[inner].max() < 0.005
    np.testing.assert_allclose(slope[inner], 0.5 / np.sqrt(w[inner]), rtol=0.25)
    affine = IntensityModel.for_samples("affine", 16, None, len(w)).fit(w, f)[0]
    assert np.abs(affine - f)[inner].max() > 5 * np.abs(pred - f)[inner].max()


@pytest.mark.parametrize("kind", ["affine", "piecewise"])
def test_gain_absorbs_a_smooth_bias(kind: str) -> None:
    lattice = (40, 50)
    poly = polynomial_terms(lattice, 2)
    rng = np.random.default_rng(3)
    w = rng.uniform(0.2, 1.0, poly.shape[0])
    gy, gx = poly[:, 1], poly[:, 2]
    bias = 1.0 + 0.3 * gx - 0.2 * gy + 0.1 * gx * gy
    f = bias * (2.0 * w + 0.1)
    with_gain = IntensityModel.for_samples(kind, 12, poly, len(w)).fit(w, f)[0]
    without = IntensityModel.for_samples(kind, 12, None, len(w)).fit(w, f)[0]
    assert np.sqrt(np.mean((with_gain - f) ** 2)) < 0.02
    assert np.sqrt(np.mean((without - f) ** 2)) > 0.1


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="intensity model"):
        IntensityModel("mutual", 12, None, np.arange(3))
