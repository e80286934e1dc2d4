"""The one parser of NGFF (RFC-5) coordinate-transformation JSON (no I/O).

Image metadata (:mod:`ngff_dreg.ngff.metadata`), the 0.5 -> 0.6 upgrade
(:mod:`ngff_dreg.ngff.upgrade`), the transform-scene reader
(:mod:`ngff_dreg.io.transform_reader`) and the image-transform writer all read
transforms here:

* :func:`flatten` opens nested ``sequence`` transforms, checking each entry;
* :func:`homogeneous` / :func:`compose` turn ``identity``, ``scale``,
  ``translation``, ``rotation`` and ``affine`` into one homogeneous matrix in
  NumPy axis order (an ``affine`` may be given as ``N x (N+1)`` rows or as the
  full homogeneous ``(N+1) x (N+1)`` matrix);
* :func:`split_at_field` splits a scene transform around its one
  ``displacements`` field;
* :func:`has_field_transform`, :func:`field_paths` and
  :func:`rewrite_field_paths` find and rename the fields a transform uses.

Every error is an :class:`~ngff_dreg.errors.InvalidMetadataError` that names
the URL and the metadata key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.ngff._checks import as_dict, as_list, err, matrix, numbers

__all__ = [
    "FIELD_TYPES",
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


def _affine_rows(raw: Any) -> Any:
    """``raw`` without the ``[0, ..., 0, 1]`` last row of a full homogeneous matrix."""
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(r, list) for r in raw):
        return raw
    last = raw[-1]
    if len(last) != len(raw) or any(len(r) != len(raw) for r in raw):
        return raw
    try:
        tail = np.asarray(last, dtype=np.float64)
    except (TypeError, ValueError):
        return raw
    expected = np.zeros(len(raw))
    expected[-1] = 1.0
    return raw[:-1] if np.array_equal(tail, expected) else raw


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
    key: str, d: Mapping[str, Any], n: int, spatial: Sequence[int], url: str, *, linear_ok: bool
) -> FloatArray:
    """``(n+1) x (n+1)`` homogeneous matrix (NumPy axis order) of one transform."""
    typ = d["type"]
    h = np.eye(n + 1)
    if "path" in d and typ in ("scale", "translation", "affine", "rotation"):
        raise err(url, f"{key}.path", f"{typ} parameters stored in an array are not supported")
    if typ == "identity":
        return h
    if typ == "scale":
        s = numbers(d.get("scale"), url, f"{key}.scale", n)
        if np.any(s <= 0):
            raise err(url, f"{key}.scale", f"scale factors must be > 0, got {s.tolist()}")
        h[:n, :n] = np.diag(s)
        return h
    if typ == "translation":
        h[:n, n] = numbers(d.get("translation"), url, f"{key}.translation", n)
        return h
    if not linear_ok:
        raise err(url, f"{key}.type", f"transform type {typ!r} is not allowed here")
    ns = len(spatial)
    if typ == "rotation":
        raw = d.get("rotation")
        m_n = len(raw) if isinstance(raw, list) else n
        size = n if m_n == n else ns
        r = matrix(raw, url, f"{key}.rotation", size, size)
        if not np.allclose(r @ r.T, np.eye(size), atol=1e-6) or np.linalg.det(r) < 0:
            raise err(url, f"{key}.rotation", "must be orthonormal with determinant +1")
        lin, off = r, np.zeros(size)
    elif typ == "affine":
        raw = _affine_rows(d.get("affine"))
        m_n = len(raw) if isinstance(raw, list) else n
        size = n if m_n == n else ns
        a = matrix(raw, url, f"{key}.affine", size, size + 1)
        lin, off = a[:, :size], a[:, size]
    else:
        raise err(url, f"{key}.type", f"transform type {typ!r} is not supported by ngff-dreg")
    if size == n:
        h[:n, :n] = lin
        h[:n, n] = off
    else:  # parameters given for the spatial axes only
        idx = np.asarray(spatial)
        h[np.ix_(idx, idx)] = lin
        h[idx, n] = off
    return h


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


def is_routed(item: Any) -> bool:
    """True for a 0.6 transform naming its ``input`` or ``output`` coordinate system."""
    return isinstance(item, Mapping) and ("input" in item or "output" in item)


FIELD_TYPES = ("displacements", "coordinates")


def has_field_transform(item: Any) -> bool:
    """True if a 0.6 transform is (or contains) a ``displacements``/``coordinates`` field.

    Such a transform (for example a registration stored inside an image by
    :func:`ngff_dreg.io.image_transform_writer.write_transform_into_image`)
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
