"""BigWarp's displacement-field container, written as Zarr v2 with zarr.

BigWarp (Fiji) loads a transform given as a container path without an
attribute fragment (``field.zarr``, or ``field.zarr?dfield``) through
n5-imglib2's ``N5DisplacementField.open``; its N5 readers open a ``.zarr``
directory holding ``.zgroup``/``.zarray`` files as Zarr v2, and report a C-order
array's shape reversed, in imglib2's fastest-first order. So this layout:

* ``field.zarr/.zgroup``;
* ``field.zarr/dfield/.zarray``: shape ``(Z, Y, X, 3)`` (``(Y, X, 2)`` in 2D),
  C order, little-endian float32, gzip; imglib2 sees ``[3, X, Y, Z]``, the
  vector axis first, which ``N5DisplacementField`` accepts (first or last);
  every chunk is written, also all-zero ones (a missing block would be filled
  with a value of another type);
* ``field.zarr/dfield/.zattrs``: ``spacing`` and ``offset`` (x, y, z: the
  physical position of voxel ``(0, 0, 0)``), and optionally ``affine``, the
  row-packed ``3 x 4`` (``2 x 3``) matrix applied after the displacement.

The map it describes: ``y = affine(x + d(x))``, ``x`` in physical units,
``d`` interpolated linearly between the nodes and repeated past the border
(``EXTEND_BORDER``). The vector at ``[z, y, x, :]`` is ``(dx, dy, dz)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import OutputExistsError, UnsupportedFormatError

__all__ = ["FORWARD_DATASET", "write_bigwarp_field"]

#: The dataset ``N5DisplacementField`` opens by default.
FORWARD_DATASET = "dfield"
_COMPRESSOR: dict[str, Any] = {"id": "gzip", "level": 5}


def _is_zarr_container(path: Path) -> bool:
    return any((path / name).exists() for name in (".zgroup", "zarr.json", ".zarray"))


def _prepare(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() != ".zarr":
        raise UnsupportedFormatError(f"{path}: BigWarp's readers open a Zarr container by "
                                     "its name; give a path ending in .zarr")
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{path}: exists already (pass overwrite=True / --overwrite)")
    if not path.is_dir() or not _is_zarr_container(path):
        raise OutputExistsError(f"{path}: exists and is not a Zarr container; not replacing it")


def write_bigwarp_field(
    path: str | Path,
    vectors: npt.ArrayLike,
    spacing: Sequence[float],
    offset: Sequence[float],
    affine: npt.ArrayLike | None = None,
    *,
    chunk: int = 64,
    overwrite: bool = False,
) -> Path:
    """Write a displacement field in the layout BigWarp loads (see the module docstring).

    Parameters
    ----------
    path:
        Local ``.zarr`` directory to create.
    vectors:
        ``(Z, Y, X, 3)`` (or ``(Y, X, 2)``) displacements, components x, y(, z),
        physical units.
    spacing, offset:
        The grid, ITK order (x first): node ``(i, j, k)`` (x, y, z indices) is at
        ``offset + spacing * (i, j, k)``.
    affine:
        Optional ``(n, n+1)`` (or ``(n+1, n+1)``) ITK-order matrix applied after
        the displacement.
    chunk:
        Chunk edge along each spatial axis.
    overwrite:
        Replace an existing Zarr container at ``path``.

    Raises
    ------
    UnsupportedFormatError
        ``path`` does not end in ``.zarr``, or the field's shape does not fit.
    OutputExistsError
        ``path`` exists (and ``overwrite`` is false, or it is not a Zarr container).

    """
    import zarr

    dest = Path(path)
    data = np.ascontiguousarray(vectors, dtype="<f4")
    n = data.ndim - 1
    if n not in (2, 3) or data.shape[-1] != n or len(spacing) != n or len(offset) != n:
        raise UnsupportedFormatError(f"{dest}: a {n}D field needs shape (..., {n}) with "
                                     f"{n} spacings and offsets, got {data.shape}")
    _prepare(dest, overwrite)
    attrs: dict[str, Any] = {"spacing": [float(v) for v in spacing],
                             "offset": [float(v) for v in offset]}
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)[:n]
        attrs["affine"] = [float(v) for v in a.ravel()]
    root = zarr.open_group(str(dest), mode="w", zarr_format=2)
    arr = root.create_array(
        FORWARD_DATASET, shape=data.shape, dtype="<f4",
        chunks=(*(min(chunk, s) for s in data.shape[:-1]), n),
        compressors=_COMPRESSOR, fill_value=0.0, config={"write_empty_chunks": True})
    arr[...] = data
    arr.attrs.update(attrs)
    return dest
