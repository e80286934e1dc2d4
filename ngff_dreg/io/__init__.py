"""OME-Zarr input/output: the only layer that touches zarr and fsspec.

:mod:`~ngff_dreg.io.stores` opens every store and group; readers
(:mod:`~ngff_dreg.io.multiscale`, :mod:`~ngff_dreg.io.reader`,
:mod:`~ngff_dreg.io.transform_reader`) and writers
(:mod:`~ngff_dreg.io.field_writer`, :mod:`~ngff_dreg.io.image_writer`,
:mod:`~ngff_dreg.io.image_transform_writer`) build on it, and
:mod:`~ngff_dreg.io.output_state` owns an output's completion marker,
checkpoint manifest and stage reports.

The main entry points are re-exported lazily (importing ``ngff_dreg.io`` does
not import zarr, dask or itk):

* :func:`open_multiscale`, :class:`MultiscaleImage`, :class:`LevelInfo`
* :class:`OMEZarrReaderConstructor`, :class:`OMEZarrReader`
* :func:`write_multiscale`
* :func:`to_dask`, :func:`to_xarray`
* :func:`open_store`, :func:`open_group`, :func:`redact_url`, :func:`redact_options`
* :func:`output_status`
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_multiscale": "ngff_dreg.io.multiscale",
    "MultiscaleImage": "ngff_dreg.io.multiscale",
    "LevelInfo": "ngff_dreg.io.multiscale",
    "OMEZarrReaderConstructor": "ngff_dreg.io.reader",
    "OMEZarrReader": "ngff_dreg.io.reader",
    "write_multiscale": "ngff_dreg.io.image_writer",
    "to_dask": "ngff_dreg.io.arrays",
    "to_xarray": "ngff_dreg.io.arrays",
    "open_store": "ngff_dreg.io.stores",
    "open_group": "ngff_dreg.io.stores",
    "redact_url": "ngff_dreg.io.stores",
    "redact_options": "ngff_dreg.io.stores",
    "output_status": "ngff_dreg.io.output_state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ngff_dreg.io' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
