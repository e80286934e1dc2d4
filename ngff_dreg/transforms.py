"""Plain, picklable fixed→moving transforms: an affine plus a displacement field.

These are what travels between processes and what ngff-dreg writes as NGFF.
Point mapping is vectorised with NumPy; an equivalent ``itk.Transform`` is
built on demand (optionally cropped to a region, so a worker never needs the
whole field).

The composed map is ``total(x) = affine(x + field(x))``: the displacement is
applied first, then the affine. This matches an NGFF ``sequence``
``[displacements, affine]`` and an ``itk.CompositeTransform`` holding
``[affine, field]`` (ITK applies the last-added transform first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import SupportsTransformPoints

__all__ = [
    "AffineTransform",
    "DisplacementField",
    "TransformChain",
    "map_points",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AffineTransform:
    """``y = matrix @ x + translation`` in physical ITK-order coordinates."""

    matrix: tuple[tuple[float, ...], ...]
    translation: tuple[float, ...]

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        t = np.asarray(self.translation, dtype=np.float64).ravel()
        if m.ndim != 2 or m.shape[0] != m.shape[1] or t.shape[0] != m.shape[0]:
            raise ValueError(f"bad affine: matrix {m.shape}, translation {t.shape}")
        object.__setattr__(self, "matrix", tuple(tuple(float(v) for v in r) for r in m))
        object.__setattr__(self, "translation", tuple(float(v) for v in t))

    @classmethod
    def identity(cls, ndim: int) -> AffineTransform:
        """The identity map."""
        return cls(tuple(map(tuple, np.eye(ndim))), (0.0,) * ndim)

    @classmethod
    def from_arrays(cls, matrix: npt.ArrayLike, translation: npt.ArrayLike) -> AffineTransform:
        """Build from array-likes."""
        m = np.asarray(matrix, dtype=np.float64)
        return cls(tuple(map(tuple, m)), tuple(np.asarray(translation, dtype=np.float64)))

    @classmethod
    def from_homogeneous(cls, h: npt.ArrayLike) -> AffineTransform:
        """Build from an ``(ndim+1) x (ndim+1)`` homogeneous matrix."""
        a = np.asarray(h, dtype=np.float64)
        n = a.shape[0] - 1
        return cls.from_arrays(a[:n, :n], a[:n, n])

    @classmethod
    def from_itk(cls, transform: Any) -> AffineTransform:
        """From any linear ``itk.Transform``."""
        from ngff_dreg.itk_bridge import itk_to_affine

        return cls.from_arrays(*itk_to_affine(transform))

    @property
    def ndim(self) -> int:
        """Dimension."""
        return len(self.translation)

    @property
    def A(self) -> FloatArray:
        """Matrix as an array."""
        return np.asarray(self.matrix, dtype=np.float64)

    @property
    def t(self) -> FloatArray:
        """Translation as an array."""
        return np.asarray(self.translation, dtype=np.float64)

    @property
    def homogeneous(self) -> FloatArray:
        """``(ndim+1) x (ndim+1)`` homogeneous matrix."""
        h = np.eye(self.ndim + 1)
        h[: self.ndim, : self.ndim] = self.A
        h[: self.ndim, self.ndim] = self.t
        return h

    @property
    def is_identity(self) -> bool:
        """True for the identity map (to 1e-12)."""
        return bool(np.allclose(self.homogeneous, np.eye(self.ndim + 1), atol=1e-12))

    def transform_points(self, points: npt.ArrayLike) -> FloatArray:
        """Map ``(N, ndim)`` physical points."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.A.T + self.t

    def inverse(self) -> AffineTransform:
        """The inverse map."""
        return AffineTransform.from_homogeneous(np.linalg.inv(self.homogeneous))

    def then(self, other: AffineTransform) -> AffineTransform:
        """``other ∘ self``: apply ``self`` first, then ``other``."""
        return AffineTransform.from_homogeneous(other.homogeneous @ self.homogeneous)

    def to_itk(self) -> Any:
        """An ``itk.AffineTransform``."""
        from ngff_dreg.itk_bridge import affine_to_itk

        return affine_to_itk(self.A, self.t)


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


@dataclass(frozen=True)
class TransformChain:
    """The map ``affine(x + field(x))``, or ``y + field(y)`` with ``y = affine(x)``.

    ``field`` is optional (a pure affine chain). With ``affine_first=False``
    (the default, a forward fixed→moving transform) the displacement acts
    first; with ``affine_first=True`` (the shape of an inverse) the affine acts
    first and the field is sampled at the affine's output. This is the
    transform every ngff-dreg stage passes to the next, and what is written as
    NGFF.
    """

    affine: AffineTransform
    field: DisplacementField | None = None
    affine_first: bool = False

    @classmethod
    def identity(cls, ndim: int) -> TransformChain:
        """The identity map."""
        return cls(AffineTransform.identity(ndim))

    @property
    def ndim(self) -> int:
        """Dimension."""
        return self.affine.ndim

    def transform_points(self, points: npt.ArrayLike) -> FloatArray:
        """Map ``(N, ndim)`` fixed physical points to moving physical points."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        if self.affine_first:
            p = self.affine.transform_points(p)
            return p if self.field is None else p + self.field.sample(p)
        if self.field is not None:
            p = p + self.field.sample(p)
        return self.affine.transform_points(p)

    def field_box_for(self, points: npt.ArrayLike, margin: int = 2) -> Box | None:
        """Field grid box needed to evaluate the chain near ``points``."""
        if self.field is None:
            return None
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        if self.affine_first:
            pts = self.affine.transform_points(pts)
        return self.field.support_box(pts, margin=margin)

    def to_itk(self, near_points: npt.ArrayLike | None = None) -> Any:
        """An ``itk.CompositeTransform`` equal to this chain.

        With ``near_points``, the displacement field is cropped to the part
        needed around those physical points, so only that part is read.
        """
        import itk

        composite = itk.CompositeTransform[itk.D, self.ndim].New()
        field_tx = None
        if self.field is not None:
            box = None if near_points is None else self.field_box_for(near_points)
            field_tx = self.field.to_itk(box)
        # ITK applies the last-added transform first.
        if self.affine_first:
            if field_tx is not None:
                composite.AddTransform(field_tx)
            composite.AddTransform(self.affine.to_itk())
        else:
            composite.AddTransform(self.affine.to_itk())
            if field_tx is not None:
                composite.AddTransform(field_tx)
        return composite


def map_points(transform: Any, points: npt.ArrayLike) -> FloatArray:
    """Map ``(N, ndim)`` points through any fixed→moving transform.

    Accepts a :class:`TransformChain`, an :class:`AffineTransform` or any
    ``itk.Transform``.
    """
    if isinstance(transform, SupportsTransformPoints):
        return np.asarray(transform.transform_points(points), dtype=np.float64)
    from ngff_dreg.itk_bridge import transform_points

    return transform_points(transform, points)
