"""Quality kernel of a displacement field (pure NumPy): the Jacobian determinant."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box
from ngff_dreg.transforms import DisplacementField
from ngff_dreg.transforms.jacobian import jacobian_determinant

__all__ = ["jacobian_chunk"]

FloatArray = npt.NDArray[np.float64]


def jacobian_chunk(chunk: Box, field: DisplacementField) -> FloatArray:
    """Jacobian determinant of ``x ↦ x + D(x)`` on a chunk's nodes.

    Reads the chunk with a one-node halo; central differences inside,
    one-sided at the grid edge. Derivatives are taken along the grid axes and
    turned into physical derivatives through the grid's direction and spacing,
    so any orientation is handled.
    """
    g = field.geometry
    outer = chunk.pad((1,) * g.ndim).clip(g.shape)
    det = jacobian_determinant(field.read(outer), g.sub(outer.slices))
    return np.asarray(det[chunk.relative_to(outer)])
