"""ChannelTable: all channels at once, equal to map_coordinates(order=1, mode="nearest")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.fitting.interpolation import ChannelTable


@pytest.mark.parametrize("shape", [(17, 23), (9, 11, 13), (1, 12, 10), (8, 1, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_map_coordinates_inside_outside_and_on_flat_axes(shape, dtype) -> None:
    rng = np.random.default_rng(len(shape))
    chans = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    table = ChannelTable.of(chans)
    assert table.dtype == dtype
    # points inside, on the edges, and up to 3 voxels outside every axis
    pts = np.stack([rng.uniform(-3.0, n + 2.0, 4000) for n in shape])
    pts[:, :len(shape)] = np.array([[0.0] * len(shape), [n - 1.0 for n in shape]]).T[:, :1]
    got = table.sample(table.corners(pts))
    assert got.shape == (4000, 5) and got.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for k, c in enumerate(chans):
        want = ndimage.map_coordinates(c, pts, order=1, mode="nearest")
        np.testing.assert_allclose(got[:, k], want, rtol=0, atol=tol)


@pytest.mark.parametrize("channels", [1, 12])
def test_the_sampler_gives_values_and_gradients_of_every_channel(channels) -> None:
    from ngff_dreg.fitting.interpolation import ChannelSampler

    rng = np.random.default_rng(channels)
    shape = (10, 12, 9)
    chans = [rng.standard_normal(shape).astype(np.float32) for _ in range(channels)]
    pts = np.stack([rng.uniform(-1.0, n, 500) for n in shape])
    w, g = ChannelSampler(chans).sample(pts, gradient=True)
    assert w.shape == (channels, 500) and g.shape == (channels, 500, 3)
    for c, a in enumerate(chans):
        np.testing.assert_allclose(w[c], ndimage.map_coordinates(a, pts, order=1,
                                                                 mode="nearest"), atol=1e-5)
        for k in range(3):
            want = ndimage.map_coordinates(np.gradient(a, axis=k), pts, order=1, mode="nearest")
            np.testing.assert_allclose(g[c, :, k], want, atol=1e-5)
    w2, g2 = ChannelSampler(chans).sample(pts, gradient=False)
    assert g2 is None and np.array_equal(w2, w)


@pytest.mark.parametrize("shape", [(7, 12, 9), (1, 12, 10), (2, 5, 6), (9, 13)])
def test_chunked_tables_and_gradient_matrix_match_whole_array_results(shape, monkeypatch) -> None:
    """Rows written and gathered in chunks, gradients in slabs of planes, and a
    gradient matrix folded in: the same as whole-array gradients times the matrix."""
    from ngff_dreg.fitting import interpolation
    from ngff_dreg.fitting.interpolation import ChannelSampler

    monkeypatch.setattr(interpolation, "ROW_CHUNK", 37)  # chunks that do not divide the rows
    monkeypatch.setattr(interpolation, "SLAB_ROWS", 2 * int(np.prod(shape[1:])))
    rng = np.random.default_rng(len(shape) + shape[0])
    nd = len(shape)
    chans = [rng.standard_normal(shape).astype(np.float32) for _ in range(5)]
    matrix = rng.standard_normal((nd, nd))
    pts = np.stack([rng.uniform(-1.0, n, 700) for n in shape])
    w, g = ChannelSampler(chans, gradient_matrix=matrix).sample(pts, gradient=True)
    assert g is not None and g.shape == (5, 700, nd)
    for c, a in enumerate(chans):
        np.testing.assert_allclose(w[c], ndimage.map_coordinates(a, pts, order=1,
                                                                 mode="nearest"), atol=1e-5)
        index_grads = np.stack([
            ndimage.map_coordinates(np.gradient(a, axis=k) if n > 1 else np.zeros_like(a),
                                    pts, order=1, mode="nearest")
            for k, n in enumerate(shape)], 1)
        np.testing.assert_allclose(g[c], index_grads @ matrix, atol=1e-4)
    # one channel (no table): the matrix applies the same way
    w1, g1 = ChannelSampler(chans[:1], gradient_matrix=matrix).sample(pts, gradient=True)
    assert g1 is not None
    np.testing.assert_allclose(g1[0], g[0], atol=1e-4)
    np.testing.assert_allclose(w1[0], w[0], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 6])
def test_the_sampler_reuses_its_last_points_and_follows_new_ones(channels) -> None:
    from ngff_dreg.fitting.interpolation import ChannelSampler

    rng = np.random.default_rng(5)
    shape = (8, 9, 7)
    chans = [rng.standard_normal(shape).astype(np.float32) for _ in range(channels)]
    a = np.stack([rng.uniform(0.0, n - 1.0, 300) for n in shape])
    b = a + 0.37
    sampler, fresh = ChannelSampler(chans), ChannelSampler(chans)
    w_a, none = sampler.sample(a, gradient=False)
    assert none is None
    w_a2, g_a = sampler.sample(a.copy(), gradient=True)  # equal points: the same values
    assert w_a2 is w_a and g_a is not None
    with pytest.raises(ValueError):
        w_a2[0, 0] = 0.0  # shared results are read-only
    w_b, g_b = sampler.sample(b, gradient=True)
    want_w, want_g = fresh.sample(b, gradient=True)
    assert g_b is not None and want_g is not None
    np.testing.assert_array_equal(w_b, want_w)
    np.testing.assert_array_equal(g_b, want_g)
    np.testing.assert_array_equal(sampler.sample(a, gradient=True)[1], g_a)
