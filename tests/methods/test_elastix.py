"""ElastixBlockRegistration (optional extra) recovers a known smooth deformation."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest

from ngff_dreg.errors import NgffDregError
from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.methods.elastix import (
    ElastixBlockRegistration,
    ElastixNotAvailableError,
    default_bspline_map,
)

itk = pytest.importorskip("itk")
if not hasattr(itk, "ElastixRegistrationMethod"):  # pragma: no cover - extra missing
    pytest.skip("itk-elastix not installed", allow_module_level=True)

# physical units; spacing 0.8-1.3, deformation peaks at 3 units
TOL = 0.25


@pytest.mark.parametrize("ndim", [2, 3])
def test_recovers_smooth_warp(synth, ndim) -> None:
    init = synth.rotation_about(ndim, -3.0, np.zeros(ndim), shift=(2.0, -1.0, 1.5)[:ndim])
    pair = synth.make_pair(
        ndim,
        field_max=3.0,
        initial=init,
        initial_field_max=2.0,
        direction_deg=12.0,
        block=40 if ndim == 3 else 96,
    )
    assert pair.initial.GetNameOfClass() == "CompositeTransform"
    result = ElastixBlockRegistration()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert result.transform.GetNameOfClass() == "DisplacementFieldTransform"
    err = pair.errors(result.transform)
    assert err.max() < TOL, (err.max(), err.mean())
    assert result.metric is not None and result.metric < -0.9


def test_user_parameter_maps_affine(synth) -> None:
    """A user-supplied affine map (plain dicts) recovers an affine residual."""
    residual = synth.random_affine(
        2, degrees=3, scale=0.03, shear=0.02, translation=1.5, center=np.zeros(2), seed=5
    )
    pair = synth.make_pair(2, residual=residual, direction_deg=-7.0, block=96)
    pm = default_bspline_map()
    pm.update(
        {
            "Transform": ["AffineTransform"],
            "AutomaticScalesEstimation": ["true"],
            "MaximumNumberOfIterations": ["200"],
        }
    )
    for key in ("FinalGridSpacingInPhysicalUnits", "GridSpacingSchedule"):
        pm.pop(key)
    method = ElastixBlockRegistration(parameter_maps=[pm])
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert pair.errors(result.transform).max() < TOL


def test_defaults_are_light() -> None:
    maps = ElastixBlockRegistration().maps_for((80, 80, 80), (1.0, 1.0, 2.0))
    assert len(maps) == 1
    pm = maps[0]
    assert int(pm["NumberOfResolutions"][0]) <= 2
    assert int(pm["MaximumNumberOfIterations"][0]) <= 200
    assert int(pm["NumberOfSpatialSamples"][0]) <= 4000
    assert float(pm["FinalGridSpacingInPhysicalUnits"][0]) == pytest.approx(79 / 4)


def test_missing_extra_error_type() -> None:
    assert issubclass(ElastixNotAvailableError, NgffDregError)
    assert issubclass(ElastixNotAvailableError, ImportError)


def test_pickles(synth) -> None:
    method = ElastixBlockRegistration(grid_spacing=12.0, extra={"MaximumNumberOfIterations": [50]})
    again = cloudpickle.loads(cloudpickle.dumps(method))
    assert again == method
    assert again.extra == {"MaximumNumberOfIterations": ["50"]}
    pair = synth.make_pair(2, field_max=2.0, block=64)
    result = again(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    tx = pickle.loads(pickle.dumps(result.transform))
    p = [1.5, -2.5]
    assert np.allclose(tx.TransformPoint(p), result.transform.TransformPoint(p))
