"""The procedural image pair: value noise, levels, the warp and its known inverse."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.errors import InvalidInputDataError
from ngff_dreg.virtual_image import VirtualPair, value_noise


def test_value_noise_is_deterministic_bounded_and_continuous() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1e6, 1e6, (5000, 3))  # scattered: hashed point by point
    a = value_noise(pts, 8.0, seed=1)
    np.testing.assert_array_equal(a, value_noise(pts, 8.0, seed=1))
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.05
    assert not np.allclose(a, value_noise(pts, 8.0, seed=2))
    # a dense grid (the node table path) agrees with the point-by-point path
    grid = np.stack(np.meshgrid(*[np.arange(0, 40.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    far = grid + 1e6
    dense = value_noise(far, 8.0, seed=1)
    scattered = value_noise(np.concatenate([far, pts]), 8.0, seed=1)[: len(far)]
    np.testing.assert_allclose(dense, scattered, atol=1e-12)
    nudge = np.array([0.0, 0.0, 0.01])
    step = value_noise(grid + nudge, 8.0, seed=1) - value_noise(grid, 8.0, seed=1)
    assert np.abs(step).max() < 0.01  # continuous


def test_the_warp_is_a_small_smooth_map_and_its_inverse_is_exact() -> None:
    pair = VirtualPair(shape=(200, 300), chunks=(64,), seed=5)
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 200, (500, 2))
    q = pair.fixed_to_moving(p)
    np.testing.assert_allclose(pair.moving_to_fixed(q[:, ::-1])[:, ::-1], p, atol=1e-6)
    assert 1.0 < np.abs(q - p).max() < 20.0


@pytest.mark.parametrize("kwargs", [
    {"shape": (4,)}, {"shape": (4, 4, 4, 4)}, {"shape": (0, 4)},
    {"shape": (4, 4), "chunks": (0,)}, {"shape": (4, 4), "dtype": "int8"},
    {"shape": (4, 4), "chunks": (4, 4, 4)},
])
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputDataError, match="virtual image"):
        VirtualPair(**kwargs)  # type: ignore[arg-type]
