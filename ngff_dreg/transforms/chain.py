"""The transform every stage hands to the next: ``affine(x + field(x))``, and ``map_points``.

The composed map is ``total(x) = affine(x + field(x))``: the displacement is
applied first, then the affine. This matches an NGFF ``sequence``
``[displacements, affine]`` and an ``itk.CompositeTransform`` holding
``[affine, field]`` (ITK applies the last-added transform first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box
from ngff_dreg.transforms.affine import AffineTransform
from ngff_dreg.transforms.field import DisplacementField

__all__ = ["TransformChain", "map_points"]

FloatArray = npt.NDArray[np.float64]


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
        from ngff_dreg.itk_bridge import composite_transform

        field_tx = []
        if self.field is not None:
            box = None if near_points is None else self.field_box_for(near_points)
            field_tx.append(self.field.to_itk(box))
        # ITK applies the last-added transform first.
        if self.affine_first:
            parts = [*field_tx, self.affine.to_itk()]
        else:
            parts = [self.affine.to_itk(), *field_tx]
        return composite_transform(parts, self.ndim)


def map_points(transform: Any, points: npt.ArrayLike) -> FloatArray:
    """Map ``(N, ndim)`` points through any fixed→moving transform.

    Accepts a :class:`TransformChain`, an :class:`AffineTransform` or any
    ``itk.Transform``.
    """
    if hasattr(transform, "transform_points"):
        return np.asarray(transform.transform_points(points), dtype=np.float64)
    from ngff_dreg.itk_bridge import transform_points

    return transform_points(transform, points)
