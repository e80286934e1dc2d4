"""The one parser of NGFF (RFC-5) coordinate-transformation JSON (no I/O).

Image metadata (:mod:`ngff_dreg.ngff.metadata`), the 0.5 -> 0.6 upgrade
(:mod:`ngff_dreg.ngff.upgrade`), the transform-scene reader
(:mod:`ngff_dreg.io.omezarr.transform_reader`) and the image-transform writer all read
transforms here:

* :func:`flatten` opens nested ``sequence`` transforms, checking each entry;
* :func:`homogeneous` / :func:`compose` turn linear transforms that keep the
  dimension (``identity``, ``scale``, ``translation``, ``mapAxis``,
  ``rotation``, ``affine``, ``byDimension``...) into one homogeneous matrix in
  NumPy axis order, through :func:`~ngff_dreg.ngff.affine_maps.affine_map`;
* :func:`split_at_field` splits a scene transform around its one
  ``displacements`` field;
* :func:`has_field_transform`, :func:`field_paths` and
  :func:`rewrite_field_paths` find and rename the fields a transform uses.

Every error is an :class:`~ngff_dreg.errors.InvalidMetadataError` that names
the URL and the metadata key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.ngff._checks import as_dict, as_list, check_relative_path, err
from ngff_dreg.ngff.affine_maps import ParamLoader, affine_map

__all__ = [
    "FIELD_TYPES",
    "check_ref",
    "compose",
    "field_paths",
    "flatten",
    "has_field_transform",
    "homogeneous",
    "is_routed",
    "ref_name",
    "reverse_axes",
    "rewrite_field_paths",
    "scale_translation",
    "split_at_field",
]

FloatArray = npt.NDArray[np.float64]


def flatten(items: list[Any], url: str, key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """``(key, transform)`` of every non-sequence transform in ``items``, nested sequences opened.

    Parameters
    ----------
    items:
        A ``coordinateTransformations`` list (or ``[transform]``).
    url, key:
        Where the list sits, for messages; each entry's key is ``key[i]``
        (``key[i].transformations[j]`` inside a sequence).

    """
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        d = as_dict(item, url, k)
        typ = d.get("type")
        if not isinstance(typ, str):
            raise err(url, f"{k}.type", f"missing or not a string: {typ!r}")
        if typ == "sequence":
            sub = as_list(d.get("transformations"), url, f"{k}.transformations")
            out.extend(flatten(sub, url, f"{k}.transformations"))
        else:
            out.append((k, d))
    return out


def homogeneous(
    key: str, d: Mapping[str, Any], n: int, spatial: Sequence[int], url: str, *, linear_ok: bool,
    load: ParamLoader | None = None,
) -> FloatArray:
    """``(n+1) x (n+1)`` homogeneous matrix (NumPy axis order) of one ``n``-D -> ``n``-D transform.

    With ``linear_ok=False`` only ``identity``, ``scale`` and ``translation``
    are allowed (dataset and 0.4/0.5 transforms); otherwise any linear type of
    :func:`~ngff_dreg.ngff.affine_maps.affine_map` that keeps the dimension.
    """
    typ = d.get("type")
    if not linear_ok and typ not in ("identity", "scale", "translation"):
        raise err(url, f"{key}.type", f"transform type {typ!r} is not allowed here (only "
                  "identity, scale and translation)")
    return affine_map(d, key, n, url, n_out=n, spatial=spatial, load=load)


def compose(
    items: list[tuple[str, Mapping[str, Any]]],
    n: int,
    spatial: Sequence[int],
    url: str,
    *,
    linear_ok: bool,
) -> FloatArray:
    """Homogeneous matrix of ``flatten`` output, applied in order (first item first)."""
    h = np.eye(n + 1)
    for key, d in items:
        h = homogeneous(key, d, n, spatial, url, linear_ok=linear_ok) @ h
    return h


def ref_name(ref: Any) -> tuple[str | None, str | None]:
    """``(name, path)`` of a 0.6 transform ``input``/``output`` (object or string)."""
    if isinstance(ref, Mapping):
        name = ref.get("name")
        path = ref.get("path")
        return (name if isinstance(name, str) else None, path if isinstance(path, str) else None)
    if isinstance(ref, str):
        return ref, None
    return None, None


def check_ref(value: Any, url: str, key: str, *, string: Literal["name", "path"]
              ) -> tuple[str | None, str | None]:
    """``(name, path)`` of a 0.6 transform ``input``/``output``, its types checked.

    0.6rc0 (and 0.6.dev4) write the reference as an object ``{"name": ...,
    "path": ...}``; 0.6.dev1-dev3 also allowed a plain string, which is read
    here as the object's ``string`` field: a coordinate-system ``"name"``, or
    the ``"path"`` of a dataset's array (the ``input`` of a dataset
    transform). Which fields are required is left to the caller.

    Parameters
    ----------
    value:
        The ``input`` or ``output`` value found in the metadata.
    url, key:
        Where it sits, for messages (``key`` is the ``input``/``output`` key).
    string:
        What a plain string stands for.

    Returns
    -------
    tuple
        ``(name, path)``, each ``None`` when absent (or ``null``); a path is
        normalised by :func:`~ngff_dreg.ngff._checks.check_relative_path`.

    Raises
    ------
    InvalidMetadataError
        For a value that is neither an object nor a string, an empty string,
        or a ``name``/``path`` that is not a non-empty string.
    PathEscapeError
        For a path leaving the store.

    """
    if isinstance(value, str):
        if not value.strip():
            raise err(url, key, "must name a coordinate system (or, for a dataset's input, "
                      "its array path), got an empty string")
        if string == "path":
            return None, check_relative_path(value, url, key)
        return value, None
    if not isinstance(value, Mapping):
        raise err(url, key, "must be an object {\"name\": ..., \"path\": ...} (or, in "
                  f"0.6.dev1-dev3, a string), got {type(value).__name__} {value!r}")
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise err(url, f"{key}.name", f"must be a non-empty string, got {name!r}")
    path = value.get("path")
    if path is not None:
        path = check_relative_path(path, url, f"{key}.path")
    return name, path


def is_routed(item: Any) -> bool:
    """True for a 0.6 transform naming its ``input`` or ``output`` coordinate system."""
    return isinstance(item, Mapping) and ("input" in item or "output" in item)


FIELD_TYPES = ("displacements", "coordinates")


def has_field_transform(item: Any) -> bool:
    """True if a 0.6 transform is (or contains) a ``displacements``/``coordinates`` field.

    Such a transform (for example a registration stored inside an image by
    :func:`ngff_dreg.io.omezarr.image_transform_writer.write_transform_into_image`)
    maps to another image's space; it is not part of the image's own geometry.
    """
    if not isinstance(item, Mapping):
        return False
    typ = item.get("type")
    if typ in FIELD_TYPES:
        return True
    if typ == "sequence" and isinstance(item.get("transformations"), list):
        return any(has_field_transform(t) for t in item["transformations"])
    if typ == "bijection":
        return has_field_transform(item.get("forward")) or has_field_transform(
            item.get("inverse"))
    return False


def scale_translation(
    items: list[Any] | None, n: int, url: str, key: str
) -> tuple[FloatArray, FloatArray]:
    """``(scale, translation)`` of a list of ``scale``/``translation``/``identity`` transforms.

    ``x -> scale * x + translation`` over ``n`` axes; anything else (a rotation,
    an affine) is an error here.
    """
    if items is None:
        return np.ones(n), np.zeros(n)
    h = compose(flatten(as_list(items, url, key, non_empty=False), url, key), n,
                range(n), url, linear_ok=False)
    return np.diag(h)[:n].copy(), h[:n, n].copy()


def reverse_axes(h: FloatArray) -> FloatArray:
    """A homogeneous matrix with its axes reversed (NumPy ``z, y, x`` <-> ITK ``x, y, z``)."""
    ndim = h.shape[0] - 1
    p = np.zeros((ndim + 1, ndim + 1))
    p[:ndim, :ndim] = np.eye(ndim)[::-1]
    p[ndim, ndim] = 1.0
    return p @ h @ p


def split_at_field(
    transform: Mapping[str, Any], ndim: int, url: str, key: str = "transform"
) -> tuple[FloatArray, Mapping[str, Any], FloatArray]:
    """``(before, field, after)`` of a transform holding exactly one ``displacements``.

    ``before`` and ``after`` are the homogeneous matrices (NumPy axis order,
    ``ndim`` spatial axes) of the linear transforms on either side of the
    field; ``field`` is the ``displacements`` entry itself.
    """
    flat = flatten([transform], url, key)
    where = [i for i, (_, item) in enumerate(flat) if item.get("type") == "displacements"]
    if len(where) != 1:
        raise InvalidMetadataError(
            f"expected exactly one displacements transform, found {len(where)}"
        )
    k = where[0]
    spatial = list(range(ndim))
    before = compose(flat[:k], ndim, spatial, url, linear_ok=True)
    after = compose(flat[k + 1 :], ndim, spatial, url, linear_ok=True)
    return before, flat[k][1], after


def field_paths(t: Any) -> list[str]:
    """The ``path`` of every field (``displacements``/``coordinates``) in a transform."""
    if isinstance(t, list):
        return [p for x in t for p in field_paths(x)]
    if not isinstance(t, Mapping):
        return []
    if t.get("type") in FIELD_TYPES:
        return [str(t.get("path"))]
    return [p for k, v in t.items() if k not in ("input", "output") for p in field_paths(v)]


def rewrite_field_paths(t: Any, mapping: Mapping[str, str]) -> Any:
    """Copy of transform ``t`` with every field ``path`` renamed through ``mapping``.

    ``input``/``output`` references are dropped (the copy is placed anew).
    """
    if isinstance(t, list):
        return [rewrite_field_paths(x, mapping) for x in t]
    if not isinstance(t, Mapping):
        return t
    out = {k: rewrite_field_paths(v, mapping) for k, v in t.items()
           if k not in ("input", "output")}
    if t.get("type") in FIELD_TYPES:
        out["path"] = mapping[str(t["path"])]
    return out
