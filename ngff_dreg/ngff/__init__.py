"""The NGFF (OME-Zarr) data model, free of I/O.

* :mod:`~ngff_dreg.ngff.metadata`: multiscale image metadata (0.4, 0.5, 0.6)
  parsed into :class:`Multiscale` (levels, axes, units, direction).
* :mod:`~ngff_dreg.ngff.transforms`: the one parser of RFC-5
  coordinate-transformation JSON, used by the metadata parser, the upgrade
  and the transform-scene reader.
* :mod:`~ngff_dreg.ngff.upgrade`: 0.5 metadata rewritten as 0.6.
"""

from ngff_dreg.ngff.metadata import (
    SUPPORTED_VERSIONS,
    Axis,
    Level,
    Multiscale,
    check_relative_path,
    detect_version,
    normalize_unit,
    orientation_matrix,
    parse_multiscale,
    unit_factor,
)
from ngff_dreg.ngff.transforms import has_field_transform, split_at_field

__all__ = [
    "SUPPORTED_VERSIONS",
    "Axis",
    "Level",
    "Multiscale",
    "check_relative_path",
    "detect_version",
    "has_field_transform",
    "normalize_unit",
    "orientation_matrix",
    "parse_multiscale",
    "split_at_field",
    "unit_factor",
]
