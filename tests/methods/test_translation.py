"""PhaseCorrelationTranslation recovers known residual shifts in 2D and 3D."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest

from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.methods import PhaseCorrelationTranslation, phase_correlation_shift

# physical units (spacing is ~1): sub-voxel accuracy on pure shifts
TOL = 0.1


def test_phase_correlation_shift_sign_and_subvoxel() -> None:
    rng = np.random.default_rng(1)
    from scipy import ndimage

    img = ndimage.gaussian_filter(rng.standard_normal((96, 80)), 2.0)
    # fixed[i] = moving[i + s]  <=>  fixed = shift(moving, -s)
    s = np.array([2.3, -4.6])
    fixed = ndimage.shift(img, -s, order=3, mode="nearest")
    est, peak = phase_correlation_shift(fixed, img)
    # one pass is biased slightly towards zero by the window; the method refines
    assert np.allclose(est, s, atol=0.15)
    assert peak > 0.02


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    "direction_deg, init_deg, init_field",
    [(0.0, 0.0, 0.0), (12.0, -3.0, 0.0), (12.0, 2.0, 2.0)],
    ids=["axis-aligned", "rotated-dir+affine-init", "rotated-dir+deformable-init"],
)
def test_recovers_translation(synth, ndim, direction_deg, init_deg, init_field) -> None:
    shift = (1.6, -2.3, 0.8)[:ndim]
    init = synth.rotation_about(ndim, init_deg, np.zeros(ndim), shift=(3.0, 0.5, -2.0)[:ndim])
    pair = synth.make_pair(
        ndim,
        residual=synth.translation(ndim, shift),
        initial=init,
        initial_field_max=init_field,
        direction_deg=direction_deg,
        block=64 if ndim == 3 else 128,
    )
    assert any(i > 0 for i in pair.fixed.GetBufferedRegion().GetIndex())
    result = PhaseCorrelationTranslation()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert result.transform.GetNameOfClass() == "TranslationTransform"
    err = pair.errors(result.transform)
    assert err.max() < TOL, err.max()
    assert result.metric is not None and result.metric < -0.5
    # the domain is the padded fixed block
    dom = result.transform_domain
    assert tuple(dom.GetLargestPossibleRegion().GetSize()) == tuple(
        pair.fixed.GetBufferedRegion().GetSize()
    )


def test_identity_initial_none_is_accepted(synth) -> None:
    pair = synth.make_pair(2, residual=synth.translation(2, (1.0, 0.5)), block=96)
    result = PhaseCorrelationTranslation()(pair.fixed, pair.moving, None, pair.info)
    assert result.status == BlockRegStatus.SUCCESS
    assert pair.errors(result.transform).max() < TOL


def test_no_signal_and_garbage(synth) -> None:
    import itk

    pair = synth.make_pair(2, block=64)
    arr = itk.array_view_from_image(pair.fixed)
    arr[...] = 3.0
    result = PhaseCorrelationTranslation()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.NO_SIGNAL
    arr[...] = np.random.default_rng(0).standard_normal(arr.shape)
    result = PhaseCorrelationTranslation()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.LOW_QUALITY
    assert result.transform is None


def test_pickles(synth) -> None:
    method = PhaseCorrelationTranslation(refinements=1, max_shift_fraction=0.2)
    again = cloudpickle.loads(cloudpickle.dumps(method))
    assert again == method
    pair = synth.make_pair(2, residual=synth.translation(2, (1.0, 0.5)), block=64)
    result = again(pair.fixed, pair.moving, pair.initial, pair.info)
    tx = pickle.loads(pickle.dumps(result.transform))
    p = [3.0, -2.0]
    assert np.allclose(tx.TransformPoint(p), result.transform.TransformPoint(p))
    dom = pickle.loads(pickle.dumps(result.transform_domain))
    assert dom.GetLargestPossibleRegion() == result.transform_domain.GetLargestPossibleRegion()


def test_block_images_survive_pickling(synth) -> None:
    """ITK 5.4 pickling resets the largest region's start; methods must still work."""
    pair = synth.make_pair(3, residual=synth.translation(3, (1.0, -0.5, 0.8)), block=32)
    fixed = pickle.loads(pickle.dumps(pair.fixed))
    moving = pickle.loads(pickle.dumps(pair.moving))
    result = PhaseCorrelationTranslation()(fixed, moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert pair.errors(result.transform).max() < TOL
    assert tuple(result.transform_domain.GetLargestPossibleRegion().GetSize()) == (48, 48, 48)
