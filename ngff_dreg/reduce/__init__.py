"""Reductions of per-block results to one transform over the fixed domain."""

from ngff_dreg.reduce.blend import (
    BlendedTransformResult,
    BlockSample,
    ReduceToDisplacementField,
    field_geometry_for,
    quality_factor,
)
from ngff_dreg.reduce.inverse import invert_field
from ngff_dreg.reduce.quality import jacobian_chunk, status_map

__all__ = [
    "BlendedTransformResult",
    "BlockSample",
    "ReduceToDisplacementField",
    "field_geometry_for",
    "invert_field",
    "jacobian_chunk",
    "quality_factor",
    "status_map",
]
