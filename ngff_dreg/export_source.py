"""What ``export`` writes: a registration output's transform, or any RFC-5 scene's map.

:func:`export_chain` turns the ``output`` argument of
:func:`ngff_dreg.export.export_transform` into a :class:`TransformChain`:

* an ngff-dreg output (or a fixed image holding a registration): its chain,
  exact (affine + lazily read field);
* ``SCENE:SOURCE:TARGET``, or a scene holding one transform: the map between
  the two systems (:class:`~ngff_dreg.io.omezarr.scene_reader.SceneMap`). A
  linear map stays an affine; a non-linear one is sampled as the total
  displacement ``T(x) - x`` on a grid: the one given (an OME-Zarr image), or
  else the grid of the first field along the map
  (:func:`~ngff_dreg.ngff.scene_grid.first_field_grid`): exact at its nodes,
  and between them too when every other step is linear.

:func:`bigwarp_parts` gives what BigWarp's layout holds (an axis-aligned grid,
vectors, an optional affine).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import UnsupportedFormatError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain

__all__ = ["axis_aligned_cover", "bigwarp_parts", "export_chain", "sample_on_grid"]

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
_POINTS_PER_SLAB = 1 << 20


def sample_on_grid(mapper: Any, grid: ImageGeometry) -> TransformChain:
    """``mapper``'s total displacement on ``grid``, as an identity-affine chain.

    ``mapper.transform_points`` maps ITK-order points; sampled slab by slab
    along the first array axis, so only the field being built is held whole.
    """
    nd, shape = grid.ndim, grid.shape
    data = np.empty((nd, *shape))
    per_slab = max(1, _POINTS_PER_SLAB // max(1, int(np.prod(shape[1:]))))
    for a in range(0, shape[0], per_slab):
        b = min(shape[0], a + per_slab)
        axes = [np.arange(a, b), *(np.arange(n) for n in shape[1:])]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, nd)
        pts = grid.array_index_to_physical(idx.astype(np.float64))
        disp = np.asarray(mapper.transform_points(pts), dtype=np.float64) - pts
        data[:, a:b] = disp[:, ::-1].T.reshape((nd, b - a, *shape[1:]))
    return TransformChain(AffineTransform.identity(nd), DisplacementField(grid, data=data))


def axis_aligned_cover(grid: ImageGeometry) -> ImageGeometry:
    """An axis-aligned grid over the bounding box of an oblique ``grid``.

    Each axis's spacing is the length of the oblique grid's spacing vector
    projected on it (``sqrt(sum_j D_kj² s_j²)``), so the node density stays close.
    """
    if grid.is_axis_aligned:
        return grid
    d = grid.direction_matrix
    spacing = np.sqrt((d**2) @ np.asarray(grid.spacing) ** 2)
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in grid.shape], indexing="ij"),
                       axis=-1).reshape(-1, grid.ndim)
    pts = grid.array_index_to_physical(corners.astype(np.float64))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    shape_xyz = np.floor((hi - lo) / spacing + 1e-9).astype(int) + 1
    return ImageGeometry(tuple(int(n) for n in shape_xyz[::-1]),
                         tuple(float(s) for s in spacing), tuple(float(v) for v in lo),
                         unit=grid.unit)


def _grid(grid: str | ImageGeometry | None, level: int,
          storage_options: Mapping[str, Any] | None) -> ImageGeometry | None:
    if grid is None or isinstance(grid, ImageGeometry):
        return grid
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    image = open_multiscale(grid, storage_options)
    return image.levels[image.multiscale.level_index(level)].geometry


def _only_pair(url: str, storage_options: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(source, target)`` of another tool's scene's one scene-level transform, else ``None``.

    ``None`` also for ngff-dreg's own outputs: their reader's error stands.
    """
    from ngff_dreg.io.omezarr.output_state import MARKER_KEY
    from ngff_dreg.io.storage.stores import zarr_group
    from ngff_dreg.ngff.scene_graph import reference

    try:
        attrs = dict(zarr_group(url, storage_options, mode="r").attrs.asdict())
    except Exception:
        return None
    ome = attrs.get("ome")
    if MARKER_KEY in attrs:
        return None
    scene = ome.get("scene") if isinstance(ome, Mapping) else None
    items = scene.get("coordinateTransformations") if isinstance(scene, Mapping) else None
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], Mapping):
        return None
    keys = [reference(items[0].get(e), e) for e in ("input", "output")]
    src, tgt = (f"{p}/{n}" if p else n for p, n in keys)
    return src, tgt


def _source(output: str, storage_options: Mapping[str, Any] | None, inverse: bool) -> Any:
    """The ngff-dreg chain of ``output``, or a checked ``SceneMap``."""
    from ngff_dreg.io.omezarr.scene_reader import SceneMap, parse_scene_reference
    from ngff_dreg.io.omezarr.transform_reader import read_transform

    ref = parse_scene_reference(output)
    if ref is None:
        pair = _only_pair(output, storage_options)
        if pair is None:
            return read_transform(output, storage_options, inverse=inverse)
        ref = (output, *pair)
        logger.info("%s: another tool's scene; exporting its one transform, %s -> %s",
                    ref[0], ref[1], ref[2])
    scene = SceneMap(*ref, storage_options=storage_options)
    return (scene.inverse() if inverse else scene).check()


def export_chain(output: str, *, inverse: bool = False,
                 storage_options: Mapping[str, Any] | None = None,
                 grid: str | ImageGeometry | None = None, grid_level: int = 0,
                 need_field: bool = False) -> TransformChain:
    """The transform ``export`` writes, as a chain (see the module docstring).

    Parameters
    ----------
    output:
        An ngff-dreg output, a fixed image holding a registration,
        ``SCENE:SOURCE:TARGET``, or a scene holding one transform.
    inverse:
        The map the other way (target to source; moving to fixed).
    storage_options:
        fsspec options for ``output`` and ``grid``.
    grid, grid_level:
        Sample a field on this grid (an OME-Zarr image URL and its level, or a
        geometry): any non-linear scene map, and any transform when
        ``need_field``. Default: the field's own grid.
    need_field:
        The format is a dense field: a linear map is sampled on ``grid`` too.

    Raises
    ------
    UnsupportedFormatError
        A non-linear map with no grid given and none found along it.
    InvalidMetadataError, NonInvertibleTransformError, AxisMismatchError
        As the scene reader.

    """
    source = _source(output, storage_options, inverse)
    geom = _grid(grid, grid_level, storage_options)
    if isinstance(source, TransformChain):
        return sample_on_grid(source, geom) if geom is not None and need_field else source
    h = source.homogeneous()
    if h is not None and not (need_field and geom is not None):
        return TransformChain(AffineTransform.from_homogeneous(h))
    geom = geom or source.default_grid()
    if geom is None:
        raise UnsupportedFormatError(
            f"{output}: the map is not linear and no grid to sample it on was found along "
            "it (a non-linear step before its first field); give one (grid= / --grid IMAGE)")
    return sample_on_grid(source, geom)


def bigwarp_parts(chain: TransformChain
                  ) -> tuple[FloatArray, ImageGeometry, AffineTransform | None]:
    """``(vectors (Z, Y, X, n) x-first, axis-aligned grid, affine after or None)`` for BigWarp.

    A forward chain on an axis-aligned grid keeps its field and affine
    (``y = A(x + d(x))``, BigWarp's own order); otherwise the total
    displacement is sampled on the grid (or on an axis-aligned cover of an
    oblique one).
    """
    if chain.field is None:
        raise UnsupportedFormatError("a linear map has no field grid; give one "
                                     "(grid= / --grid IMAGE) to sample it on")
    geom = chain.field.geometry
    if not chain.affine_first and geom.is_axis_aligned:
        data = chain.field.read()
        affine = None if chain.affine.is_identity else chain.affine
    else:
        geom = axis_aligned_cover(geom)
        sampled = sample_on_grid(chain, geom)
        assert sampled.field is not None and sampled.field.data is not None
        data, affine = np.asarray(sampled.field.data, dtype=np.float64), None
    return np.moveaxis(data[::-1], 0, -1), geom, affine
