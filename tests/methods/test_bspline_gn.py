"""BSplineGaussNewton (the default block method) recovers known deformations per block."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockInfo, BlockRegStatus
from ngff_dreg.itk_bridge import image_from_array, preload_itk
from ngff_dreg.methods import BSplineGaussNewton, make_method
from ngff_dreg.transforms import AffineTransform

# physical units; spacing is 0.8-1.3, the deformation peaks at 3 units
TOL = 0.25


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    "direction_deg, init_field",
    [(0.0, 0.0), (12.0, 2.0)],
    ids=["aligned", "rotated+deformable-init"],
)
def test_recovers_smooth_warp(synth, ndim, direction_deg, init_field) -> None:
    init = synth.rotation_about(ndim, -3.0, np.zeros(ndim), shift=(2.0, -1.0, 1.5)[:ndim])
    pair = synth.make_pair(
        ndim,
        field_max=3.0,
        initial=init,
        initial_field_max=init_field,
        direction_deg=direction_deg,
        block=48 if ndim == 3 else 128,
    )
    identity_err = pair.errors(synth.AffineTransform.identity(ndim).to_itk())
    assert identity_err.max() > 1.5
    method = BSplineGaussNewton(mesh_size=4, shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0),
                                iterations=15, intensity="affine", gain_degree=0, bending=1e-4)
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert result.transform.GetNameOfClass() == "BSplineTransform"
    err = pair.errors(result.transform)
    assert err.max() < TOL, (err.max(), err.mean())
    assert err.mean() < TOL / 2
    assert result.figures["ncc_after"] > max(0.95, result.figures["ncc_before"])
    assert result.figures["samples"] > 100
    assert tuple(result.transform_domain.GetLargestPossibleRegion().GetSize()) == tuple(
        pair.fixed.GetBufferedRegion().GetSize()
    )


def test_default_options_handle_the_same_warp(synth) -> None:
    """The schedule's defaults (piecewise intensity, quadratic gain) on a plain pair."""
    pair = synth.make_pair(3, field_max=3.0, block=48)
    result = BSplineGaussNewton(mesh_size=4, shrink_factors=(2, 1),
                                smoothing_sigmas=(1.0, 0.0))(pair.fixed, pair.moving,
                                                             pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    err = pair.errors(result.transform)
    assert err.max() < 1.5 * TOL, (err.max(), err.mean())


def _noise_like(image):
    """An ITK image with ``image``'s grid and region holding white noise (seed 5)."""
    import itk

    noise = np.random.default_rng(5).standard_normal(
        itk.array_view_from_image(image).shape).astype(np.float32)
    out = itk.image_from_array(noise)
    out.CopyInformation(image)
    out.SetBufferedRegion(image.GetBufferedRegion())
    return out


def test_unrelated_moving_block_is_refused(synth) -> None:
    """Noise against texture: the held-out data term does not improve, so LOW_QUALITY."""
    pair = synth.make_pair(2, field_max=2.0, block=96)
    moving = _noise_like(pair.moving)
    result = BSplineGaussNewton(mesh_size=4)(pair.fixed, moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.LOW_QUALITY, result


def test_a_mind_fit_without_shared_structure_is_refused(synth) -> None:
    """Noise against texture with MIND: the held-out data term still drops (descriptors
    are patch sums, so held-out samples are not independent), the similarity gate
    refuses the fit; the same texture on both sides is kept."""
    from ngff_dreg.methods.bspline_gn import MIN_BLOCK_SIMILARITY

    pair = synth.make_pair(2, field_max=2.0, block=96)
    moving = _noise_like(pair.moving)
    ungated = BSplineGaussNewton(mesh_size=4, similarity="mind", min_similarity=-1.0)(
        pair.fixed, moving, pair.initial, pair.info)
    assert ungated.status == BlockRegStatus.SUCCESS, ungated.message
    assert ungated.figures["ncc_after"] < MIN_BLOCK_SIMILARITY
    gated = BSplineGaussNewton(mesh_size=4, similarity="mind")(
        pair.fixed, moving, pair.initial, pair.info)
    assert gated.status == BlockRegStatus.LOW_QUALITY
    assert "no shared structure" in gated.message
    kept = BSplineGaussNewton(mesh_size=4, similarity="mind")(
        pair.fixed, pair.moving, pair.initial, pair.info)
    assert kept.status == BlockRegStatus.SUCCESS, kept.message
    assert kept.figures["ncc_after"] > 2 * MIN_BLOCK_SIMILARITY
    assert pair.errors(kept.transform).mean() < TOL


def test_mind_bending_weighs_the_mind_fits_only(synth) -> None:
    """``mind_bending`` replaces ``bending`` when the method fits MIND descriptors: a
    very stiff grid then leaves the warp far from recovered, while the intensity fit
    of the same pair, with the same option, is untouched."""
    import itk

    pair = synth.make_pair(2, field_max=2.0, block=96)

    def params(method: BSplineGaussNewton) -> np.ndarray:
        result = method(pair.fixed, pair.moving, pair.initial, pair.info)
        assert result.status == BlockRegStatus.SUCCESS, result.message
        return np.asarray(itk.array_from_vnl_vector(
            result.transform.GetParameters()), dtype=np.float64)

    mind = params(BSplineGaussNewton(mesh_size=4, similarity="mind"))
    stiff = params(BSplineGaussNewton(mesh_size=4, similarity="mind", mind_bending=1e4))
    assert np.abs(stiff).max() < 0.2 * np.abs(mind).max()
    plain = params(BSplineGaussNewton(mesh_size=4))
    same = params(BSplineGaussNewton(mesh_size=4, mind_bending=1e4))
    np.testing.assert_allclose(same, plain, atol=1e-9)
    for similarity in ("mind", "intensity"):
        with pytest.raises(ValueError, match="mind_bending"):
            BSplineGaussNewton(similarity=similarity, mind_bending=-1.0)


def _streaked(image, amount: float, seed: int):
    """``(image + 0.2) · exp(amount · n)``, ``n`` constant along x (streaks), same grid."""
    import itk
    from scipy import ndimage

    arr = itk.array_from_image(image).astype(np.float32)
    n = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(arr.shape[:-1]), 1.0)
    n = (n - n.mean()) / n.std()
    out = itk.image_from_array(((arr + 0.2) * np.exp(amount * n)[..., None]).astype(np.float32))
    out.CopyInformation(image)
    out.SetRegions(image.GetBufferedRegion())
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_streaks_are_divided_out_before_the_fit(synth, ndim: int) -> None:
    """Different ±20 % streaks along x in each block: the fit with destriping lands
    within the tolerance and far nearer the truth than the same fit without."""
    pair = synth.make_pair(ndim, field_max=3.0, block=128 if ndim == 2 else 48)
    fixed, moving = _streaked(pair.fixed, 0.2, 1), _streaked(pair.moving, 0.2, 2)
    errors = {}
    for mode in ("auto", "off"):
        result = BSplineGaussNewton(mesh_size=4, similarity="mind", destripe=mode)(
            fixed, moving, pair.initial, pair.info)
        assert result.status == BlockRegStatus.SUCCESS, result.message
        assert ("destriped fixed along x; moving along x" in result.message) == (mode == "auto")
        errors[mode] = pair.errors(result.transform).mean()
    assert errors["auto"] < 0.9, errors
    assert errors["auto"] < 0.7 * errors["off"], errors


def test_min_gain_refuses_a_fit_that_gains_less(synth) -> None:
    """A fit is kept when it lowers the held-out data term by at least ``min_gain``."""
    pair = synth.make_pair(2, field_max=2.0, block=96)
    kept = BSplineGaussNewton(mesh_size=4)(pair.fixed, pair.moving, pair.initial, pair.info)
    assert kept.status == BlockRegStatus.SUCCESS, kept.message
    refused = BSplineGaussNewton(mesh_size=4, min_gain=0.999)(
        pair.fixed, pair.moving, pair.initial, pair.info)
    assert refused.status == BlockRegStatus.LOW_QUALITY
    assert "no improvement" in refused.message


def test_registered_as_the_bspline_method_and_pickles() -> None:
    method = make_method("bspline", {"control_point_spacing": 10.0, "bending": 0.01})
    assert isinstance(method, BSplineGaussNewton)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(method))
        assert back == method
    assert method.mesh_for((41, 81), (1.0, 0.5)) == [4, 4]
    with pytest.raises(ValueError, match="intensity"):
        BSplineGaussNewton(intensity="mutual")


def _blob_pair(amp: float):
    """A bright disc with sharp edges and a faint texture, aligned; the moving one
    gains a dark blob of depth ``amp`` (a structure the fixed image lacks)."""
    preload_itk()
    n = 128
    geom = ImageGeometry((n, n), (1.0, 1.0), (0.0, 0.0))
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    disc = ndimage.gaussian_filter((np.hypot(yy - 64, xx - 64) < 56).astype(float), 1.0)
    tex = ndimage.gaussian_filter(np.random.default_rng(3).standard_normal((n, n)), 2.0)
    fixed = disc * (1.0 + 0.1 * tex)
    blob = np.exp(-((yy - 64) ** 2 + (xx - 75) ** 2) / (2 * 10.0**2))
    box = Box((0, 0), (n, n))
    return (image_from_array(fixed.astype(np.float32), geom, box),
            image_from_array((fixed - amp * disc * blob).astype(np.float32), geom, box),
            AffineTransform.identity(2).to_itk(), BlockInfo((0, 0), box.slices))


def test_a_fit_that_moves_points_far_beyond_the_misalignment_is_refused() -> None:
    """The moving image has a structure the fixed lacks: the fit moves aligned points."""
    fixed, moving, initial, info = _blob_pair(0.3)
    method = dict(control_point_spacing=12.7, shrink_factors=(2, 1),
                  smoothing_sigmas=(1.0, 0.5))
    refused = BSplineGaussNewton(**method)(fixed, moving, initial, info)
    assert refused.status == BlockRegStatus.LOW_QUALITY, refused.message
    assert "moves points" in refused.message
    assert BSplineGaussNewton(**method, max_motion=0)(
        fixed, moving, initial, info).status == BlockRegStatus.SUCCESS
    fixed, moving, initial, info = _blob_pair(0.0)
    aligned = BSplineGaussNewton(**method)(fixed, moving, initial, info)
    assert "moves points" not in aligned.message, aligned.message
