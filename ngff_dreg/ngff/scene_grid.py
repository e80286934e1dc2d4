"""The grid a non-linear scene map is naturally sampled on: that of its first field.

An export format that needs a dense field (an ITK displacement image,
BigWarp's field) samples ``T(x) - x`` on a grid. When no grid is given, the
grid of the first ``displacements``/``coordinates`` field along the map, mapped
back to the source system through the linear steps before it, is the natural
one: when every other step is linear, the map's total displacement is
multilinear between that grid's nodes, so sampling it there loses nothing.
:func:`first_field_grid` finds it. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.ngff.scene_graph import Bijection, Chain, Field, PointMap

__all__ = ["first_field_grid"]

FloatArray = npt.NDArray[np.float64]


def _steps(m: PointMap) -> Iterator[PointMap]:
    """The steps of a map in the order they act (sequences opened, bijections' forward)."""
    if isinstance(m, Chain):
        for p in m.parts:
            yield from _steps(p)
    elif isinstance(m, Bijection):
        yield from _steps(m.forward)
    else:
        yield m


def _reversed(h: FloatArray) -> FloatArray:
    """``h`` with its (square) spatial block's axes reversed: NumPy order <-> ITK order."""
    n = h.shape[0] - 1
    p = np.eye(n + 1)
    p[:n, :n] = np.eye(n)[::-1]
    out: FloatArray = p @ h @ p
    return out


def first_field_grid(m: PointMap, unit: str | None = None) -> ImageGeometry | None:
    """The first field's grid in ``m``'s input points, or ``None`` when there is none usable.

    ``m`` takes spatial points in NumPy order (``z, y, x``; what
    :func:`~ngff_dreg.ngff.scene_axes.spatial_map` builds around a reversed
    ITK order). The grid is returned as an :class:`ImageGeometry` (ITK-order
    spacing, origin and direction). ``None``: no field, a non-linear step
    before the first field, a field over more axes than the points have, or
    a linear part before it that shears the grid.
    """
    pre: FloatArray | None = None
    for step in _steps(m):
        if isinstance(step, Field):
            return _grid(step, pre, unit)
        h = step.homogeneous()
        if h is None:
            return None
        pre = h if pre is None else h @ pre
    return None


def _grid(f: Field, pre: FloatArray | None, unit: str | None) -> ImageGeometry | None:
    n = len(f.shape)
    if pre is None:
        pre = np.eye(n + 1)
    if pre.shape != (n + 1, n + 1) or abs(np.linalg.det(pre)) < 1e-12:
        return None
    grid = np.zeros((n + 1, n + 1))  # field array index -> the point coordinates
    rows = list(range(n)) if f.perm is None else list(f.perm)
    grid[rows, range(n)] = f.scale
    grid[rows, n] = f.translation
    grid[n, n] = 1.0
    index_to_point = _reversed(np.linalg.inv(pre) @ grid)  # ITK index -> ITK point
    a = index_to_point[:n, :n]
    spacing = np.linalg.norm(a, axis=0)
    if np.any(spacing <= 0):
        return None
    direction = a / spacing
    if not np.allclose(direction.T @ direction, np.eye(n), atol=1e-6):
        return None
    shape_itk = np.asarray(f.shape[::-1])
    if np.allclose(direction, np.round(direction)) and np.all(np.round(direction) >= 0):
        # axes stored in another order: the same nodes on an axis-aligned grid
        axis = np.argmax(np.round(direction), axis=1)  # ITK axis k is the field's axis[k]
        spacing, shape_itk, direction = spacing[axis], shape_itk[axis], np.eye(n)
    return ImageGeometry(tuple(int(s) for s in shape_itk[::-1]),
                         tuple(float(s) for s in spacing),
                         tuple(float(v) for v in index_to_point[:n, n]),
                         tuple(tuple(float(v) for v in row) for row in direction), unit)
