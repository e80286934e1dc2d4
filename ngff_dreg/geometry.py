"""N-D image geometry: index <-> physical maps, sub-blocks and grids (NumPy only).

Conventions used across ngff-dreg
---------------------------------
* ``shape`` and array slices are in NumPy order (``z, y, x``).
* ``spacing``, ``origin``, physical points and continuous indices are in ITK
  order (``x, y, z``).
* ``direction`` is ITK's direction matrix: column ``j`` is the physical
  direction of index axis ``j`` (ITK order).

``physical = origin + direction @ (spacing * index)``
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ImageGeometry", "Box", "chunk_boxes", "grid_points", "one_per_axis"]

FloatArray = npt.NDArray[np.float64]


def one_per_axis(value: Any, ndim: int, what: str) -> tuple[Any, ...]:
    """``value`` once per axis: the one normalisation of per-axis arguments.

    A single value (or a one-entry sequence) is repeated ``ndim`` times; any
    other sequence must have ``ndim`` entries. ``what`` names the argument in
    the ``ValueError`` raised otherwise.

    Examples
    --------
    >>> one_per_axis(64, 3, "block size")
    (64, 64, 64)
    >>> one_per_axis((32, 64), 2, "chunks")
    (32, 64)

    """
    if np.ndim(value) == 0:
        return (value,) * ndim
    items: tuple[Any, ...] = tuple(value)
    if len(items) == 1 and ndim > 1:
        return items * ndim
    if len(items) != ndim:
        raise ValueError(f"{what} {value} does not have {ndim} entries")
    return items


def _as_tuple(values: Sequence[float] | npt.ArrayLike) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image's voxels sit in physical space.

    Parameters
    ----------
    shape:
        Array shape, NumPy order.
    spacing, origin:
        ITK order. ``origin`` is the physical position of the centre of voxel 0.
    direction:
        ``ndim x ndim`` direction matrix (ITK convention); identity if omitted.
    unit:
        Spatial unit of spacing and origin (UDUNITS-2 name), or ``None``.

    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...] = field(default=())
    unit: str | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        ndim = len(shape)
        spacing = _as_tuple(self.spacing)
        origin = _as_tuple(self.origin)
        if self.direction is None or len(self.direction) == 0:
            direction = np.eye(ndim)
        else:
            direction = np.asarray(self.direction, dtype=np.float64)
        if len(spacing) != ndim or len(origin) != ndim:
            raise ValueError(
                f"shape {shape}, spacing {spacing} and origin {origin} must have the same length"
            )
        if direction.shape != (ndim, ndim):
            raise ValueError(f"direction must be {ndim}x{ndim}, got {direction.shape}")
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must be non-negative, got {shape}")
        if any(not (s > 0 and math.isfinite(s)) for s in spacing):
            raise ValueError(f"spacing must be positive and finite, got {spacing}")
        if not all(math.isfinite(o) for o in origin):
            raise ValueError(f"origin must be finite, got {origin}")
        det = float(np.linalg.det(direction)) if ndim else 1.0
        if not math.isfinite(det) or abs(det) < 1e-6:
            raise ValueError(f"direction must be invertible, got {direction.tolist()}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(
            self, "direction", tuple(tuple(float(v) for v in row) for row in direction)
        )

    # -- basic properties -------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.shape)

    @property
    def size(self) -> tuple[int, ...]:
        """Size in ITK order (``x, y, z``)."""
        return tuple(reversed(self.shape))

    @property
    def direction_matrix(self) -> FloatArray:
        """Direction as an ``ndim x ndim`` array."""
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def index_to_physical_matrix(self) -> FloatArray:
        """``direction @ diag(spacing)``: maps an ITK-order index to a physical offset."""
        return self.direction_matrix @ np.diag(self.spacing)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is the identity."""
        return bool(np.allclose(self.direction_matrix, np.eye(self.ndim)))

    # -- maps -------------------------------------------------------------
    def index_to_physical(self, index: npt.ArrayLike) -> FloatArray:
        """Map continuous indices (``(..., ndim)``, ITK order) to physical points."""
        idx = np.asarray(index, dtype=np.float64)
        points: FloatArray = idx @ self.index_to_physical_matrix.T + np.asarray(self.origin)
        return points

    def physical_to_index(self, points: npt.ArrayLike) -> FloatArray:
        """Map physical points (``(..., ndim)``) to continuous ITK-order indices."""
        pts = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        inv = np.linalg.inv(self.index_to_physical_matrix)
        index: FloatArray = pts @ inv.T
        return index

    def array_index_to_physical(self, index_zyx: npt.ArrayLike) -> FloatArray:
        """Map NumPy-order indices (``(..., ndim)``) to physical points."""
        return self.index_to_physical(np.asarray(index_zyx, dtype=np.float64)[..., ::-1])

    # -- derived geometries ---------------------------------------------
    def sub(self, slices: Sequence[slice]) -> ImageGeometry:
        """Geometry of the sub-array ``array[slices]`` (NumPy order, step 1)."""
        box = Box.from_slices(slices, self.shape)
        start_xyz = np.asarray(box.start[::-1], dtype=np.float64)
        return ImageGeometry(
            shape=box.shape,
            spacing=self.spacing,
            origin=tuple(self.index_to_physical(start_xyz)),
            direction=self.direction,
            unit=self.unit,
        )

    def with_spacing(self, spacing: Sequence[float]) -> ImageGeometry:
        """A grid over the same physical extent with another spacing (ITK order).

        The new grid shares this grid's origin and direction, and its last node
        lies at or beyond the centre of this grid's last voxel along each axis.
        """
        new = np.asarray(spacing, dtype=np.float64)
        span = (np.asarray(self.size, dtype=np.float64) - 1.0) * np.asarray(self.spacing)
        size = np.ceil(np.maximum(span, 0.0) / new - 1e-9).astype(int) + 1
        return ImageGeometry(
            shape=tuple(int(s) for s in size[::-1]),
            spacing=tuple(new),
            origin=self.origin,
            direction=self.direction,
            unit=self.unit,
        )

    def physical_bounds(self, box: Box | None = None) -> tuple[FloatArray, FloatArray]:
        """Axis-aligned physical bounding box (min, max) of voxel centres in ``box``."""
        b = box or Box.full(self.shape)
        corners = np.asarray(
            list(itertools.product(*[(s, e - 1) for s, e in zip(b.start, b.stop)]))
        )
        pts = self.array_index_to_physical(corners)
        return pts.min(axis=0), pts.max(axis=0)

    def sample_points(self, box: Box | None = None, per_axis: int = 5) -> FloatArray:
        """Physical points on a regular lattice over ``box``: faces and interior.

        ``per_axis`` nodes per axis (at least 2, always including both ends), so
        the faces, edges, corners and the inside of the box are all sampled.
        """
        b = box or Box.full(self.shape)
        return self.array_index_to_physical(grid_points(b, per_axis))


@dataclass(frozen=True)
class Box:
    """A half-open box of array indices, NumPy order."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(v) for v in self.start))
        object.__setattr__(self, "stop", tuple(int(v) for v in self.stop))
        if len(self.start) != len(self.stop):
            raise ValueError("start and stop must have the same length")

    @classmethod
    def full(cls, shape: Sequence[int]) -> Box:
        """The box covering a whole array."""
        return cls(tuple(0 for _ in shape), tuple(shape))

    @classmethod
    def from_slices(cls, slices: Sequence[slice], shape: Sequence[int] | None = None) -> Box:
        """Box from slices; ``None`` bounds are filled from ``shape``."""
        start, stop = [], []
        for i, s in enumerate(slices):
            if s.step not in (None, 1):
                raise ValueError(f"slice step must be 1, got {s}")
            lo = 0 if s.start is None else int(s.start)
            if s.stop is None:
                if shape is None:
                    raise ValueError("an open slice needs the array shape")
                hi = int(shape[i])
            else:
                hi = int(s.stop)
            start.append(lo)
            stop.append(hi)
        return cls(tuple(start), tuple(stop))

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        """Extent per axis (0 where empty)."""
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))

    @property
    def is_empty(self) -> bool:
        """True when any axis has zero extent."""
        return any(s == 0 for s in self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as slices."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def pad(self, before: Sequence[int], after: Sequence[int] | None = None) -> Box:
        """Grow the box by ``before`` (and ``after``, default the same) voxels."""
        after = before if after is None else after
        return Box(
            tuple(a - p for a, p in zip(self.start, before)),
            tuple(b + p for b, p in zip(self.stop, after)),
        )

    def intersect(self, other: Box) -> Box:
        """Intersection (possibly empty)."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(max(s, min(a, b)) for s, a, b in zip(start, self.stop, other.stop))
        return Box(start, stop)

    def clip(self, shape: Sequence[int]) -> Box:
        """Intersection with ``[0, shape)``."""
        return self.intersect(Box.full(shape))

    def relative_to(self, outer: Box) -> tuple[slice, ...]:
        """Slices locating this box inside ``outer``'s array."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, outer.start))


def grid_points(box: Box, per_axis: int = 5) -> FloatArray:
    """NumPy-order index lattice over ``box`` (inclusive of the last voxel).

    Returns an ``(N, ndim)`` array with ``per_axis`` nodes per axis (fewer
    where the box is thinner), always including the first and last voxel.
    """
    per_axis = max(2, int(per_axis))
    axes = []
    for a, b in zip(box.start, box.stop):
        n = max(1, min(per_axis, b - a))
        axes.append(np.unique(np.linspace(a, b - 1, n)))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def chunk_boxes(shape: Sequence[int], chunks: Sequence[int]) -> list[Box]:
    """Boxes of a regular chunk grid over ``shape`` (NumPy order), in C order."""
    ranges = [range(0, int(n), int(c)) for n, c in zip(shape, chunks)]
    return [
        Box(tuple(s), tuple(min(a + c, n) for a, c, n in zip(s, chunks, shape)))
        for s in itertools.product(*ranges)
    ]
