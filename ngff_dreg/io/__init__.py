"""OME-Zarr input/output: the only layer that touches zarr and fsspec.

Two layers:

* :mod:`ngff_dreg.io.storage`: stores and the wrappers every read goes
  through (counting, chunk cache, missing-chunk guard, read-error naming,
  retries), composed in one place, :mod:`ngff_dreg.io.storage.stack`; URLs and
  their redaction (:mod:`ngff_dreg.io.storage.urls`);
* :mod:`ngff_dreg.io.omezarr`: OME-Zarr readers and writers built on it
  (multiscale images, the reader constructor, transforms, fields, output
  state, shards).

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
    "open_multiscale": "ngff_dreg.io.omezarr.multiscale",
    "MultiscaleImage": "ngff_dreg.io.omezarr.multiscale",
    "LevelInfo": "ngff_dreg.io.omezarr.multiscale",
    "OMEZarrReaderConstructor": "ngff_dreg.io.omezarr.reader",
    "OMEZarrReader": "ngff_dreg.io.omezarr.reader",
    "write_multiscale": "ngff_dreg.io.omezarr.image_writer",
    "to_dask": "ngff_dreg.io.omezarr.arrays",
    "to_xarray": "ngff_dreg.io.omezarr.arrays",
    "open_store": "ngff_dreg.io.storage.stores",
    "open_group": "ngff_dreg.io.storage.stores",
    "redact_url": "ngff_dreg.io.storage.urls",
    "redact_options": "ngff_dreg.io.storage.urls",
    "output_status": "ngff_dreg.io.omezarr.output_state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ngff_dreg.io' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
