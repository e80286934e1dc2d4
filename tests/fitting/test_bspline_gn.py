"""Gauss-Newton B-spline fit: it recovers known warps, through remaps and bias fields."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.fitting.bspline_gn import GaussNewtonOptions, gauss_newton_fit
from ngff_dreg.fitting.smoothing import masked_smooth
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.transforms import BSplineGrid


def _grid_parameters(geom: ImageGeometry, cells: int) -> np.ndarray:
    nd = geom.ndim
    spacing = (np.asarray(geom.size) - 1) * np.asarray(geom.spacing) / cells
    origin = np.asarray(geom.origin) - geom.direction_matrix @ spacing
    return np.concatenate([np.full(nd, cells + 3), origin, spacing,
                           geom.direction_matrix.ravel()])


def _texture(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    img += 0.5 * ndimage.gaussian_filter(rng.standard_normal(shape), 5.0)
    img -= img.min()
    return img / img.max()


def _warped_pair(ndim: int, seed: int, appearance: bool, bright_left: float = 0.0):
    """``fixed(x) = moving(x + u(x))`` with a known B-spline ``u`` of up to 3 mm.

    ``bright_left``: added to the moving image's first 70 columns.
    """
    shape = (64, 64, 56) if ndim == 3 else (160, 144)
    geom = ImageGeometry(shape, (1.0, 1.0, 1.2)[:ndim], (0.0,) * ndim)
    fp = _grid_parameters(geom, 4)
    rng = np.random.default_rng(seed)
    n_nodes = 7**ndim
    coeffs = rng.standard_normal((n_nodes, ndim))
    moving = _texture(shape, seed + 1)
    moving[..., :70] += bright_left
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = geom.array_index_to_physical(idx.reshape(-1, ndim).astype(float))
    u = BSplineGrid(fp, coeffs).displacement(pts)
    scale = 3.0 / np.linalg.norm(u, axis=1).max()
    u *= scale
    midx = geom.physical_to_index(pts + u)[:, ::-1]
    fixed = ndimage.map_coordinates(moving, midx.T, order=3, mode="nearest").reshape(shape)
    if appearance:  # the moving acquisition is remapped, the fixed one biased
        moving = np.sqrt(moving)
        ramp = np.exp(0.3 * np.linspace(-1, 1, shape[-1]))
        fixed = fixed * ramp
    return fixed, moving, geom, fp, pts, u


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("appearance", [False, True], ids=["plain", "remap+bias"])
def test_recovers_a_known_bspline_warp(ndim: int, appearance: bool) -> None:
    fixed, moving, geom, fp, pts, u = _warped_pair(ndim, 3, appearance)
    opts = GaussNewtonOptions(
        shrink_factors=(2, 1) if ndim == 2 else (2,),
        smoothing_sigmas=(1.0, 0.0) if ndim == 2 else (0.5,),
        iterations=15,
        bending=1e-4,
        intensity="piecewise" if appearance else "affine",
        gain_degree=1 if appearance else 0,
    )
    fit = gauss_newton_fit(fixed, moving, np.ones(fixed.shape, bool), geom, fp, opts)
    got = BSplineGrid(fp, fit.params.reshape(ndim, -1).T.copy()).displacement(pts)
    lo = np.asarray(geom.origin) + 6
    hi = geom.index_to_physical(np.asarray(geom.size) - 1) - 6
    inner = np.all((pts > lo) & (pts < hi), axis=1)
    err = np.linalg.norm(got - u, axis=1)[inner]
    start = np.linalg.norm(u, axis=1)[inner]
    assert start.mean() > 1.0
    assert err.mean() < 0.08 * start.mean(), (err.mean(), start.mean())
    assert np.percentile(err, 95) < 0.25
    assert fit.before is not None and fit.after is not None and fit.after < fit.before
    assert fit.ncc_after is not None and fit.ncc_before is not None
    assert fit.ncc_after > fit.ncc_before and fit.ncc_after > 0.95


def test_masked_moving_data_is_left_out() -> None:
    """Samples whose moving point has no data do not pull the fit (NaN-free result)."""
    fixed, moving, geom, fp, pts, u = _warped_pair(2, 5, False)
    valid = np.ones(fixed.shape, bool)
    valid[:, :40] = False  # no moving data on the left
    opts = GaussNewtonOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0),
                              intensity="affine", gain_degree=0, iterations=15)
    fit = gauss_newton_fit(fixed, np.where(valid, moving, np.nan), valid, geom, fp, opts)
    assert np.all(np.isfinite(fit.params))
    got = BSplineGrid(fp, fit.params.reshape(2, -1).T.copy()).displacement(pts)
    right = pts[:, 0] > 60
    err = np.linalg.norm(got - u, axis=1)[right]
    assert np.percentile(err, 95) < 0.3


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="intensity"):
        GaussNewtonOptions(intensity="mutual")
    with pytest.raises(ValueError, match="same"):
        GaussNewtonOptions(shrink_factors=(2, 1), smoothing_sigmas=(0.5,))
    with pytest.raises(ValueError, match="gain_degree"):
        GaussNewtonOptions(gain_degree=3)


def test_smoothing_does_not_bleed_the_fill_across_the_data_border() -> None:
    """Next to where the moving data ends, smoothing sees only data (not the fill).

    The moving data ends at column 40, inside a bright region, so the fill
    (the data's mean) makes a false edge there; with Gaussian passes of 2 and
    1 voxels a plain smoothing mixes it into the samples next to it and biases
    their gradients, so the fit is wrong in a band along the border.
    """
    fixed, moving, geom, fp, pts, u = _warped_pair(2, 5, False, bright_left=1.0)
    valid = np.ones(fixed.shape, bool)
    valid[:, :40] = False
    opts = GaussNewtonOptions(shrink_factors=(2, 2), smoothing_sigmas=(2.0, 1.0),
                              intensity="affine", gain_degree=0, iterations=15)
    fit = gauss_newton_fit(fixed, np.where(valid, moving, np.nan), valid, geom, fp, opts)
    got = BSplineGrid(fp, fit.params.reshape(2, -1).T.copy()).displacement(pts)
    band = (pts[:, 0] > 44) & (pts[:, 0] < 60)
    inner = (pts[:, 1] > 6) & (pts[:, 1] < 150)
    err = np.linalg.norm(got - u, axis=1)[band & inner]
    assert np.percentile(err, 95) < 0.6, np.percentile(err, 95)  # plain smoothing: 2.1


def test_masked_smoothing_matches_plain_smoothing_inside_the_data() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((40, 50))
    valid = np.zeros(img.shape, np.float32)
    valid[:, 20:] = 1.0
    filled = np.where(valid > 0, img, 100.0)
    out = masked_smooth(filled, valid, (1.0, 1.0))
    plain = ndimage.gaussian_filter(img, 1.0)
    # far from the border (> 4 sigma) the same as smoothing the data alone
    assert np.allclose(out[:, 30:], plain[:, 30:], atol=1e-6)
    # at the border no trace of the fill value
    assert np.abs(out[:, 18:24]).max() < 5.0


def test_an_every_voxel_lattice_holds_out_a_fifth_of_its_voxels() -> None:
    """With stride 1 no voxel lies between samples: held-out voxels leave the fit."""
    from ngff_dreg.fitting.bspline_gn import HOLD_OUT_EVERY

    fixed, moving, geom, fp, pts, u = _warped_pair(2, 3, False)
    opts = GaussNewtonOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0),
                              iterations=15, bending=1e-4, intensity="affine", gain_degree=0)
    fit = gauss_newton_fit(fixed, moving, np.ones(fixed.shape, bool), geom, fp, opts)
    n = fixed.size
    assert fit.held_out == pytest.approx(n / HOLD_OUT_EVERY, rel=0.05)
    assert fit.before is not None and fit.after is not None and fit.after < 0.2 * fit.before
    got = BSplineGrid(fp, fit.params.reshape(2, -1).T.copy()).displacement(pts)
    assert np.percentile(np.linalg.norm(got - u, axis=1), 50) < 0.1


def _contrast_pair(ndim: int, seed: int):
    """Fixed: one weighting of two tissue maps warped by a known B-spline (up to 4 mm);
    moving: another weighting (not a function of the first), attenuated 8-fold
    across the image."""
    shape = (56, 56, 48) if ndim == 3 else (160, 144)
    geom = ImageGeometry(shape, (1.0, 1.0, 1.2)[:ndim], (0.0,) * ndim)
    fp = _grid_parameters(geom, 4)
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5) > 0
    b = ndimage.gaussian_filter(rng.standard_normal(shape), 3.5) > 0.1
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    t1 = 1.0 * a + 0.5 * b + 0.15 * texture
    t2 = 0.3 + 0.8 * (~a & ~b) + 0.2 * a + 0.15 * texture
    t1, t2 = ndimage.gaussian_filter(t1, 0.7), ndimage.gaussian_filter(t2, 0.7)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = geom.array_index_to_physical(idx.reshape(-1, ndim).astype(float))
    coeffs = rng.standard_normal((7**ndim, ndim))
    u = BSplineGrid(fp, coeffs).displacement(pts)
    u *= 4.0 / np.linalg.norm(u, axis=1).max()
    midx = geom.physical_to_index(pts + u)[:, ::-1]
    fixed = ndimage.map_coordinates(t1, midx.T, order=3, mode="nearest").reshape(shape)
    moving = t2 * np.exp(-2.0 * np.linspace(0, 1, shape[-1]))
    return fixed, moving, geom, fp, pts, u


@pytest.mark.parametrize("ndim", [2, 3])
def test_mind_recovers_a_warp_across_contrasts_and_attenuation(ndim: int) -> None:
    fixed, moving, geom, fp, pts, u = _contrast_pair(ndim, 4)
    lo = np.asarray(geom.origin) + 6
    hi = geom.index_to_physical(np.asarray(geom.size) - 1) - 6
    inner = np.all((pts > lo) & (pts < hi), axis=1)
    start = np.linalg.norm(u, axis=1)[inner]
    errs = {}
    for similarity in ("intensity", "mind"):
        passes = (2, 1) if ndim == 2 else (2,)
        opts = GaussNewtonOptions(shrink_factors=passes, smoothing_sigmas=(1.0, 0.5)[:len(passes)],
                                  iterations=15, bending=1e-3, similarity=similarity)
        fit = gauss_newton_fit(fixed, moving, np.ones(fixed.shape, bool), geom, fp, opts)
        got = BSplineGrid(fp, fit.params.reshape(ndim, -1).T.copy()).displacement(pts)
        errs[similarity] = np.linalg.norm(got - u, axis=1)[inner]
        if similarity == "mind":
            assert fit.before is not None and fit.after is not None
            assert fit.after < 0.8 * fit.before
    assert start.mean() > 1.0
    assert errs["mind"].mean() < 0.3 * start.mean(), (errs["mind"].mean(), start.mean())
    assert np.percentile(errs["mind"], 95) < 0.6
    assert errs["mind"].mean() < 0.7 * errs["intensity"].mean()


def test_an_unknown_similarity_is_refused() -> None:
    with pytest.raises(ValueError, match="similarity"):
        GaussNewtonOptions(similarity="mutual-information")


@pytest.mark.parametrize("channels", [1, 12])
def test_gauss_newton_terms_equal_the_whole_array_products(channels, monkeypatch) -> None:
    """Chunked float64 terms from a float32 (N, C, nd) table: the same values as
    ``J = slope * g`` on the kept samples and einsums over the channels, zero elsewhere."""
    from ngff_dreg.fitting import bspline_gn

    monkeypatch.setattr(bspline_gn, "TERM_CHUNK", 97)  # chunks that do not divide the samples
    rng = np.random.default_rng(channels)
    n, nd = 1000, 3
    g = rng.standard_normal((n, channels, nd)).astype(np.float32).transpose(1, 0, 2)
    keep = rng.random(n) < 0.8
    r = rng.standard_normal((channels, int(keep.sum())))
    slope = rng.standard_normal((channels, int(keep.sum())))
    r_all = np.zeros((channels, n))
    r_all[:, keep] = r
    s_all = np.zeros((channels, n))
    s_all[:, keep] = slope
    b, h = bspline_gn._gauss_newton_terms(g, s_all, r_all)
    jac = slope[:, :, None] * g[:, keep].astype(np.float64)
    np.testing.assert_allclose(b[keep], np.einsum("cni,cn->ni", jac, r), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h[keep], np.einsum("cni,cnj->nij", jac, jac), rtol=1e-12,
                               atol=1e-12)
    assert not b[~keep].any() and not h[~keep].any()
    assert b.dtype == h.dtype == np.float64


def test_the_held_out_data_term_is_the_squared_misalignment() -> None:
    """A uniform shift ``d``: the data term before is about ``|d|²``, the fit's motion too."""
    shape = (160, 160)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    moving = _texture(shape, 3)
    d = np.array([0.3, -0.2])  # ITK order (x, y)
    fixed = ndimage.shift(moving, d[::-1], order=3, mode="nearest")  # fixed(x) = moving(x + d)
    opts = GaussNewtonOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.5))
    fit = gauss_newton_fit(fixed, moving, np.ones(shape, bool), geom, _grid_parameters(geom, 6),
                           opts)
    assert fit.before is not None and fit.after is not None and fit.motion is not None
    d2 = float(d @ d)
    assert 0.7 * d2 < fit.before < 1.5 * d2, (fit.before, d2)
    assert 0.7 * d2 < fit.motion < 1.3 * d2, (fit.motion, d2)
    assert fit.after < 0.2 * fit.before


def test_a_structure_only_the_moving_image_has_moves_points_far_in_flat_regions() -> None:
    """A bright disc with sharp edges and a faint interior; the moving image adds a dark blob.

    The edge sets the data term's scale, and in the flat interior moving points
    is cheap: the fit moves points by pixels where the images are aligned and
    its data term measured a fraction of a pixel. This is what
    ``BSplineGaussNewton.max_motion`` refuses.
    """
    n = 128
    geom = ImageGeometry((n, n), (1.0, 1.0), (0.0, 0.0))
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    disc = ndimage.gaussian_filter((np.hypot(yy - 64, xx - 64) < 56).astype(float), 1.0)
    fixed = disc * (1.0 + 0.03 * _texture((n, n), 3))
    blob = np.exp(-((yy - 64) ** 2 + (xx - 75) ** 2) / (2 * 10.0**2))
    opts = GaussNewtonOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.5))
    fp = _grid_parameters(geom, 10)
    for amp, far in ((0.0, False), (0.3, True)):
        fit = gauss_newton_fit(fixed, fixed - amp * disc * blob, np.ones((n, n), bool), geom, fp,
                               opts)
        assert fit.before is not None and fit.motion is not None
        assert (fit.motion > 10 * fit.before) == far, (amp, fit.motion, fit.before)
        assert (fit.motion > 1.0) == far, (amp, fit.motion)



def test_mind_patches_are_as_long_physically_along_thick_slices() -> None:
    """On 1×1×3 voxels a block's MIND patch spans the same millimetres along z
    as in-plane (a third of the voxels), not three times as many."""
    from ngff_dreg.fitting.bspline_gn import _Images
    from ngff_dreg.fitting.descriptors import BLOCK_NOISE_FLOOR, mind_ssc

    rng = np.random.default_rng(5)
    vol = ndimage.gaussian_filter(rng.standard_normal((12, 36, 36)), (0.7, 2.0, 2.0))
    vol = vol.astype(np.float32)
    geom = ImageGeometry(vol.shape[::-1], (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    images = _Images(vol, vol, np.ones(vol.shape, dtype=bool), geom, similarity="mind",
                     patch_sigma=1.5)
    got = np.stack(images.get(0.0)[0])
    physical = mind_ssc(vol, (0.5, 1.5, 1.5), noise_floor=BLOCK_NOISE_FLOOR)
    in_voxels = mind_ssc(vol, 1.5, noise_floor=BLOCK_NOISE_FLOOR)
    np.testing.assert_allclose(got, physical, atol=1e-6)
    assert np.abs(got - in_voxels).max() > 0.05
