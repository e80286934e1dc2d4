"""Reduce per-block results to one transform over the fixed domain.

* kernels, pure NumPy: :mod:`~ngff_dreg.reduce.blend` (block samples, cosine
  blending, hole filling, fold), :mod:`~ngff_dreg.reduce.inverse` (inverse
  field), :mod:`~ngff_dreg.reduce.quality` (Jacobian determinant);
* :mod:`~ngff_dreg.reduce.graph`: one dask task per kernel call, wired chunk
  by chunk;
* :mod:`~ngff_dreg.reduce.reducer`: :class:`ReduceToDisplacementField`, the
  itk-dreg reduce method, handed the writer its fields go to;
* :mod:`~ngff_dreg.reduce.result`: :class:`BlendedTransformResult`.
"""

from ngff_dreg.reduce.blend import BlockSample, field_geometry_for, quality_factor
from ngff_dreg.reduce.inverse import invert_field
from ngff_dreg.reduce.quality import jacobian_chunk
from ngff_dreg.reduce.reducer import ReduceToDisplacementField
from ngff_dreg.reduce.result import BlendedTransformResult

__all__ = [
    "BlendedTransformResult",
    "BlockSample",
    "ReduceToDisplacementField",
    "field_geometry_for",
    "invert_field",
    "jacobian_chunk",
    "quality_factor",
]
