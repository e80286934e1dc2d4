"""Map tables of points (spots, cells) through a registration, partition by partition.

A table is a CSV/Parquet file, a pandas or a dask DataFrame whose columns
``x, y, z`` (or ``x, y``) hold physical points of the fixed image (in its
unit). :func:`transform_points` maps them fixed->moving (``inverse``:
moving->fixed) and carries every other column through unchanged, in order.
Files and dask DataFrames are mapped as dask DataFrames, one task per
partition, so no process ever holds the whole table; the transform travels
once (its fields are read lazily, box by box, where the points fall).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidInputDataError

__all__ = ["map_partition", "map_table", "transform_points", "transform_table_file"]

FloatArray = npt.NDArray[np.float64]
AXES = ("x", "y", "z")


def _resolved(transform: Any, storage_options: Mapping[str, Any] | None, inverse: bool
              ) -> tuple[Any, bool]:
    """``(transform, invert numerically)``: a URL read lazily, its stored inverse if asked."""
    from ngff_dreg.interfaces import RegistrationTransformResult

    if isinstance(transform, str | os.PathLike):
        from ngff_dreg.io.omezarr.transform_reader import read_transform

        url = os.fspath(transform)
        from ngff_dreg.io.omezarr.scene_reader import SceneMap, parse_scene_reference

        ref = parse_scene_reference(url)
        if ref is not None:  # SCENE:SOURCE:TARGET, any RFC-5 scene
            scene = SceneMap(*ref, storage_options=storage_options)
            return (scene.inverse() if inverse else scene).check(), False
        if inverse:
            try:
                return read_transform(url, storage_options, inverse=True), False
            except Exception:  # no bijection stored: invert the forward map point-wise
                pass
        return read_transform(url, storage_options), inverse
    if isinstance(transform, RegistrationTransformResult):
        if inverse and transform.inv_transform is not None:
            return transform.inv_transform, False
        return transform.transform, inverse
    return transform, inverse


def _columns(frame: Any, columns: Sequence[str] | None, where: str) -> tuple[str, ...]:
    names = [str(c) for c in frame.columns]
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise InvalidInputDataError(f"{where}: no column(s) {missing}; the table has {names}")
        return tuple(columns)
    if all(a in names for a in AXES):
        return AXES
    if all(a in names for a in AXES[:2]):
        return AXES[:2]
    raise InvalidInputDataError(
        f"{where}: needs columns x, y, z (or x, y) in physical units; the table has {names}"
    )


def map_partition(part: Any, transform: Any, columns: Sequence[str], invert: bool) -> Any:
    """One pandas partition with its point columns mapped (float64), other columns untouched."""
    from ngff_dreg.apply import _invert_points
    from ngff_dreg.transforms import map_points

    out = part.copy()
    if len(part) == 0:
        for c in columns:
            out[c] = out[c].astype(np.float64)
        return out
    pts = part[list(columns)].to_numpy(dtype=np.float64)
    mapped = _invert_points(transform, pts) if invert else map_points(transform, pts)
    for i, c in enumerate(columns):
        out[c] = mapped[:, i]
    return out


def map_table(transform: Any, table: Any, *, inverse: bool = False,
              columns: Sequence[str] | None = None,
              storage_options: Mapping[str, Any] | None = None, where: str = "table") -> Any:
    """Map a pandas or dask DataFrame's point columns (lazily for dask).

    Returns the same kind of frame, same columns in the same order.
    """
    import dask
    import dask.dataframe as dd
    import pandas as pd

    cols = _columns(table, columns, where)
    tx, invert = _resolved(transform, storage_options, inverse)
    ndim = getattr(tx, "ndim", None) or _itk_ndim(tx)
    if ndim is not None and ndim != len(cols):
        raise InvalidInputDataError(
            f"{where}: columns {list(cols)} are {len(cols)}-D but the transform is {ndim}-D"
        )
    if isinstance(table, pd.DataFrame):
        return map_partition(table, tx, cols, invert)
    if not isinstance(table, dd.DataFrame):
        raise InvalidInputDataError(f"{where}: expected a pandas or dask DataFrame")
    meta = table._meta.astype({c: np.float64 for c in cols})
    return table.map_partitions(map_partition, dask.delayed(tx, pure=True), cols, invert,
                                meta=meta)


def _itk_ndim(tx: Any) -> int | None:
    get = getattr(tx, "GetInputSpaceDimension", None)
    return int(get()) if callable(get) else None


def transform_table_file(transform: Any, points_url: str | os.PathLike[str],
                         output_url: str | os.PathLike[str], *, inverse: bool = False,
                         columns: Sequence[str] | None = None,
                         storage_options: Mapping[str, Any] | None = None,
                         table_storage_options: Mapping[str, Any] | None = None,
                         blocksize: int = 64_000_000, client: Any = None) -> int:
    """Map a CSV/Parquet point table into another file, one dask task per partition.

    Parameters
    ----------
    transform:
        NGFF scene URL (or a transform object).
    points_url, output_url:
        Input and output tables (``.csv``, ``.tsv``, ``.parquet``; local or fsspec).
    inverse:
        Map moving->fixed.
    columns:
        The point columns (default ``x, y, z`` or ``x, y``).
    storage_options, table_storage_options:
        fsspec options of the transform and of the tables (default: the same).
    blocksize:
        Bytes per CSV partition.
    client:
        A ``distributed.Client`` to compute on (default: the current scheduler).

    Returns
    -------
    int
        The number of partitions mapped.

    """
    import dask

    from ngff_dreg.io.omezarr.tables import read_table, table_format, write_table
    from ngff_dreg.io.storage.urls import redact_url

    t_opts = storage_options if table_storage_options is None else table_storage_options
    table_format(os.fspath(output_url))  # fail on a bad output name before reading anything
    frame = read_table(points_url, t_opts, blocksize=blocksize)
    mapped = map_table(transform, frame, inverse=inverse, columns=columns,
                       storage_options=storage_options, where=redact_url(os.fspath(points_url)))
    from ngff_dreg.cluster import share_settings

    share_settings(client)  # the workers read the transform with this process's settings
    ctx = dask.config.set(scheduler=client) if client is not None else dask.config.set({})
    with ctx:
        write_table(mapped, output_url, t_opts)
    return int(mapped.npartitions)


def transform_points(transform: Any, table: Any, inverse: bool = False, *,
                     storage_options: Mapping[str, Any] | None = None,
                     columns: Sequence[str] | None = None) -> Any:
    """Map points or a table of points fixed->moving (``inverse``: moving->fixed).

    Parameters
    ----------
    transform:
        An NGFF scene URL, a :class:`~ngff_dreg.transforms.TransformChain`, a
        :class:`~ngff_dreg.interfaces.RegistrationTransformResult` or an
        ``itk.Transform``.
    table:
        An ``(N, ndim)`` array of physical points (ITK order x, y, z), a
        pandas or dask DataFrame with columns ``x, y, z`` (or ``x, y``), or
        the path/URL of a CSV or Parquet table.
    inverse:
        Map moving->fixed (with the stored inverse when there is one).
    storage_options:
        fsspec options of the transform and of a table URL.
    columns:
        The point columns of a table (default ``x, y, z`` or ``x, y``).

    Returns
    -------
    numpy.ndarray, pandas.DataFrame or dask.dataframe.DataFrame
        The same kind as ``table`` (a dask DataFrame for a path), the point
        columns mapped and every other column unchanged, in order.

    Notes
    -----
    The older argument order ``transform_points(points_array, transform)`` is
    still accepted.

    """
    if isinstance(transform, np.ndarray | list | tuple):  # older order: (points, transform)
        transform, table = table, transform
    if isinstance(table, np.ndarray | list | tuple):
        from ngff_dreg.apply import transform_points as map_array

        return map_array(table, transform, inverse, storage_options=storage_options)
    if isinstance(table, str | os.PathLike):
        from ngff_dreg.io.omezarr.tables import read_table
        from ngff_dreg.io.storage.urls import redact_url

        where = redact_url(os.fspath(table))
        table = read_table(table, storage_options)
        return map_table(transform, table, inverse=inverse, columns=columns,
                         storage_options=storage_options, where=where)
    return map_table(transform, table, inverse=inverse, columns=columns,
                     storage_options=storage_options)
