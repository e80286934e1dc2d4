"""A dense displacement field on a regular grid, in memory or read box by box (NumPy only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.geometry import Box, ImageGeometry

__all__ = ["DisplacementField", "FieldLoader"]

FloatArray = npt.NDArray[np.float64]

FieldLoader = Callable[[Box], npt.NDArray[Any]]


@dataclass(frozen=True)
class DisplacementField:
    """A dense displacement field on a regular grid, in memory or in a store.

    Parameters
    ----------
    geometry:
        The field grid (NumPy-order shape, ITK-order spacing/origin/direction).
    data:
        In-memory field of shape ``(ndim, *geometry.shape)``: component axis
        first, components in NumPy axis order (``z, y, x``), physical units
        (the NGFF layout). ``None`` when ``loader`` is given.
    loader:
        A picklable callable ``loader(box) -> array (ndim, *box.shape)`` that
        reads a sub-box of the field from its store (see
        ``ngff_dreg.io``). Used when the field is too big to hold.

    """

    geometry: ImageGeometry
    data: npt.NDArray[Any] | None = None
    loader: FieldLoader | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.loader is None):
            raise ValueError("give exactly one of data or loader")
        if self.data is not None:
            expected = (self.geometry.ndim, *self.geometry.shape)
            if tuple(self.data.shape) != expected:
                raise ValueError(f"field shape {self.data.shape}, expected {expected}")

    @property
    def ndim(self) -> int:
        """Spatial dimension."""
        return self.geometry.ndim

    def read(self, box: Box | None = None) -> FloatArray:
        """Field values over ``box`` (clipped to the grid), NGFF layout."""
        box = (box or Box.full(self.geometry.shape)).clip(self.geometry.shape)
        if self.data is not None:
            return np.asarray(self.data[(slice(None), *box.slices)], dtype=np.float64)
        assert self.loader is not None
        return np.asarray(self.loader(box), dtype=np.float64)

    def support_box(self, points: npt.ArrayLike, margin: int = 1) -> Box:
        """Grid box holding every node needed to interpolate at ``points``."""
        idx = self.geometry.physical_to_index(np.asarray(points, dtype=np.float64))[..., ::-1]
        idx = idx.reshape(-1, self.ndim)
        lo = np.floor(idx.min(axis=0)).astype(int) - margin
        hi = np.floor(idx.max(axis=0)).astype(int) + 2 + margin
        box = Box(tuple(lo), tuple(hi)).clip(self.geometry.shape)
        if box.is_empty:  # every point outside: use the nearest edge nodes
            lo = np.clip(lo, 0, np.asarray(self.geometry.shape) - 1)
            box = Box(tuple(lo), tuple(lo + 1)).pad([margin] * self.ndim).clip(self.geometry.shape)
        return box

    def sample(self, points: npt.ArrayLike, order: int = 1) -> FloatArray:
        """Displacement vectors (ITK order) at physical ``points`` ``(N, ndim)``.

        Linear interpolation; points beyond the grid take the value of the
        nearest edge node (no sudden drop to zero).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        if pts.shape[0] == 0:
            return np.zeros((0, self.ndim))
        box = self.support_box(pts)
        values = self.read(box)
        idx = self.geometry.physical_to_index(pts)[:, ::-1] - np.asarray(box.start)
        idx = np.clip(idx, 0, np.asarray(box.shape) - 1)
        out = np.empty((pts.shape[0], self.ndim))
        for c in range(self.ndim):
            out[:, c] = ndimage.map_coordinates(values[c], idx.T, order=order, mode="nearest")
        return out[:, ::-1]

    def crop(self, box: Box) -> DisplacementField:
        """In-memory sub-field over ``box`` (clipped)."""
        box = box.clip(self.geometry.shape)
        return DisplacementField(self.geometry.sub(box.slices), data=self.read(box))

    def to_itk(self, box: Box | None = None) -> Any:
        """``itk.DisplacementFieldTransform`` over ``box`` (default: all)."""
        from ngff_dreg.itk_bridge import displacement_field_to_itk

        sub = self.crop(box) if box is not None else self.crop(Box.full(self.geometry.shape))
        assert sub.data is not None
        return displacement_field_to_itk(sub.data, sub.geometry)
