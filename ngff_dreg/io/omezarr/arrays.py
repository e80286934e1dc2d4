"""A pyramid level as a lazy ``dask.array`` or a labelled ``xarray.DataArray``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.storage.urls import redact_url

__all__ = ["to_dask", "to_xarray"]

logger = logging.getLogger(__name__)


def to_dask(
    url: str | os.PathLike[str],
    level: int | str = 0,
    storage_options: Mapping[str, Any] | None = None,
    *,
    chunks: Any = None,
) -> Any:
    """A level as a lazy ``dask.array`` (all axes, storage chunking by default).

    Parameters
    ----------
    url:
        Multiscale group URL.
    level:
        Level index or path.
    storage_options:
        fsspec options for remote URLs.
    chunks:
        Dask chunking; the storage chunks when ``None``.

    Returns
    -------
    dask.array.Array
        Nothing is read until it is computed.

    """
    import dask.array as da

    image = open_multiscale(url, storage_options)
    arr = image.open_array(level)
    return da.from_array(arr, chunks=chunks or arr.chunks, asarray=True, fancy=False)


def to_xarray(
    url: str | os.PathLike[str],
    level: int | str = 0,
    storage_options: Mapping[str, Any] | None = None,
    *,
    unit: str | None = None,
    chunks: Any = None,
) -> Any:
    """A level as an ``xarray.DataArray`` with physical coordinates.

    Dimensions are the NGFF axis names. Spatial coordinates are voxel-centre
    positions ``translation + scale * index`` along each axis (in ``unit``
    if given); time/channel axes get their scale/translation coordinates too.
    When the image has a non-identity direction the 1-D coordinates describe
    the intrinsic (unrotated) grid and the direction is in ``attrs``.

    Returns
    -------
    xarray.DataArray
        Backed by a lazy dask array.

    """
    import dask.array as da
    import xarray as xr

    image = open_multiscale(url, storage_options, unit=unit)
    info = image.level(level)
    ms = image.multiscale
    lv = ms.levels[info.index]
    arr = image.open_array(info.index)
    data = da.from_array(arr, chunks=chunks or arr.chunks, asarray=True, fancy=False)
    g = info.geometry
    coords: dict[str, Any] = {}
    for i, axis in enumerate(ms.axes):
        n = info.shape[i]
        if axis.is_spatial:
            values = lv.translation[i] + lv.scale[i] * np.arange(n)
            if not g.is_axis_aligned:
                values = lv.scale[i] * np.arange(n)
            coords[axis.name] = xr.Variable(axis.name, values, attrs={"units": axis.unit or ""})
        elif axis.type == "channel":
            coords[axis.name] = np.arange(n)
        else:
            coords[axis.name] = xr.Variable(
                axis.name, lv.translation[i] + lv.scale[i] * np.arange(n),
                attrs={"units": axis.unit or ""},
            )
    if not g.is_axis_aligned:
        logger.info("%s: oblique direction; xarray coordinates are intrinsic", redact_url(url))
    attrs = {
        "url": redact_url(os.fspath(url)),
        "level": info.path,
        "ngff_version": ms.version,
        "spacing": g.spacing,
        "origin": g.origin,
        "direction": g.direction,
        "unit": g.unit or "",
    }
    return xr.DataArray(
        data, dims=[a.name for a in ms.axes], coords=coords, attrs=attrs, name=ms.name or "image"
    )
