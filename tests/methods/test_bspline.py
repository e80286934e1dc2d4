"""ItkBSplineRegistration recovers a known smooth deformation in 2D and 3D."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest

from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.methods import ItkBSplineRegistration
from ngff_dreg.transforms import BSplineGrid, bspline_weight_matrix

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
    method = ItkBSplineRegistration(mesh_size=4)
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    assert result.transform.GetNameOfClass() == "BSplineTransform"
    err = pair.errors(result.transform)
    assert err.max() < TOL, (err.max(), err.mean())
    assert err.mean() < TOL / 2
    assert result.metric is not None and result.metric < -0.9
    assert tuple(result.transform_domain.GetLargestPossibleRegion().GetSize()) == tuple(
        pair.fixed.GetBufferedRegion().GetSize()
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_engine(synth, ndim) -> None:
    """The ITK v4 engine (and Mattes MI, which always uses it) agrees on the same warp."""
    pair = synth.make_pair(
        ndim,
        field_max=3.0,
        initial=synth.translation(ndim, (1.0, -2.0, 0.5)[:ndim]),
        direction_deg=8.0,
        block=40 if ndim == 3 else 96,
    )
    metric = "mattes" if ndim == 2 else "correlation"
    method = ItkBSplineRegistration(
        mesh_size=4, metric=metric, engine="itk", number_of_samples=2000, iterations=20
    )
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    err = pair.errors(result.transform)
    assert err.max() < 1.5 * TOL, (err.max(), err.mean())


def test_control_point_spacing_sets_mesh() -> None:
    method = ItkBSplineRegistration(control_point_spacing=(10.0, 20.0))
    assert method.mesh_for((41, 81), (1.0, 0.5)) == [4, 2]
    assert ItkBSplineRegistration(mesh_size=3).mesh_for((10, 10, 10), (1, 1, 1)) == [3, 3, 3]


def test_weight_matrix_matches_itk() -> None:
    import itk

    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.itk_bridge import image_from_array
    from ngff_dreg.synthetic import small_rotation

    geom = ImageGeometry((20, 30, 25), (1.0, 0.8, 1.3), (3.0, -2.0, 1.0), small_rotation(3, 10))
    img = image_from_array(np.zeros(geom.shape, np.float32), geom)
    tx = itk.BSplineTransform[itk.D, 3, 3].New()
    init = itk.BSplineTransformInitializer[type(tx), itk.Image[itk.F, 3]].New()
    init.SetTransform(tx)
    init.SetImage(img)
    init.SetTransformDomainMeshSize([3, 4, 2])
    init.InitializeTransform()
    rng = np.random.default_rng(0)
    params = rng.standard_normal(tx.GetNumberOfParameters())
    tx.SetParameters(itk.OptimizerParameters[itk.D](params.tolist()))
    pts = geom.index_to_physical(rng.uniform(-0.5, 19.5, (100, 3)))
    mine = pts + bspline_weight_matrix(tx, pts) @ params.reshape(3, -1).T
    ref = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    assert np.allclose(mine, ref, atol=1e-9)


def _random_bspline(ndim: int, seed: int) -> tuple:
    import itk

    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.itk_bridge import image_from_array
    from ngff_dreg.synthetic import small_rotation

    shape = (20, 30, 25)[:ndim]
    geom = ImageGeometry(
        shape, (1.0, 0.8, 1.3)[:ndim], (3.0, -2.0, 1.0)[:ndim], small_rotation(ndim, 17)
    )
    img = image_from_array(np.zeros(geom.shape, np.float32), geom)
    tx = itk.BSplineTransform[itk.D, ndim, 3].New()
    init = itk.BSplineTransformInitializer[type(tx), itk.Image[itk.F, ndim]].New()
    init.SetTransform(tx)
    init.SetImage(img)
    init.SetTransformDomainMeshSize([3, 4, 2][:ndim])
    init.InitializeTransform()
    rng = np.random.default_rng(seed)
    params = 2.0 * rng.standard_normal(tx.GetNumberOfParameters())
    tx.SetParameters(itk.OptimizerParameters[itk.D](params.tolist()))
    return tx, geom, rng


@pytest.mark.parametrize("ndim", [2, 3])
def test_numpy_bspline_grid_matches_itk_transform_point(ndim) -> None:
    """BSplineGrid (vectorised) maps points exactly as ITK's TransformPoint does.

    Oblique direction, anisotropic spacing; random points inside, around and
    far outside the grid's valid region, plus the image's corner voxels.
    """
    tx, geom, rng = _random_bspline(ndim, seed=ndim)
    hi = np.asarray(geom.size, dtype=float)  # ITK order
    idx = rng.uniform(-4.0, hi + 4.0, (4000, ndim))
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in geom.size], indexing="ij"))
    idx = np.concatenate([idx, corners.reshape(ndim, -1).T])
    pts = geom.index_to_physical(idx)
    ref = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    moved = np.any(np.abs(ref - pts) > 1e-12, axis=1)
    assert 0.2 < moved.mean() < 0.95  # both inside and outside points are tested
    grid = BSplineGrid.from_itk(tx)
    got = grid.transform_points(pts)
    assert np.abs(got - ref).max() < 1e-9
    # small batches give the same answer; pickling keeps the map
    assert np.allclose(grid.displacement(pts, batch=7), got - pts, rtol=0, atol=1e-12)
    again = pickle.loads(pickle.dumps(grid))
    assert np.array_equal(again.transform_points(pts), got)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ItkBSplineRegistration(engine="gpu")
    with pytest.raises(ValueError):
        ItkBSplineRegistration(optimizer="adam")
    with pytest.raises(ValueError):
        ItkBSplineRegistration(sampling_percentage=0.0)


def test_no_signal(synth) -> None:
    import itk

    pair = synth.make_pair(2, block=64)
    itk.array_view_from_image(pair.fixed)[...] = 1.0
    result = ItkBSplineRegistration()(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.NO_SIGNAL


def test_pickles(synth) -> None:
    method = ItkBSplineRegistration(control_point_spacing=16.0, iterations=10)
    again = cloudpickle.loads(cloudpickle.dumps(method))
    assert again == method
    pair = synth.make_pair(2, field_max=2.0, block=64)
    result = again(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        tx = loads(dumps(result.transform))
        p = [1.5, -2.5]
        assert np.allclose(tx.TransformPoint(p), result.transform.TransformPoint(p))


@pytest.mark.parametrize("ndim", [2, 3])
def test_regularised_fit_recovers_smooth_warp(synth, ndim) -> None:
    """The bending/ridge penalty and the validation check keep a smooth warp recoverable."""
    pair = synth.make_pair(
        ndim,
        field_max=3.0,
        initial=synth.translation(ndim, (1.0, -2.0, 0.5)[:ndim]),
        direction_deg=8.0,
        block=48 if ndim == 3 else 128,
    )
    method = ItkBSplineRegistration(
        mesh_size=4, bending=0.01, ridge=0.01, validation_samples=5000
    )
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.SUCCESS, result.message
    err = pair.errors(result.transform)
    assert err.max() < TOL, (err.max(), err.mean())


def test_fit_that_does_not_improve_is_refused(synth, monkeypatch) -> None:
    """A fit whose validation metric got worse is LOW_QUALITY (filled from neighbours)."""
    from ngff_dreg.methods import bspline

    real_fit = bspline._fast_bspline_fit

    def worse_fit(*args, **kwargs):
        fit = real_fit(*args, **kwargs)
        assert fit.before is not None and fit.after is not None
        assert fit.after < fit.before  # the real fit improves the held-out metric
        fit.after = fit.before + 1e-3
        return fit

    pair = synth.make_pair(2, field_max=2.0, block=64)
    method = ItkBSplineRegistration(mesh_size=3, validation_samples=2000)
    monkeypatch.setattr(bspline, "_fast_bspline_fit", worse_fit)
    result = method(pair.fixed, pair.moving, pair.initial, pair.info)
    assert result.status == BlockRegStatus.LOW_QUALITY, result.message
    assert "no improvement" in result.message


def test_smoothness_operator() -> None:
    from ngff_dreg.methods.bspline import _smoothness_operator

    grid = (5, 6, 7)  # ITK order, x fastest
    q = _smoothness_operator(grid, bending=1.0, ridge=0.0)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in grid[::-1]], indexing="ij")
    linear = (2.0 * x - y + 0.5 * z + 3.0).ravel()
    assert abs(linear @ q @ linear) < 1e-9  # affine coefficients bend nothing
    curved = (x**2).ravel()  # second difference 2 along x only
    n_rows = (5 - 2) * 6 * 7 + 5 * (6 - 2) * 7 + 5 * 6 * (7 - 2)
    assert np.isclose(curved @ q @ curved, 4.0 * (5 - 2) * 6 * 7 / n_rows)
    ridge = _smoothness_operator(grid, bending=0.0, ridge=2.0)
    ones = np.ones(5 * 6 * 7)
    assert np.isclose(ones @ ridge @ ones, 2.0)


@pytest.mark.parametrize("shape", [(17, 23, 9), (30, 41), (1, 12, 7), (5, 1, 6)])
def test_linear_sampler_matches_map_coordinates(shape) -> None:
    """The interleaved image+gradient sampler equals scipy's linear interpolation
    (edge values outside the grid), for the image and each gradient component."""
    from scipy import ndimage

    from ngff_dreg.methods.bspline import _image_and_gradients

    rng = np.random.default_rng(len(shape))
    img = rng.standard_normal(shape)
    sampler = _image_and_gradients(img)
    pts = rng.uniform(-3.0, np.asarray(shape) + 2.0, (3000, len(shape)))
    grads = [
        np.gradient(img, axis=k) if n > 1 else np.zeros(shape) for k, n in enumerate(shape)
    ]
    want = np.stack(
        [ndimage.map_coordinates(a, pts.T, order=1, mode="nearest") for a in [img, *grads]],
        axis=1,
    )
    assert np.allclose(sampler(pts), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_through_a_chain_equals_itk_composite_resampling(ndim) -> None:
    """warp_moving (WarpImageFilter on the field's nodes) gives the same image as
    resampling through the chain's itk.CompositeTransform, NaN outside included
    (outside: past the moving image's outermost voxel centres, see nan_rimmed)."""
    import itk

    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.itk_bridge import image_from_array
    from ngff_dreg.methods._common import nan_rimmed, resample_into
    from ngff_dreg.methods.bspline import warp_moving
    from ngff_dreg.synthetic import small_rotation, smooth_displacement
    from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain

    rng = np.random.default_rng(ndim)
    shape = (24, 30, 28)[:ndim]
    fixed_geom = ImageGeometry(shape, (0.9, 1.1, 1.3)[:ndim], (2.0, -1.0, 0.5)[:ndim],
                               small_rotation(ndim, 8))
    moving_geom = ImageGeometry(shape, (1.0, 1.2, 1.1)[:ndim], (1.0, 0.0, -1.0)[:ndim])
    # a coarser, shifted field grid that does not quite cover the fixed block
    field_geom = ImageGeometry(tuple(n // 3 for n in shape), tuple(3.1 for _ in shape),
                               (3.0, -0.5, 1.0)[:ndim], fixed_geom.direction)
    field = smooth_displacement(field_geom, 2.0, seed=ndim)
    assert isinstance(field, DisplacementField)
    affine = AffineTransform.from_arrays(
        np.eye(ndim) + 0.03 * rng.standard_normal((ndim, ndim)), rng.uniform(-2, 2, ndim)
    )
    chain = TransformChain(affine, field)
    from scipy import ndimage

    fixed = image_from_array(rng.random(shape).astype(np.float32), fixed_geom)
    moving = image_from_array(
        ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32), moving_geom
    )
    framed = nan_rimmed(moving)
    want = itk.array_from_image(resample_into(framed, fixed, chain.to_itk(), float("nan")))
    got = itk.array_from_image(warp_moving(moving, fixed, chain))
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert 0.01 < np.isnan(want).mean() < 0.95  # both inside and outside are tested
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max() < 1e-5
    # an affine (or field-less chain) goes through plain resampling
    want = itk.array_from_image(resample_into(framed, fixed, affine.to_itk(), float("nan")))
    for initial in (affine, TransformChain(affine)):
        got = itk.array_from_image(warp_moving(moving, fixed, initial))
        assert np.array_equal(got, want, equal_nan=True)


def test_numpy_engine_declares_its_itk_needs() -> None:
    method = ItkBSplineRegistration()
    assert method.accepts_ngff_transforms
    assert "BSplineTransform" in method.itk_modules
    for other in (ItkBSplineRegistration(engine="itk"), ItkBSplineRegistration(metric="mattes")):
        assert not other.accepts_ngff_transforms
        assert other.itk_modules is None
