"""Write a transform as files other tools read: ITK (3D Slicer, ANTs), BigWarp (Fiji).

:func:`export_transform` reads the NGFF 0.6 transform of a registration output
(a scene written by :func:`ngff_dreg.register`, or a fixed image holding one),
or the map between two systems of any RFC-5 scene (``SCENE:SOURCE:TARGET``;
:mod:`ngff_dreg.export_source`), and writes it with
:func:`~ngff_dreg.io.omezarr.transform_reader.export_itk` or
:func:`~ngff_dreg.io.bigwarp.write_bigwarp_field`, after checking the
destination: the format follows the file's extension (or ``format``), the
file is local, and an existing file is replaced only when asked. The command
``ngff-dreg export`` is this function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ngff_dreg.errors import OutputExistsError, StoreAccessError, UnsupportedFormatError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.transform_reader import export_itk

__all__ = ["TRANSFORM_SUFFIXES", "FIELD_SUFFIXES", "FORMATS", "export_kind",
           "export_transform"]

#: ITK transform files: one composite transform (affine + displacement field).
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")
#: Images ITK writes: the total displacement ``T(x) - x`` as a vector image.
FIELD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

ExportKind = Literal["transform", "field", "bigwarp"]
#: Values of ``format``: ``auto`` (by the extension: ITK) or ``bigwarp``.
FORMATS = ("auto", "bigwarp")


def export_kind(path: str | os.PathLike[str], format: str | None = None) -> ExportKind:
    """``"transform"``, ``"field"`` or ``"bigwarp"``: what ``path`` and ``format`` ask for.

    Raises
    ------
    UnsupportedFormatError
        An unknown ``format``; with ``auto``, an extension that is neither an
        ITK transform file nor an image format; with ``bigwarp``, a path
        that does not end in ``.zarr``.

    """
    name = Path(path).name.lower()
    if format not in (None, *FORMATS):
        raise UnsupportedFormatError(f"unknown export format {format!r}; use one of {FORMATS}")
    if format == "bigwarp":
        if not name.endswith(".zarr"):
            raise UnsupportedFormatError(f"{path}: BigWarp's field is a Zarr container; "
                                         "give a path ending in .zarr")
        return "bigwarp"
    if name.endswith(TRANSFORM_SUFFIXES):
        return "transform"
    if name.endswith(FIELD_SUFFIXES):
        return "field"
    hint = "; for BigWarp give format='bigwarp' (--format bigwarp)" if name.endswith(
        ".zarr") else ""
    raise UnsupportedFormatError(
        f"{path}: unknown export format; use an ITK transform file "
        f"({', '.join(TRANSFORM_SUFFIXES)}) or a displacement field image "
        f"({', '.join(FIELD_SUFFIXES)}){hint}"
    )


def _destination(path: str | os.PathLike[str], overwrite: bool, kind: ExportKind) -> Path:
    text = os.fspath(path)
    if "://" in text:
        raise UnsupportedFormatError(f"{text}: export writes local files only; give a local "
                                     "path")
    dest = Path(text)
    if kind == "bigwarp":  # a directory; checked by the writer
        return dest
    if dest.is_dir():
        raise OutputExistsError(f"{dest}: is a directory; give a file name")
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest}: exists already (pass overwrite=True / --overwrite)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreAccessError(f"{dest.parent}: cannot create the folder: {exc}") from exc
    return dest


def export_transform(
    output: str,
    path: str | os.PathLike[str],
    *,
    inverse: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    format: str | None = None,
    grid: str | ImageGeometry | None = None,
    grid_level: int = 0,
) -> Path:
    """Export the transform of ``output`` to the file (or container) ``path``.

    Parameters
    ----------
    output:
        A registration output: the NGFF 0.6 scene written by
        :func:`ngff_dreg.register` (path, ``s3://`` or ``https://``), or a
        fixed image it was written into. Or ``SCENE:SOURCE:TARGET``: the map
        between two coordinate systems of any RFC-5 scene (e.g. one written by
        ngff-zarr), with points named ``x, y, z`` matched to the systems'
        spatial axes by name; a scene that is not ngff-dreg's own shape but
        holds one transform is read as that transform's two systems.
    path:
        Local destination. ``.h5``/``.hdf5``/``.tfm``/``.txt``: an ITK
        transform file holding one ``CompositeTransform`` (the affine and a
        ``DisplacementFieldTransform``), read by ``itk.transformread``, 3D
        Slicer and ANTs. ``.nii.gz``/``.nii``/``.nrrd``/``.nhdr``/``.mha``/
        ``.mhd``: the total displacement ``T(x) - x`` as a vector image on the
        field's grid (ITK's displacement-field convention, which ANTs reads).
        With ``format="bigwarp"``, a ``.zarr`` container BigWarp loads
        (:mod:`ngff_dreg.io.bigwarp`).
    inverse:
        Export the moving→fixed inverse (TARGET→SOURCE) instead of the
        fixed→moving forward map.
    storage_options:
        fsspec options for ``output`` and ``grid``.
    overwrite:
        Replace an existing file (or Zarr container).
    format:
        ``None``/``"auto"``: by the extension (ITK); ``"bigwarp"``.
    grid, grid_level:
        Where a field is sampled (an OME-Zarr image and its level, or a
        geometry), for a non-linear scene map or a field format; default: the
        field's own grid (for a scene map, that of its first field).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    UnsupportedFormatError
        Unknown extension or format, a remote destination, a field asked of a
        linear map without a ``grid``, or a non-linear scene map with no grid.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    StoreAccessError
        The file could not be written.

    """
    from ngff_dreg.export_source import export_chain

    kind = export_kind(path, format)
    dest = _destination(path, overwrite, kind)
    chain = export_chain(output, inverse=inverse, storage_options=storage_options, grid=grid,
                         grid_level=grid_level, need_field=kind != "transform")
    if kind != "transform" and chain.field is None:
        raise UnsupportedFormatError(
            f"{dest}: the transform is linear, with no displacement field to write as a "
            f"field; give a grid to sample it on (grid= / --grid IMAGE), or export it as "
            f"{' or '.join(TRANSFORM_SUFFIXES[:3])}"
        )
    try:
        if kind == "bigwarp":
            _write_bigwarp(chain, dest, overwrite)
        else:
            export_itk(chain, str(dest))
    except (RuntimeError, OSError) as exc:
        raise StoreAccessError(f"{dest}: could not write the {kind}: {exc}") from exc
    return dest


def _write_bigwarp(chain: Any, dest: Path, overwrite: bool) -> None:
    from ngff_dreg.export_source import bigwarp_parts
    from ngff_dreg.io.bigwarp import write_bigwarp_field

    vectors, grid, affine = bigwarp_parts(chain)
    write_bigwarp_field(dest, vectors, grid.spacing, grid.origin,
                        None if affine is None else affine.homogeneous, overwrite=overwrite)
