"""OME-Zarr (NGFF) metadata parsing, free of I/O."""

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

__all__ = [
    "SUPPORTED_VERSIONS",
    "Axis",
    "Level",
    "Multiscale",
    "check_relative_path",
    "detect_version",
    "normalize_unit",
    "orientation_matrix",
    "parse_multiscale",
    "unit_factor",
]
