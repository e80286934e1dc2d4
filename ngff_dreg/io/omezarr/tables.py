"""Read and write point tables (CSV, Parquet) as dask DataFrames, partition by partition.

Local paths and fsspec URLs (``s3://``...) are both accepted. Nothing is read
until the DataFrame is computed, and a table is never gathered into one
process: CSV is split into ``blocksize`` byte ranges, Parquet by row group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ngff_dreg.errors import InvalidInputDataError, StoreAccessError, StoreNotFoundError
from ngff_dreg.io.storage.urls import redact_url

__all__ = ["read_table", "table_format", "write_table"]

_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(url: str) -> str:
    """``"csv"`` or ``"parquet"``, from the URL's suffix (``.csv[.gz]``, ``.tsv``, ``.parquet``).

    Raises
    ------
    InvalidInputDataError
        The suffix is none of those.

    """
    name = url.rstrip("/").lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        name = name.removesuffix(suffix)
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise InvalidInputDataError(
        f"{redact_url(url)}: unknown table format; name it .csv, .tsv or .parquet"
    )


def read_table(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None,
               *, blocksize: int = 64_000_000) -> Any:
    """A CSV or Parquet table as a lazy dask DataFrame.

    Parameters
    ----------
    url:
        Table file (or Parquet directory), local or fsspec URL.
    storage_options:
        fsspec options (never logged).
    blocksize:
        Bytes per CSV partition.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url``.
    StoreAccessError
        The table cannot be read.

    """
    import dask.dataframe as dd

    text = os.fspath(url)
    fmt = table_format(text)
    opts = dict(storage_options) if storage_options else None
    try:
        if fmt == "csv":
            sep = "\t" if text.lower().rstrip("/").split(".gz")[0].endswith(".tsv") else ","
            compressed = text.lower().endswith((".gz", ".bz2", ".zst", ".xz"))
            return dd.read_csv(text, sep=sep, blocksize=None if compressed else blocksize,
                               storage_options=opts)
        return dd.read_parquet(text, storage_options=opts)
    except FileNotFoundError as exc:
        raise StoreNotFoundError(f"{redact_url(text)}: no table at this location") from exc
    except (OSError, ValueError) as exc:
        raise StoreAccessError(f"{redact_url(text)}: cannot read the table: "
                               f"{type(exc).__name__}") from exc


def write_table(frame: Any, url: str | os.PathLike[str],
                storage_options: Mapping[str, Any] | None = None, *, compute: bool = True) -> Any:
    """Write a dask DataFrame as one CSV file or a Parquet dataset, partition by partition.

    A ``.csv`` output is one file (partitions appended in order); a
    ``.parquet`` output is a directory with one file per partition.
    """
    text = os.fspath(url)
    fmt = table_format(text)
    opts = dict(storage_options) if storage_options else None
    if fmt == "csv":
        sep = "\t" if ".tsv" in text.lower() else ","
        return frame.to_csv(text, single_file=True, index=False, sep=sep, storage_options=opts,
                            compute=compute)
    return frame.to_parquet(text, write_index=False, storage_options=opts, compute=compute)
