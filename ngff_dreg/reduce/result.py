"""What the chunked reduction returns: the total transform, its inverse and a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.interfaces import RegistrationTransformResult

__all__ = ["BlendedTransformResult"]


@dataclass
class BlendedTransformResult(RegistrationTransformResult):
    """A :class:`RegistrationTransformResult` with the reduction's quality report.

    Attributes
    ----------
    report:
        Figures: ``inverse_residual_max``/``_p95`` (physical units, and
        ``_vox`` in fixed voxels), ``jacobian_min``, ``folded_fraction``,
        ``max_displacement``, ``n_blocks``, ``n_success``, ``field_shape``.
    status_map:
        Block status codes shaped like the block grid (NumPy order).
    jacobian:
        Jacobian-determinant map of ``x ↦ x + D_tot(x)`` on the field grid (in
        memory when the reducer has no writer, else ``None``: it is stored at
        ``<output>/quality/jacobian``).
    field_geometry:
        Grid of the forward and inverse fields.

    """

    report: dict[str, Any] = field(default_factory=dict)
    status_map: npt.NDArray[np.integer[Any]] | None = None
    jacobian: npt.NDArray[np.float32] | None = None
    field_geometry: ImageGeometry | None = None
