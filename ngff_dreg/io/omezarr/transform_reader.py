"""Read an NGFF 0.6 (RFC-5) transform scene back into a lazy :class:`TransformChain`.

Reads what :mod:`ngff_dreg.io.omezarr.field_writer` writes, and the common RFC-5 forms
around one displacement field: ``displacements`` alone, or a ``sequence`` of
linear transforms (identity, scale, translation, affine, rotation, nested
sequences) with exactly one ``displacements`` in it, optionally inside a
``bijection``. The field is never loaded whole: the chain's
:class:`DisplacementField` reads the boxes it needs through a picklable
:class:`~ngff_dreg.io.omezarr.field_writer.ZarrFieldLoader`.

Also converts to ITK (``itk.CompositeTransform``) and exports for
Slicer/ANTs (``.h5``/``.tfm`` transform files, or a dense total displacement
image such as ``.nrrd``/``.nii.gz``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import ZarrFieldLoader
from ngff_dreg.io.omezarr.output_state import require_complete
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import redact_url
from ngff_dreg.ngff.metadata import check_relative_path
from ngff_dreg.ngff.transforms import (
    flatten,
    ref_name,
    reverse_axes,
    scale_translation,
    split_at_field,
)
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain

__all__ = ["read_transform", "read_scene_attributes", "to_itk_transform", "export_itk"]

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]


def _image_transform(attrs: Mapping[str, Any], url: str, coordinate_system: str | None
                     ) -> dict[str, Any]:
    """The registration stored inside an image (``multiscales > coordinateTransformations``).

    The returned bijection starts at the image's *physical* points (what ITK
    sees), not its intrinsic system: the intrinsic→physical step is undone
    in front of the forward transform and redone after the inverse.
    """
    from ngff_dreg.ngff.metadata import image_registrations, parse_multiscale

    safe = redact_url(url)
    ms = parse_multiscale(attrs, url=safe)
    found = image_registrations(attrs)
    if not found:
        raise InvalidMetadataError(f"{safe}: the image holds no registration "
                                   "(no displacements in multiscales coordinateTransformations)")
    if coordinate_system is None:
        if len(found) > 1:
            raise InvalidMetadataError(f"{safe}: the image holds registrations to "
                                       f"{sorted(found)}; choose one with coordinate_system=")
        coordinate_system = next(iter(found))
    if coordinate_system not in found:
        raise InvalidMetadataError(f"{safe}: no registration to coordinate system "
                                   f"{coordinate_system!r}; found {sorted(found)}")
    t = found[coordinate_system]
    if ref_name(t.get("input"))[0] != ms.intrinsic_system:
        raise InvalidMetadataError(f"{safe}: the registration to {coordinate_system!r} does "
                                   "not start at the intrinsic coordinate system")
    world = np.asarray(ms.world_from_intrinsic, dtype=float)
    if t.get("type") != "bijection":
        t = {"type": "bijection", "forward": t}
    out: dict[str, Any] = {"type": "bijection"}
    if np.allclose(world, np.eye(world.shape[0]), atol=1e-12):
        out.update(forward=t["forward"], inverse=t.get("inverse"))
    else:
        n = world.shape[0] - 1
        to_intrinsic = np.linalg.inv(world)
        out["forward"] = {"type": "sequence", "transformations": [
            {"type": "affine", "affine": to_intrinsic[:n].tolist()}, t["forward"]]}
        if t.get("inverse") is not None:
            out["inverse"] = {"type": "sequence", "transformations": [
                t["inverse"], {"type": "affine", "affine": world[:n].tolist()}]}
    if out.get("inverse") is None:
        out.pop("inverse", None)
        out = out["forward"]
    return out


def read_scene_attributes(url: str, storage_options: Mapping[str, Any] | None = None
                          ) -> dict[str, Any]:
    """The scene group's attributes, refusing an incomplete ngff-dreg output.

    Raises
    ------
    IncompleteOutputError
        The scene was left incomplete by an interrupted write.
    InvalidMetadataError
        No ``ome.scene`` is present.

    """
    group = zarr_group(url, storage_options, mode="r")
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    require_complete(attrs, url)
    scene = attrs.get("ome", {}).get("scene")
    if not isinstance(scene, dict) or not scene.get("coordinateTransformations"):
        raise InvalidMetadataError(f"{redact_url(url)}: no ome.scene.coordinateTransformations")
    return attrs


# ------------------------------------------------------------ linear parts
def _to_itk_affine(h_zyx: FloatArray) -> AffineTransform:
    """The ITK-order affine of a homogeneous NumPy-order (z, y, x) matrix."""
    return AffineTransform.from_homogeneous(reverse_axes(h_zyx))


def _is_orthonormal(a: AffineTransform) -> bool:
    return bool(np.allclose(a.A.T @ a.A, np.eye(a.ndim), atol=1e-6))


# ------------------------------------------------------------ field groups
def _field_grid(url: str, path: str, storage_options: Mapping[str, Any] | None
                ) -> tuple[int, FloatArray, FloatArray, tuple[int, ...], str | None]:
    """(ndim, scale zyx, translation zyx, shape, unit) of level 0 of a field group."""
    group = zarr_group(url, storage_options, mode="r", path=path)
    ome: Any = dict(group.attrs.asdict()).get("ome", {})
    try:
        ms = ome["multiscales"][0]
        axes = ms["coordinateSystems"][0]["axes"]
        ds = ms["datasets"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidMetadataError(f"{redact_url(url)}/{path}: not a multiscale field") from exc
    kinds = [a.get("type") for a in axes]
    if kinds[0] != "displacement" or any(k != "space" for k in kinds[1:]):
        raise InvalidMetadataError(
            f"{redact_url(url)}/{path}: expected axes [c (displacement), space...], got {kinds}"
        )
    ndim = len(axes) - 1
    where = f"{redact_url(url)}/{path}"
    scale, trans = scale_translation(ds.get("coordinateTransformations", []), ndim + 1, where,
                                     "multiscales[0].datasets[0].coordinateTransformations")
    arr: Any = group[check_relative_path(ds.get("path"), f"{redact_url(url)}/{path}",
                                         "multiscales[0].datasets[0].path")]
    shape = tuple(int(s) for s in arr.shape)
    if shape[0] != ndim:
        raise InvalidMetadataError(
            f"{redact_url(url)}/{path}: {shape[0]} components for {ndim} spatial axes"
        )
    unit = axes[1].get("unit")
    return ndim, scale[1:], trans[1:], shape[1:], unit


def _chain_from(t: Mapping[str, Any], url: str, storage_options: Mapping[str, Any] | None
                ) -> TransformChain:
    safe = redact_url(url)
    fields = [it for _, it in flatten([t], safe, "transform") if it.get("type") == "displacements"]
    if len(fields) != 1:
        raise InvalidMetadataError(
            f"expected exactly one displacements transform, found {len(fields)}"
        )
    fpath = check_relative_path(fields[0].get("path"), safe, "displacements.path")
    ndim, scale, trans, shape, unit = _field_grid(url, fpath, storage_options)
    pre_zyx, _, post_zyx = split_at_field(t, ndim, safe)
    pre, post = _to_itk_affine(pre_zyx), _to_itk_affine(post_zyx)
    q_origin = trans[::-1]
    spacing = scale[::-1]
    array_path = f"{fpath}/{_level0_path(url, fpath, storage_options)}"
    if _is_orthonormal(pre):
        # x -> q = P x; q + d(q); post.  As a forward chain: A = post∘P, D = P^-1 d(P x).
        inv = pre.inverse()
        rot = inv.A
        origin = inv.transform_points(q_origin[None])[0]
        geom = ImageGeometry(tuple(shape), tuple(spacing), tuple(origin),
                             tuple(map(tuple, rot)), unit)
        loader = ZarrFieldLoader(url, array_path, _rot_zyx(rot), storage_options)
        return TransformChain(pre.then(post), DisplacementField(geom, loader=loader))
    if _is_orthonormal(post):
        # y -> q = P y; q + u(q); Q(.)  As affine-first: A = Q∘P, U(w) = L_Q u(Q^-1 w).
        rot = post.A
        origin = post.transform_points(q_origin[None])[0]
        geom = ImageGeometry(tuple(shape), tuple(spacing), tuple(origin),
                             tuple(map(tuple, rot)), unit)
        loader = ZarrFieldLoader(url, array_path, _rot_zyx(rot), storage_options)
        return TransformChain(pre.then(post), DisplacementField(geom, loader=loader),
                              affine_first=True)
    raise InvalidMetadataError(
        "a displacement field between two non-rigid affines cannot be represented"
    )


def _rot_zyx(rot: FloatArray) -> tuple[tuple[float, ...], ...] | None:
    if np.allclose(rot, np.eye(rot.shape[0]), atol=1e-12):
        return None
    r = rot[::-1, ::-1]
    return tuple(tuple(float(v) for v in row) for row in r)


def _level0_path(url: str, fpath: str, storage_options: Mapping[str, Any] | None) -> str:
    group = zarr_group(url, storage_options, mode="r", path=fpath)
    ome: Any = dict(group.attrs.asdict())["ome"]
    return check_relative_path(ome["multiscales"][0]["datasets"][0].get("path"),
                               f"{redact_url(url)}/{fpath}", "multiscales[0].datasets[0].path")


def read_transform(url: str, storage_options: Mapping[str, Any] | None = None, *,
                   inverse: bool = False, coordinate_system: str | None = None
                   ) -> TransformChain:
    """Read the fixed->moving (or, with ``inverse``, moving->fixed) transform of a scene.

    Parameters
    ----------
    url:
        Scene group URL (local path or fsspec URL), or a fixed image that a
        registration was written into
        (:func:`~ngff_dreg.io.omezarr.image_transform_writer.write_transform_into_image`).
    storage_options:
        fsspec options (never logged).
    inverse:
        Return the inverse (moving->fixed) transform; needs a ``bijection``.
    coordinate_system:
        For an image holding several registrations: the name of the one to
        read (its output coordinate system).

    Returns
    -------
    TransformChain
        A chain whose field is read lazily, box by box.

    Raises
    ------
    IncompleteOutputError
        The scene is an interrupted write.
    InvalidMetadataError
        The scene holds no supported displacement transform.

    Examples
    --------
    >>> chain = read_transform("out.zarr")  # doctest: +SKIP
    >>> chain.transform_points([[1.0, 2.0, 3.0]])  # doctest: +SKIP

    """
    t = _find_transform(url, storage_options, coordinate_system)
    if t.get("type") == "bijection":
        t = t["inverse"] if inverse else t["forward"]
    elif inverse:
        raise InvalidMetadataError(f"{redact_url(url)}: no inverse (the scene has no bijection)")
    return _chain_from(t, url, storage_options)


def _find_transform(url: str, storage_options: Mapping[str, Any] | None,
                    coordinate_system: str | None) -> Mapping[str, Any]:
    """The stored transform: from a scene, or from inside a fixed image."""
    group = zarr_group(url, storage_options, mode="r")
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome and "scene" not in ome:
        return _image_transform(attrs, url, coordinate_system)
    scene_attrs = read_scene_attributes(url, storage_options)
    found: Mapping[str, Any] = scene_attrs["ome"]["scene"]["coordinateTransformations"][0]
    _check_numpy_order(scene_attrs["ome"]["scene"], found, url)
    return found


def _check_numpy_order(scene: Mapping[str, Any], t: Mapping[str, Any], url: str) -> None:
    """Refuse a scene whose systems' spatial axes are not ``z, y, x``: this reader is positional.

    ``SCENE:SOURCE:TARGET`` (the scene-graph reader) matches axes by name instead.
    """
    declared = {str(cs.get("name")): cs.get("axes") or []
                for cs in scene.get("coordinateSystems") or [] if isinstance(cs, Mapping)}
    for end in ("input", "output"):
        ref = t.get(end)
        name = ref.get("name") if isinstance(ref, Mapping) and not ref.get("path") else ref
        axes = declared.get(str(name)) if isinstance(name, str) else None
        spatial = [a.get("name") for a in axes or [] if a.get("type", "space") == "space"]
        if spatial and spatial != ["z", "y", "x"][-len(spatial):]:
            raise InvalidMetadataError(
                f"{redact_url(url)}: coordinate system {name!r} has spatial axes "
                f"{', '.join(map(str, spatial))}; read it as SCENE:SOURCE:TARGET, which "
                "follows the axes by name")


def _as_chain(transform: TransformChain | str, storage_options: Mapping[str, Any] | None,
              inverse: bool) -> TransformChain:
    if isinstance(transform, TransformChain):
        return transform
    return read_transform(str(transform), storage_options, inverse=inverse)


def to_itk_transform(transform: TransformChain | str, *, inverse: bool = False,
                     storage_options: Mapping[str, Any] | None = None,
                     near_points: npt.ArrayLike | None = None) -> Any:
    """An ``itk.CompositeTransform`` (affine + ``DisplacementFieldTransform``).

    Parameters
    ----------
    transform:
        A chain, or a scene URL to read.
    inverse:
        With a URL, read the inverse.
    storage_options:
        fsspec options for a URL.
    near_points:
        Physical points the transform will be used near; only the part of the
        field around them is loaded.

    """
    return _as_chain(transform, storage_options, inverse).to_itk(near_points)


def total_displacement(chain: TransformChain) -> tuple[FloatArray, ImageGeometry]:
    """``chain(x) - x`` sampled on the chain's field grid (NGFF layout).

    Exact at every point of the grid for a forward chain (the map is linear
    between nodes); for an affine-first chain it is exact at the nodes.
    """
    if chain.field is None:
        raise ValueError("the chain has no displacement field")
    geom = chain.field.geometry
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geom.shape], indexing="ij"), axis=-1)
    pts = geom.array_index_to_physical(idx.reshape(-1, geom.ndim).astype(np.float64))
    disp = chain.transform_points(pts) - pts
    return disp[:, ::-1].T.reshape((geom.ndim, *geom.shape)), geom


def export_itk(transform: TransformChain | str, path: str, *, inverse: bool = False,
               storage_options: Mapping[str, Any] | None = None) -> None:
    """Export for ITK tools (3D Slicer, ANTs).

    Parameters
    ----------
    transform:
        A chain, or a scene URL to read.
    path:
        ``.h5``/``.hdf5``/``.tfm``: an ITK transform file holding the composite
        (affine + displacement field). Any image extension (``.nrrd``,
        ``.nii.gz``, ``.mha``...): the total displacement ``T(x) - x`` as a
        vector image on the field grid (ITK's displacement-field convention).
    inverse:
        With a URL, export the inverse.
    storage_options:
        fsspec options for a URL.

    """
    from ngff_dreg.itk_bridge import write_transform_file, write_vector_image

    chain = _as_chain(transform, storage_options, inverse)
    if path.endswith((".h5", ".hdf5", ".tfm", ".txt")):
        write_transform_file([chain.to_itk()], path)
        return
    data, geom = total_displacement(chain)
    vectors = np.ascontiguousarray(np.moveaxis(data[::-1], 0, -1), dtype=np.float32)
    write_vector_image(vectors, geom, path)
