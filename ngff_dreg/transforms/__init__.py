"""Plain, picklable fixed→moving transforms, evaluated with NumPy.

These are what travels between processes and what ngff-dreg writes as NGFF:

* :class:`AffineTransform` (:mod:`~ngff_dreg.transforms.affine`),
* :class:`DisplacementField` (:mod:`~ngff_dreg.transforms.field`), in memory
  or read box by box from a store, so a worker never needs the whole field,
* :class:`TransformChain` (:mod:`~ngff_dreg.transforms.chain`): the affine
  plus field every stage hands to the next, and :func:`map_points` for any
  transform,
* :class:`BSplineGrid` (:mod:`~ngff_dreg.transforms.bspline`): a cubic
  B-spline block transform and its sparse weights.

An equal ``itk.Transform`` is built on demand (``to_itk``), through
:mod:`ngff_dreg.itk_bridge`; nothing here imports ITK.
"""

from ngff_dreg.transforms.affine import AffineTransform
from ngff_dreg.transforms.bspline import (
    BSplineGrid,
    apply_axes,
    axis_basis,
    bspline_weight_matrix,
    cubic_weights,
    grid_coordinates,
)
from ngff_dreg.transforms.chain import TransformChain, map_points
from ngff_dreg.transforms.field import DisplacementField, FieldLoader

__all__ = [
    "AffineTransform",
    "BSplineGrid",
    "DisplacementField",
    "FieldLoader",
    "TransformChain",
    "apply_axes",
    "axis_basis",
    "bspline_weight_matrix",
    "cubic_weights",
    "grid_coordinates",
    "map_points",
]
