"""The grid of the first field along a scene map, in the map's input points."""

from __future__ import annotations

import numpy as np

from ngff_dreg.ngff.scene_graph import Chain, Field, Linear
from ngff_dreg.ngff.scene_grid import first_field_grid


def _field(perm: tuple[int, ...] | None = None) -> Field:
    shape = (4, 5, 6)

    def vectors(box: tuple[slice, ...]) -> np.ndarray:
        return np.zeros((3, *(s.stop - s.start for s in box)))

    return Field("displacements", shape, np.array([2.0, 3.0, 0.5]), np.array([1.0, -1.0, 4.0]),
                 vectors, perm=perm)


def test_a_field_first_gives_its_own_grid():
    grid = first_field_grid(_field(), "mm")
    assert grid is not None
    assert grid.shape == (4, 5, 6)
    assert grid.spacing == (0.5, 3.0, 2.0)  # ITK order: the array's last axis first
    assert grid.origin == (4.0, -1.0, 1.0)
    assert grid.is_axis_aligned and grid.unit == "mm"


def test_a_field_stored_in_another_axis_order_gives_an_axis_aligned_grid():
    # array axis j stands for point coordinate perm[j]: the array is stored reversed
    grid = first_field_grid(_field(perm=(2, 1, 0)))
    assert grid is not None and grid.is_axis_aligned
    assert grid.shape == (6, 5, 4)
    assert grid.spacing == (2.0, 3.0, 0.5)
    assert grid.origin == (1.0, -1.0, 4.0)


def test_linear_steps_before_the_field_move_the_grid_back():
    shift = np.eye(4)
    shift[:3, 3] = [10.0, 20.0, 30.0]  # points (z, y, x) are shifted before the field
    grid = first_field_grid(Chain((Linear(shift), _field(), Linear(np.eye(4)))))
    assert grid is not None
    np.testing.assert_allclose(grid.origin, (4.0 - 30.0, -1.0 - 20.0, 1.0 - 10.0))


def test_no_grid_without_a_field_or_behind_a_non_linear_step():
    assert first_field_grid(Linear(np.eye(4))) is None
    assert first_field_grid(Chain((_field(), _field()))) is not None
    shear = np.eye(4)
    shear[0, 1] = 0.7
    assert first_field_grid(Chain((Linear(shear), _field()))) is None
