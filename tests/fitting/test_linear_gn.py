"""Gauss-Newton rigid and affine fits of whole images recover known transforms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.fitting.linear_gn import linear_fit, rotation_matrix
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.synthetic import small_rotation


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    return (np.clip(img * 4 + 0.5, 0, None) * inside).astype(np.float64)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_recovers_a_known_linear_transform(ndim: int, kind: str) -> None:
    shape = (48, 56, 52)[:ndim] if ndim == 3 else (120, 110)
    geom = ImageGeometry(shape, (2.0, 2.0, 2.5)[:ndim], (-50.0, -60.0, -40.0)[:ndim])
    moving = _blobs(shape, 1)
    rot = small_rotation(ndim, 6.0) if ndim == 2 else small_rotation(3, 6.0, 2) @ \
        small_rotation(3, 4.0, 0)
    matrix = rot @ (np.diag([1.04, 0.97, 1.02][:ndim]) if kind == "affine" else np.eye(ndim))
    centre = geom.index_to_physical((np.asarray(geom.size) - 1) / 2)
    translation = centre - matrix @ centre + np.array([5.0, -4.0, 3.0][:ndim])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = geom.array_index_to_physical(idx.reshape(-1, ndim).astype(float))
    midx = geom.physical_to_index(pts @ matrix.T + translation)[:, ::-1]
    fixed = ndimage.map_coordinates(moving, midx.T, order=3).reshape(shape)
    kinds = ("rigid",) if kind == "rigid" else ("rigid", "affine")
    fit = linear_fit(fixed, geom, moving, geom, np.eye(ndim), np.zeros(ndim), kinds=kinds)
    mapped = pts @ fit.matrix.T + fit.translation
    err = np.linalg.norm(mapped - (pts @ matrix.T + translation), axis=1)[fixed.ravel() > 0]
    start = np.linalg.norm(pts - (pts @ matrix.T + translation), axis=1)[fixed.ravel() > 0]
    assert start.mean() > 4.0
    tol = 0.35 if kind == "rigid" else 0.1  # a rigid fit cannot absorb the scale part
    if kind == "rigid":
        matrix_true = rot
        assert np.abs(fit.matrix - matrix_true).max() < 0.01
        assert np.abs(np.linalg.det(fit.matrix) - 1.0) < 1e-9
    else:
        assert np.percentile(err, 95) < tol * 2.0  # in mm: under a tenth of a voxel
        assert err.mean() < tol


def test_rotation_matrix_is_orthonormal() -> None:
    r = rotation_matrix(np.array([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation_matrix(np.array([0.3])), small_rotation(2, np.degrees(0.3)))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        geom = ImageGeometry((8, 8), (1.0, 1.0), (0.0, 0.0))
        linear_fit(np.zeros((8, 8)), geom, np.zeros((8, 8)), geom, np.eye(2), np.zeros(2),
                   kinds=("shear",))


def test_capped_strides_bound_the_samples_and_keep_small_levels_dense() -> None:
    from ngff_dreg.fitting.linear_gn import capped_strides

    big = ImageGeometry((47, 233, 197), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0))
    steps = capped_strides(1, big, 50_000)
    count = int(np.prod([-(-n // s) for n, s in zip(big.shape, steps)]))
    assert count <= 50_000 and count > 50_000 / 8  # bounded, and not far sparser than needed
    assert steps[0] < steps[1]  # the thick axis keeps more of its samples (physical stride)
    small = ImageGeometry((20, 30, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert capped_strides(1, small, 50_000) == [1, 1, 1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_mind_recovers_a_rigid_transform_across_contrasts(ndim: int) -> None:
    """Fixed and moving weight two tissue maps differently (no function between them)."""
    shape = (44, 48, 40) if ndim == 3 else (110, 100)
    geom = ImageGeometry(shape, (2.0, 2.0, 2.5)[:ndim], (-50.0, -60.0, -40.0)[:ndim])
    rng = np.random.default_rng(3)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.7
    a = (ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) > 0) & body
    b = (ndimage.gaussian_filter(rng.standard_normal(shape), 4.0) > 0.2) & body
    t1 = ndimage.gaussian_filter(0.3 * body + 1.0 * a + 0.5 * b, 0.8)
    t2 = ndimage.gaussian_filter(0.8 * (body & ~a & ~b) + 0.25 * a, 0.8)
    rot = small_rotation(ndim, 5.0) if ndim == 2 else small_rotation(3, 5.0, 1)
    centre = geom.index_to_physical((np.asarray(geom.size) - 1) / 2)
    translation = centre - rot @ centre + np.array([4.0, -3.0, 2.0][:ndim])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = geom.array_index_to_physical(idx.reshape(-1, ndim).astype(float))
    truth = pts @ rot.T + translation
    midx = geom.physical_to_index(truth)[:, ::-1]
    fixed = ndimage.map_coordinates(t1, midx.T, order=3).reshape(shape)
    # patches of one voxel: this image's tissue blobs are a few voxels across (the
    # default of 2 voxels is sized for the global stage's coarse levels of real images,
    # and blurs these: 1.6 mm mean error in 3D)
    fit = linear_fit(fixed, geom, t2, geom, np.eye(ndim), np.zeros(ndim), kinds=("rigid",),
                     similarity="mind", patch_sigma=1.0)
    mapped = pts @ fit.matrix.T + fit.translation
    inside = body.ravel()
    err = np.linalg.norm(mapped - truth, axis=1)[inside]
    start = np.linalg.norm(pts - truth, axis=1)[inside]
    assert start.mean() > 4.0
    assert err.mean() < 0.5, err.mean()  # a quarter of a voxel


def test_an_unknown_similarity_is_refused_by_the_linear_fit() -> None:
    geom = ImageGeometry((20, 20), (1.0, 1.0), (0.0, 0.0))
    img = np.ones((20, 20))
    with pytest.raises(ValueError, match="similarity"):
        linear_fit(img, geom, img, geom, np.eye(2), np.zeros(2), similarity="mi")
