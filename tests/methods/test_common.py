"""Helpers shared by the block methods (``ngff_dreg.methods._common``)."""

from __future__ import annotations

import numpy as np

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.itk_bridge import image_from_array
from ngff_dreg.methods._common import nan_rimmed, resample_into


def _shift(ndim: int, offset: float) -> object:
    import itk

    t = itk.TranslationTransform[itk.D, ndim].New()
    t.SetOffset([offset] + [0.0] * (ndim - 1))
    return t


def test_resampled_through_the_rimmed_copy_ends_at_the_last_voxel_centre() -> None:
    import itk

    moving_arr = np.arange(6 * 20, dtype=np.float32).reshape(6, 20)
    moving = image_from_array(moving_arr, ImageGeometry((6, 20), (1.0, 1.0), (0.0, 0.0)))
    fixed = image_from_array(np.zeros((6, 24), np.float32),
                             ImageGeometry((6, 24), (1.0, 1.0), (0.0, 0.0)))
    # fixed column j maps to moving column j + 0.4: column 19 maps to 19.4,
    # half a voxel inside ITK's bounds but past the last voxel centre
    plain = itk.array_from_image(resample_into(moving, fixed, _shift(2, 0.4), float("nan")))
    rimmed = itk.array_from_image(
        resample_into(nan_rimmed(moving), fixed, _shift(2, 0.4), float("nan")))
    assert np.isfinite(plain[:, 19]).all()  # ITK repeats the edge voxel there
    assert np.isnan(rimmed[:, 19:]).all()
    np.testing.assert_allclose(rimmed[:, :19], plain[:, :19], rtol=1e-6)
    np.testing.assert_allclose(rimmed[0, :19], np.arange(19) + 0.4, rtol=1e-5)
    # and the low side: column 0 maps to -0.4, outside the data
    low = itk.array_from_image(
        resample_into(nan_rimmed(moving), fixed, _shift(2, -0.4), float("nan")))
    assert np.isnan(low[:, 0]).all() and np.isfinite(low[:, 1:20]).all()


def test_the_rimmed_copy_keeps_geometry_and_voxels_of_a_rotated_image() -> None:
    import itk

    theta = np.deg2rad(20.0)
    direction = ((np.cos(theta), -np.sin(theta), 0.0), (np.sin(theta), np.cos(theta), 0.0),
                 (0.0, 0.0, 1.0))
    geom = ImageGeometry((4, 5, 6), (0.5, 1.0, 2.0), (3.0, -2.0, 1.0), direction)
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    framed = nan_rimmed(image_from_array(arr, geom))
    out = itk.array_from_image(framed)
    assert out.shape == (6, 7, 8)
    np.testing.assert_array_equal(out[1:-1, 1:-1, 1:-1], arr)
    assert np.isnan(out[0]).all() and np.isnan(out[:, :, -1]).all()
    # voxel (1, 1, 1) of the framed copy is voxel (0, 0, 0) of the image
    p = framed.TransformIndexToPhysicalPoint([1, 1, 1])
    np.testing.assert_allclose(list(p), geom.origin, atol=1e-9)
