"""ItkLinearRegistration recovers known translations, rotations and affines."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest

from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.methods import ItkLinearRegistration

# physical units (spacing 0.8-1.3): a fifth of a voxel or better
TOL = {"correlation": 0.15, "meansquares": 0.15, "mattes": 0.35}


def _residual(synth, ndim: int, case: str):
    centre = np.zeros(ndim)  # the block sits around the physical origin
    if case == "translation":
        return "translation", synth.translation(ndim, (1.5, -2.0, 0.7)[:ndim])
    if case == "rotation":
        return "rigid", synth.rotation_about(ndim, 4.0, centre, shift=(1.0, -1.0, 0.5)[:ndim])
    return "affine", synth.random_affine(
        ndim, degrees=3, scale=0.04, shear=0.03, translation=1.5, center=centre, seed=3
    )


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("case", ["translation", "rotation", "affine"])
@pytest.mark.parametrize("metric", ["correlation", "mattes"])
def test_recovers_linear(synth, ndim, case, metric) -> None:
    kind, residual = _residual(synth, ndim, case)
    init = synth.rotation_about(ndim, -3.0, np.zeros(ndim), shift=(3.0, 0.0, -2.0)[:ndim])
    pair = synth.make_pair(
        ndim,
        residual=residual,
        initial=init,
        direction_deg=10.0,
        block=48 if ndim == 3 else 128,
    )
    method = ItkLinearRegistration(kind=kind, metric=metric)
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    err = pair.errors(result.transform)
    start = pair.errors(init.inverse().then(init).to_itk())  # identity
    assert start.max() > 2.0
    assert err.max() < TOL[metric], (err.max(), err.mean())
    assert result.metric is not None and np.isfinite(result.metric)


def test_deformable_initial_and_meansquares(synth) -> None:
    """A composite (affine + displacement field) initial transform, mean squares metric."""
    init = synth.rotation_about(3, 2.0, np.zeros(3), shift=(-2.0, 1.0, 1.0))
    pair = synth.make_pair(
        3,
        residual=synth.translation(3, (1.2, 0.8, -1.5)),
        initial=init,
        initial_field_max=2.5,
        direction_deg=-8.0,
        block=48,
    )
    assert pair.initial.GetNameOfClass() == "CompositeTransform"
    method = ItkLinearRegistration(kind="translation", metric="meansquares")
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert pair.errors(result.transform).max() < TOL["meansquares"]


def test_block_at_image_corner_and_isotropic(synth) -> None:
    """A block starting at index 0 (no padding before it), isotropic spacing."""
    pair = synth.make_pair(
        2,
        residual=synth.translation(2, (-1.0, 2.0)),
        block=96,
        pad=8,
        spacing=(1.0, 1.0),
        block_start=0,
        full=200,
    )
    assert tuple(pair.fixed.GetBufferedRegion().GetIndex()) == (0, 0)
    result = ItkLinearRegistration(kind="affine", metric="correlation")(
        pair.fixed, pair.moving, pair.initial, pair.info
    )
    assert result.status == BlockRegStatus.SUCCESS
    assert pair.errors(result.transform).max() < TOL["correlation"]


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ItkLinearRegistration(kind="similarity")
    with pytest.raises(ValueError):
        ItkLinearRegistration(metric="ncc")
    with pytest.raises(ValueError):
        ItkLinearRegistration(shrink_factors=(2, 1), smoothing_sigmas=(1.0,))


def test_no_signal(synth) -> None:
    import itk

    pair = synth.make_pair(2, block=64)
    itk.array_view_from_image(pair.fixed)[...] = 0.0
    result = ItkLinearRegistration()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.NO_SIGNAL


def test_pickles(synth) -> None:
    method = ItkLinearRegistration(kind="affine", metric="mattes", iterations=50)
    again = cloudpickle.loads(cloudpickle.dumps(method))
    assert again == method
    pair = synth.make_pair(2, residual=synth.translation(2, (1.0, 0.5)), block=64)
    result = again(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS
    tx = cloudpickle.loads(cloudpickle.dumps(result.transform))
    p = [3.0, -2.0]
    assert np.allclose(tx.TransformPoint(p), result.transform.TransformPoint(p))
    dom = pickle.loads(pickle.dumps(result.transform_domain))
    assert dom.GetLargestPossibleRegion() == result.transform_domain.GetLargestPossibleRegion()
