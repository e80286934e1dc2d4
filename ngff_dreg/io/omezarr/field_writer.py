"""Write a fixed→moving transform as an OME-Zarr 0.6 (RFC-5) scene.

Layout written at ``url`` (a Zarr v3 group; local path or ``s3://``)::

    url/zarr.json                         attributes.ome = {version: "0.6", scene: {...}}
                                          attributes.ngff_dreg = {status: "complete", ...}
    url/coordinateTransformations/zarr.json
    url/coordinateTransformations/fixed_to_moving/   multiscale field (forward)
        zarr.json                         ome.multiscales[0].coordinateSystems = [{name, axes:
                                          [c (displacement, discrete), z, y, x (space)]}]
        s0, s1, ...                       float32 (ndim, *grid), dimension_names [c, z, y, x]
    url/coordinateTransformations/moving_to_fixed/   multiscale field (inverse), same layout

The scene holds one ``bijection`` from the fixed image's coordinate system to
the moving image's::

    forward = displacements                      (axis-aligned fixed, identity affine)
            | sequence[displacements, affine A]  (axis-aligned fixed)
            | sequence[affine Rᵀ, displacements, affine A·R]   (oblique fixed)
    inverse = sequence[affine A⁻¹, displacements⁻¹] (or the oblique analogue)

**Oblique fixed images.** The field grid always shares the fixed image's
direction ``R``. RFC-5 places a field's grid with a scale and translation only,
so the field is stored in the fixed image's *frame* ``q = Rᵀ x`` (where the
grid is axis-aligned), with its vectors expressed in that frame, and the
rotation is carried by the affines around it (``Rᵀ`` before the field, ``R``
folded into the affine after it). With ``R = I`` this collapses to the plain
forms above.

**Safe writes.** :class:`FieldSceneWriter` first marks the group
``ngff_dreg.status = "incomplete"`` (no ``ome`` key yet), writes field chunks,
builds the pyramids, and only then writes every multiscale's metadata and,
last, the scene's ``zarr.json`` with ``status = "complete"``. A reader refuses
an incomplete scene (:class:`~ngff_dreg.errors.IncompleteOutputError`); rerunning
the writer on it completes it without ``overwrite``. A complete output is only
replaced with ``overwrite=True`` (else :class:`~ngff_dreg.errors.OutputExistsError`).

The input images are not copied: ``input``/``output`` reference them by a
relative ``path`` below the scene and a coordinate-system ``name`` (as the spec
requires), and their actual URLs are recorded under ``attributes.ngff_dreg``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import OutputExistsError, StoreAccessError
from ngff_dreg.geometry import Box, ImageGeometry, one_per_axis
from ngff_dreg.io.omezarr.output_state import MARKER_KEY, marker, output_status, put_marker
from ngff_dreg.io.omezarr.shards import (
    ShardSpec,
    assemble,
    level_shards,
    requested_shards,
    resolve_shards,
    write_units,
)
from ngff_dreg.io.storage.chunk_cache import cache_enabled, shared_array
from ngff_dreg.io.storage.stores import zarr_array, zarr_group
from ngff_dreg.io.storage.urls import location_key, redact_url
from ngff_dreg.transforms import AffineTransform, TransformChain

__all__ = [
    "FORWARD_NAME",
    "INVERSE_NAME",
    "TRANSFORMS_GROUP",
    "FieldSceneWriter",
    "ZarrFieldLoader",
    "write_field_scene",
    "frame_of",
]

logger = logging.getLogger(__name__)

FORWARD_NAME = "fixed_to_moving"
INVERSE_NAME = "moving_to_fixed"
TRANSFORMS_GROUP = "coordinateTransformations"
FIELD_SYSTEM = "fixed_frame"
NGFF_VERSION = "0.6"
_SPATIAL_NAMES = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


# ---------------------------------------------------------------- stores
def _join(url: str, *parts: str) -> str:
    out = url.rstrip("/")
    for p in parts:
        if p:
            out = f"{out}/{p.strip('/')}"
    return out


def _open_group(url: str, storage_options: Mapping[str, Any] | None, mode: Any) -> Any:
    try:
        return zarr_group(url, storage_options, mode=mode, zarr_format=3)
    except FileNotFoundError:
        raise
    except (OSError, PermissionError) as exc:  # network, credentials
        raise StoreAccessError(f"cannot open Zarr group at {url}: {exc}") from exc


# ---------------------------------------------------------------- frames
@dataclass(frozen=True)
class FieldFrame:
    """How a world-space field grid is stored: axis-aligned in the frame ``q = Rᵀ x``.

    Attributes
    ----------
    rotation:
        ``R`` (ITK order), the grid's direction. Identity for axis-aligned grids.
    scale, translation:
        NGFF (z, y, x) scale and translation of level 0 in the frame.

    """

    rotation: npt.NDArray[np.float64]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @property
    def is_identity(self) -> bool:
        """True when the frame is the world (axis-aligned grid)."""
        return bool(np.allclose(self.rotation, np.eye(self.rotation.shape[0]), atol=1e-12))

    @property
    def rotation_zyx(self) -> npt.NDArray[np.float64]:
        """``R`` acting on z, y, x-ordered vectors."""
        return self.rotation[::-1, ::-1].copy()


def frame_of(geometry: ImageGeometry) -> FieldFrame:
    """The storage frame of a field grid (see the module docstring)."""
    r = geometry.direction_matrix
    if not np.allclose(r.T @ r, np.eye(geometry.ndim), atol=1e-6):
        raise ValueError(
            "a field grid direction must be orthonormal (a rotation or reflection); "
            f"got {r.tolist()}"
        )
    q_origin = r.T @ np.asarray(geometry.origin)
    return FieldFrame(r, tuple(geometry.spacing[::-1]), tuple(float(v) for v in q_origin[::-1]))


def _rotate_components(data: npt.NDArray[Any], rot_zyx: npt.NDArray[np.float64]) -> Any:
    """Apply a (z,y,x) matrix to the component axis of an NGFF-layout block."""
    return np.tensordot(rot_zyx, data, axes=([1], [0]))


@dataclass(frozen=True)
class ZarrFieldLoader:
    """Picklable ``loader(box)`` reading a field block from a Zarr array.

    The stored vectors are in the field frame; ``rotation_zyx`` (``R`` on z,y,x
    vectors) turns them into world vectors. ``storage_options`` are excluded
    from ``repr`` so credentials never reach a log.
    """

    url: str
    array_path: str
    rotation_zyx: tuple[tuple[float, ...], ...] | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    cache: str | None = field(default_factory=lambda: uuid.uuid4().hex, repr=False,
                              compare=False)

    def _array(self) -> Any:
        # A loader is made once the field is (being) written, and every copy of it
        # (one per task) shares its cache token: each process opens the array
        # once and fetches a chunk once, however many blocks read it. A chunk is
        # only read after it was written (the reduction waits for it), so the
        # cache never holds a stale chunk. ``cache=None`` reads the store each time.
        if self.cache is None or not cache_enabled():
            return zarr_array(self.url, self.array_path, self.storage_options, mode="r")
        return shared_array(
            (self.cache, location_key(self.url), "field", self.array_path),
            lambda: zarr_array(self.url, self.array_path, self.storage_options, mode="r",
                               cache=self.cache),
        )

    def __call__(self, box: Box) -> npt.NDArray[np.float64]:
        """Field values over ``box`` (NGFF layout, world components)."""
        arr = self._array()
        data = np.asarray(arr[(slice(None), *box.slices)], dtype=np.float64)
        if self.rotation_zyx is not None:
            data = _rotate_components(data, np.asarray(self.rotation_zyx))
        return data


# ---------------------------------------------------------------- metadata
def _axes(ndim: int, unit: str | None) -> list[dict[str, Any]]:
    axes: list[dict[str, Any]] = [{"name": "c", "type": "displacement", "discrete": True}]
    for name in _SPATIAL_NAMES[ndim]:
        ax: dict[str, Any] = {"name": name, "type": "space"}
        if unit:
            ax["unit"] = unit
        axes.append(ax)
    return axes


def _field_multiscale(name: str, frame: FieldFrame, levels: Sequence[str],
                      unit: str | None,
                      factors: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    ndim = len(frame.scale)
    cumulative = factors or [(2**k,) * ndim for k in range(len(levels))]
    datasets = []
    for path, fk in zip(levels, cumulative):
        scale = [float(s * f) for s, f in zip(frame.scale, fk)]
        trans = [float(t + (s * f - s) / 2.0)
                 for t, s, f in zip(frame.translation, frame.scale, fk)]
        datasets.append({
            "path": path,
            "coordinateTransformations": [{
                "type": "sequence",
                "transformations": [
                    {"type": "scale", "scale": [1.0, *scale]},
                    {"type": "translation", "translation": [0.0, *trans]},
                ],
                "input": {"path": path},
                "output": {"name": FIELD_SYSTEM},
            }],
        })
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "type": "mean",
            "metadata": {
                "description": "displacement field written by ngff-dreg; levels are block "
                               "means by the fixed image's pyramid factors",
                "method": "ngff_dreg.io.omezarr.field_writer",
            },
            "coordinateSystems": [{"name": FIELD_SYSTEM, "axes": _axes(ndim, unit)}],
            "datasets": datasets,
        }],
    }


def _ngff_affine(affine: AffineTransform) -> dict[str, Any]:
    """RFC-5 ``affine`` (z,y,x order, ``N x (N+1)`` rows) for an ITK-order affine."""
    a = affine.A[::-1, ::-1]
    t = affine.t[::-1]
    rows = [[float(v) for v in a[i]] + [float(t[i])] for i in range(affine.ndim)]
    return {"type": "affine", "affine": rows}


def _linear(matrix: npt.NDArray[np.float64]) -> AffineTransform:
    return AffineTransform.from_arrays(matrix, np.zeros(matrix.shape[0]))


def _seq(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if len(items) == 1 else {"type": "sequence", "transformations": items}


def scene_transform(affine: AffineTransform, forward_frame: FieldFrame,
                    inverse_frame: FieldFrame | None, *, interpolation: str = "linear"
                    ) -> dict[str, Any]:
    """The RFC-5 transform (bijection or displacements) for ``affine ∘ (id + D)``."""
    def disp(name: str) -> dict[str, Any]:
        return {"type": "displacements", "path": f"{TRANSFORMS_GROUP}/{name}",
                "interpolation": interpolation}

    r = forward_frame.rotation
    fwd: list[dict[str, Any]] = []
    if not forward_frame.is_identity:
        fwd.append(_ngff_affine(_linear(r.T)))
    fwd.append(disp(FORWARD_NAME))
    post = _linear(r).then(affine)
    if not post.is_identity:
        fwd.append(_ngff_affine(post))
    if inverse_frame is None:
        return _seq(fwd)
    ri = inverse_frame.rotation
    inv: list[dict[str, Any]] = []
    pre = affine.inverse().then(_linear(ri.T))
    if not pre.is_identity:
        inv.append(_ngff_affine(pre))
    inv.append(disp(INVERSE_NAME))
    if not inverse_frame.is_identity:
        inv.append(_ngff_affine(_linear(ri)))
    return {"type": "bijection", "forward": _seq(fwd), "inverse": _seq(inv)}


# ---------------------------------------------------------------- writer
@dataclass
class FieldSceneWriter:
    """Writes forward/inverse fields chunk by chunk, then the scene metadata.

    Picklable: every method reopens the store, so chunk tasks on any worker
    can call :meth:`write_chunk`. Call order: :meth:`begin` (once), any number
    of :meth:`write_chunk` (each chunk once, from any process), :meth:`finish`
    (once, last).

    Parameters
    ----------
    url:
        Scene group URL (local path or fsspec URL such as ``s3://bucket/x.zarr``).
    storage_options:
        fsspec options (credentials, endpoint); never logged.
    overwrite:
        Replace a complete existing output. An incomplete ngff-dreg output is
        always resumed.
    fixed_path, moving_path:
        Relative paths of the fixed and moving image groups *below the scene*,
        for a scene written as the parent of its images. By default (``None``)
        the images live elsewhere, so the scene declares their spaces as its
        own ``coordinateSystems`` and ``input``/``output`` name them without a
        ``path`` (as RFC-5 allows): nothing points at a group that is not there.
    fixed_system, moving_system:
        Coordinate-system names: in the images (with a path) or in the scene.
    fixed_url, moving_url:
        Actual locations of the images, recorded under ``attributes.ngff_dreg``.
    downsample_factors:
        Per-level factors of the field pyramids (NumPy order, each over the
        level before), normally the fixed image's
        (:func:`~ngff_dreg.io.omezarr.image_writer.pyramid_factors`); ``None``: 2x.
    shards:
        Store every field array (all pyramid levels) and the Jacobian map
        sharded (Zarr ``sharding_indexed``): the spatial shard shape in NumPy
        order, one edge, or ``"auto"`` (4 chunks per axis); each edge a whole
        number of chunks (or spanning its axis), capped by each array.
        ``None`` (default): one object per chunk. Sharded arrays must be
        written one whole shard at a time (:meth:`write_chunks`, one task per
        shard, see :meth:`shard_shape`): a shard is one object, so two writers
        of one shard would race.
    cache_token:
        Chunk-cache token of the loaders this writer hands out (:meth:`loader`):
        every loader of the same field shares it, so a process fetches a field
        chunk once whether the inverse, the next stage or the resample reads
        it. :meth:`begin` draws a new one (the arrays are rewritten).

    """

    forward_name: ClassVar[str] = FORWARD_NAME
    inverse_name: ClassVar[str] = INVERSE_NAME

    url: str
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    overwrite: bool = False
    fixed_path: str | None = None
    moving_path: str | None = None
    fixed_system: str = "fixed"
    moving_system: str = "moving"
    fixed_url: str | None = None
    moving_url: str | None = None
    downsample_factors: tuple[tuple[int, ...], ...] | None = None
    shards: ShardSpec = None
    cache_token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False,
                             compare=False)

    def _group(self, mode: str = "a") -> Any:
        return _open_group(self.url, self.storage_options, mode)

    def shard_shape(self, shape: Sequence[int], chunks: Sequence[int] | int
                    ) -> tuple[int, ...] | None:
        """Spatial shard shape of a field array of ``shape`` and ``chunks`` (``None``: unsharded).

        A caller writing into the field groups its chunks by this
        (:func:`~ngff_dreg.io.omezarr.shards.write_units`) and writes each group with
        one :meth:`write_chunks` call. Raises
        :class:`~ngff_dreg.errors.InvalidInputDataError` for a shard request
        that is not whole chunks.
        """
        ch = tuple(int(c) for c in one_per_axis(chunks, len(shape), "chunks"))
        return resolve_shards(self.shards, ch, shape, where=redact_url(self.url))

    def begin(self, geometries: Mapping[str, ImageGeometry], *,
              chunks: Sequence[int] | int = 64, dtype: str = "float32") -> None:
        """Create (or reset) the output and the level-0 field arrays.

        Parameters
        ----------
        geometries:
            Field grid per field name (:data:`FORWARD_NAME`, :data:`INVERSE_NAME`).
        chunks:
            Spatial chunk shape (the component axis is one chunk).
        dtype:
            Stored dtype.

        Raises
        ------
        OutputExistsError
            If a complete output or foreign content exists and ``overwrite`` is False.

        """
        status = output_status(self.url, self.storage_options)
        if status in ("complete", "foreign") and not self.overwrite:
            what = "a complete ngff-dreg output" if status == "complete" else "Zarr data"
            raise OutputExistsError(
                f"{redact_url(self.url)} already holds {what}; pass overwrite=True to replace it"
            )
        logger.info("writing transform scene to %s (previous state: %s)", redact_url(self.url),
                    status)
        root = zarr_group(self.url, self.storage_options,
                          mode="a" if status == "incomplete" else "w", zarr_format=3)
        # The marker goes first: from here on the output reads as incomplete.
        put_marker(root, "incomplete")
        self.cache_token = uuid.uuid4().hex  # loaders of the old arrays must not share it
        tgroup = root.require_group(TRANSFORMS_GROUP)
        for name, geom in geometries.items():
            frame_of(geom)  # validates the direction
            fgroup = tgroup.require_group(name)
            put_marker(fgroup, "incomplete", versioned=False)
            ch = tuple(int(c) for c in one_per_axis(chunks, geom.ndim, "chunks"))
            sh = self.shard_shape(geom.shape, ch)
            fgroup.create_array(
                "s0", shape=(geom.ndim, *geom.shape), chunks=(geom.ndim, *ch),
                shards=None if sh is None else (geom.ndim, *sh),
                dtype=dtype, fill_value=0.0, overwrite=True,
                dimension_names=["c", *_SPATIAL_NAMES[geom.ndim]],
            )
        self._geometries = dict(geometries)

    def array_url(self, name: str, level: int = 0) -> tuple[str, str]:
        """``(store url, array path)`` of one field level."""
        return self.url, f"{TRANSFORMS_GROUP}/{name}/s{level}"

    def loader(self, name: str, geometry: ImageGeometry) -> ZarrFieldLoader:
        """A loader returning world-space vectors of field ``name`` at level 0."""
        frame = frame_of(geometry)
        rot = None if frame.is_identity else tuple(map(tuple, frame.rotation_zyx))
        return ZarrFieldLoader(self.url, f"{TRANSFORMS_GROUP}/{name}/s0", rot,
                               self.storage_options, cache=self.cache_token)

    def write_chunk(self, name: str, geometry: ImageGeometry, box: Box,
                    data: npt.NDArray[Any]) -> None:
        """Write one block of world-space vectors (NGFF layout) of field ``name``.

        On a sharded field ``box`` must be a whole shard (or use :meth:`write_chunks`).
        """
        self.write_chunks(name, geometry, box, [(box, data)])

    def write_chunks(self, name: str, geometry: ImageGeometry, box: Box,
                     parts: Iterable[tuple[Box, npt.NDArray[Any]]]) -> None:
        """Write the ``(chunk, vectors)`` parts tiling ``box`` (a shard) with one store write.

        ``parts`` may be a generator: each part is rotated into the field frame
        and cast to the stored dtype as it comes, so memory is one ``box`` of
        the stored dtype plus one part.
        """
        frame = frame_of(geometry)
        rot = None if frame.is_identity else frame.rotation_zyx.T
        arr = zarr_array(self.url, f"{TRANSFORMS_GROUP}/{name}/s0", self.storage_options,
                         mode="r+")
        stored = ((chunk, data if rot is None else _rotate_components(data, rot))
                  for chunk, data in parts)
        arr[(slice(None), *box.slices)] = assemble(box, stored, arr.dtype, (geometry.ndim,))

    def create_quality_array(self, name: str, shape: Sequence[int], chunks: Sequence[int],
                             dtype: str = "float32") -> None:
        """Create ``quality/<name>`` (a plain array, e.g. a Jacobian-determinant map)."""
        root = self._group("a")
        qgroup = root.require_group("quality")
        ch = tuple(max(1, int(c)) for c in chunks)
        qgroup.create_array(name, shape=tuple(shape), chunks=ch,
                            shards=self.shard_shape(tuple(shape), ch),
                            dtype=dtype, fill_value=0, overwrite=True)

    def write_quality_chunk(self, name: str, box: Box, data: npt.NDArray[Any]) -> None:
        """Write one block of the quality array ``quality/<name>`` (a whole shard if sharded)."""
        self.write_quality_chunks(name, box, [(box, data)])

    def write_quality_chunks(self, name: str, box: Box,
                             parts: Iterable[tuple[Box, npt.NDArray[Any]]]) -> None:
        """Write the ``(chunk, data)`` parts tiling ``box`` of ``quality/<name>`` at once."""
        arr = zarr_array(self.url, f"quality/{name}", self.storage_options, mode="r+")
        arr[box.slices] = assemble(box, parts, arr.dtype)

    def finish(self, affine: AffineTransform, geometries: Mapping[str, ImageGeometry], *,
               n_levels: int | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Build the pyramids, then write all metadata; the scene ``zarr.json`` last."""
        root = zarr_group(self.url, self.storage_options, mode="r+")
        frames = {name: frame_of(g) for name, g in geometries.items()}
        for name, geom in geometries.items():
            src: Any = root[f"{TRANSFORMS_GROUP}/{name}/s0"]
            levels, cumulative = _build_pyramid(
                root, f"{TRANSFORMS_GROUP}/{name}", geom.ndim, n_levels,
                self.downsample_factors,
                requested_shards(self.shards, src.chunks[1:], where=redact_url(self.url)))
            fgroup = root[f"{TRANSFORMS_GROUP}/{name}"]
            fgroup.attrs.put({"ome": _field_multiscale(name, frames[name], levels, geom.unit,
                                                       cumulative)})
        root[TRANSFORMS_GROUP].attrs.put({})
        transform = scene_transform(affine, frames[FORWARD_NAME], frames.get(INVERSE_NAME))
        fixed_geom = geometries[FORWARD_NAME]
        systems = []
        for key, path, system in (("input", self.fixed_path, self.fixed_system),
                                  ("output", self.moving_path, self.moving_system)):
            if path is None:
                transform[key] = {"name": system}
                systems.append({"name": system,
                                "axes": _axes(fixed_geom.ndim, fixed_geom.unit)[1:]})
            else:
                transform[key] = {"path": path, "name": system}
        own = marker("complete", images={"fixed": _redacted(self.fixed_url),
                                         "moving": _redacted(self.moving_url)}, **(extra or {}))
        scene: dict[str, Any] = {"coordinateTransformations": [transform]}
        if systems:
            scene["coordinateSystems"] = systems
        root.attrs.put({"ome": {"version": NGFF_VERSION, "scene": scene}, MARKER_KEY: own})
        logger.info("transform scene complete at %s", redact_url(self.url))


def _redacted(url: str | None) -> str | None:
    """An image URL as recorded in the output: absolute if local, never with credentials."""
    from ngff_dreg.io.omezarr.view_writer import recorded_location

    return recorded_location(url)


def _level_step(k: int, ndim: int, factors: Sequence[Sequence[int]] | None) -> tuple[int, ...]:
    """Factor of level ``k`` over level ``k - 1``.

    The fixed pyramid's, its last one past its depth, or 2 along every axis
    without one.
    """
    if not factors:
        return (2,) * ndim
    return tuple(int(f) for f in factors[min(k, len(factors)) - 1])


def _build_pyramid(root: Any, path: str, ndim: int, n_levels: int | None,
                   factors: Sequence[Sequence[int]] | None = None,
                   shards: tuple[int, ...] | None = None,
                   ) -> tuple[list[str], list[tuple[int, ...]]]:
    """Write block-averaged levels s1.. one output chunk (or shard) at a time.

    Level ``k`` averages ``_level_step(k)`` nodes of level ``k - 1`` per axis
    (the fixed image's per-axis factors, so an anisotropic field does not get
    more anisotropic). Returns the level names and their cumulative factors.
    Each output chunk reads only the finer nodes it averages, so memory stays
    at a few chunks whatever the field size. With ``shards`` (a spatial shard
    request, capped per level) each level is sharded and written one whole
    shard per store write, its chunks averaged one by one as without shards.
    """
    src = root[f"{path}/s0"]
    levels = ["s0"]
    cumulative = [(1,) * ndim]
    max_levels = n_levels if n_levels is not None else 6
    k = 0
    while len(levels) < max_levels:
        step = _level_step(k + 1, ndim, factors)
        shape = tuple(int(n) for n in src.shape[1:])
        out_shape = tuple(n // f for n, f in zip(shape, step))
        smallest = min(o for o, f in zip(out_shape, step) if f > 1) if max(step) > 1 else 0
        if (n_levels is None and smallest < 2) or smallest < 1:
            break
        k += 1
        chunks = tuple(min(int(c), n) for c, n in zip(src.chunks[1:], out_shape))
        level_sh = None if shards is None else level_shards(shards, chunks, out_shape)
        dst = root.create_array(
            f"{path}/s{k}", shape=(src.shape[0], *out_shape), chunks=(src.shape[0], *chunks),
            shards=None if level_sh is None else (src.shape[0], *level_sh),
            dtype=src.dtype, fill_value=0.0, overwrite=True,
            dimension_names=list(src.metadata.dimension_names),
        )
        for unit in write_units(out_shape, chunks, level_sh):
            parts = ((box, _block_mean(src, box, step)) for box in unit.chunks)
            dst[(slice(None), *unit.box.slices)] = assemble(unit.box, parts, dst.dtype,
                                                            (src.shape[0],))
        levels.append(f"s{k}")
        cumulative.append(tuple(a * f for a, f in zip(cumulative[-1], step)))
        src = dst
    return levels, cumulative


def _block_mean(src: Any, box: Box, step: Sequence[int]) -> npt.NDArray[np.float64]:
    """Mean of ``src``'s nodes over ``box`` of the level ``step`` times coarser."""
    fine = Box(tuple(f * a for a, f in zip(box.start, step)),
               tuple(f * b for b, f in zip(box.stop, step)))
    data = np.asarray(src[(slice(None), *fine.slices)], dtype=np.float64)
    shp = [data.shape[0]]
    for n, f in zip(box.shape, step):
        shp += [n, f]
    mean: npt.NDArray[np.float64] = data.reshape(shp).mean(
        axis=tuple(range(2, 2 + 2 * box.ndim, 2)))
    return mean


def write_field_scene(
    url: str,
    transform: TransformChain,
    inverse: TransformChain | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | int = 64,
    n_levels: int | None = None,
    fixed_path: str | None = None,
    moving_path: str | None = None,
    fixed_url: str | None = None,
    moving_url: str | None = None,
    shards: ShardSpec = None,
) -> None:
    """Write a forward (and inverse) :class:`TransformChain` as an NGFF 0.6 scene.

    Parameters
    ----------
    url:
        Output group URL.
    transform:
        Forward chain ``affine(x + field(x))`` (``affine_first=False``) with a field.
    inverse:
        Optional inverse chain ``y ↦ A⁻¹y + U(A⁻¹y)`` (``affine_first=True``),
        its affine the inverse of ``transform.affine``.
    storage_options, overwrite, chunks, n_levels:
        See :class:`FieldSceneWriter`.
    fixed_path, moving_path, fixed_url, moving_url:
        Image references (see :class:`FieldSceneWriter`).
    shards:
        Sharded field arrays (see :class:`FieldSceneWriter`), written one
        whole shard at a time.

    Examples
    --------
    >>> write_field_scene("out.zarr", chain, inverse_chain)  # doctest: +SKIP

    """
    if transform.field is None or transform.affine_first:
        raise ValueError("the forward transform must be a forward TransformChain with a field")
    geoms = {FORWARD_NAME: transform.field.geometry}
    if inverse is not None:
        if inverse.field is None or not inverse.affine_first:
            raise ValueError("the inverse must be an affine-first TransformChain with a field")
        if not np.allclose(inverse.affine.homogeneous, transform.affine.inverse().homogeneous,
                           atol=1e-6):
            raise ValueError("the inverse's affine is not the inverse of the forward affine")
        geoms[INVERSE_NAME] = inverse.field.geometry
    writer = FieldSceneWriter(url, storage_options, overwrite, fixed_path, moving_path,
                              fixed_url=fixed_url, moving_url=moving_url, shards=shards)
    fields = {FORWARD_NAME: transform.field}
    if inverse is not None and inverse.field is not None:
        fields[INVERSE_NAME] = inverse.field
    units = {}
    for name, fld in fields.items():  # shard requests checked before anything is written
        ch = tuple(int(c) for c in one_per_axis(chunks, fld.ndim, "chunks"))
        shape = fld.geometry.shape
        units[name] = write_units(shape, ch, writer.shard_shape(shape, ch))
    writer.begin(geoms, chunks=chunks)
    for name, fld in fields.items():
        for unit in units[name]:
            writer.write_chunks(name, fld.geometry, unit.box,
                                ((c, fld.read(c)) for c in unit.chunks))
    writer.finish(transform.affine, geoms, n_levels=n_levels)
