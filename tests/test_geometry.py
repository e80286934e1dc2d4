import numpy as np
import pytest

from ngff_dreg.geometry import Box, ImageGeometry, grid_points


def test_index_physical_round_trip_oblique():
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    g = ImageGeometry((5, 6, 7), (0.5, 2.0, 3.0), (1.0, 2.0, 3.0), direction)
    idx = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    pts = g.index_to_physical(idx)
    np.testing.assert_allclose(pts[1], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(pts[0], [1.0 - 4.0, 2.0 + 0.5, 3.0 + 9.0])
    np.testing.assert_allclose(g.physical_to_index(pts), idx)


def test_sub_geometry_origin_moves():
    g = ImageGeometry((10, 20, 30), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    s = g.sub((slice(1, 3), slice(2, 4), slice(3, 5)))
    assert s.shape == (2, 2, 2)
    np.testing.assert_allclose(s.origin, [3.0, 4.0, 3.0])


def test_with_spacing_covers_extent():
    g = ImageGeometry((10, 20, 30), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    f = g.with_spacing((4.0, 4.0, 4.0))
    last = f.index_to_physical(np.asarray(f.size, float) - 1)
    assert np.all(last >= g.index_to_physical(np.asarray(g.size, float) - 1) - 1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (2, 2), "spacing": (0.0, 1.0), "origin": (0, 0)},
        {"shape": (2, 2), "spacing": (-1.0, 1.0), "origin": (0, 0)},
        {"shape": (2, 2), "spacing": (1.0,), "origin": (0, 0)},
        {"shape": (2, 2), "spacing": (1.0, 1.0), "origin": (0, 0), "direction": ((1, 0), (1, 0))},
    ],
)
def test_bad_geometry_rejected(kwargs):
    with pytest.raises(ValueError):
        ImageGeometry(**kwargs)


def test_box_ops_and_grid_points():
    b = Box((2, 2), (6, 5))
    assert b.pad([1, 1]).clip((6, 6)) == Box((1, 1), (6, 6))
    assert b.intersect(Box((10, 10), (12, 12))).is_empty
    pts = grid_points(b, per_axis=3)
    assert pts.shape == (9, 2)
    assert pts.min(axis=0).tolist() == [2, 2] and pts.max(axis=0).tolist() == [5, 4]
