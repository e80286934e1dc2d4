"""RFC-5 linear transforms as homogeneous matrices between spaces of any dimension (no I/O).

:func:`affine_map` turns one transform object into an ``(m+1) x (n+1)``
homogeneous matrix from an ``n``-D input to an ``m``-D output (NumPy axis
order: the first axis of a coordinate system is the first row/column):

* ``identity``, ``scale``, ``translation`` (``m == n``);
* ``mapAxis``: output axis ``i`` is input axis ``mapAxis[i]``;
* ``projectAxis``: ``droppedInputs`` removed, ``createdOutputs`` inserted as 0;
* ``affine`` (``m x (n+1)`` rows, or the full homogeneous matrix) and
  ``rotation`` (``n x n``, orthonormal, determinant +1), either inline or
  stored in a Zarr array named by ``path``;
* ``sequence`` (first entry applied first), ``byDimension`` (child
  transforms on subsets of axes) and ``bijection`` (its ``forward``).

Parameters stored in arrays are read through a caller-supplied
:data:`ParamLoader`, so the module itself stays free of I/O; their ``path``
is checked with :func:`~ngff_dreg.ngff._checks.check_relative_path` first, so
it cannot leave the store. Every error is an
:class:`~ngff_dreg.errors.InvalidMetadataError` naming the URL and the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.ngff._checks import as_dict, as_list, check_relative_path, err, numbers

__all__ = ["LINEAR_TYPES", "ParamLoader", "affine_map", "output_dim"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: ``load(path, key)`` returns the parameter array stored at ``path`` (relative
#: to the group holding the metadata, already checked to stay in the store).
ParamLoader = Callable[[str, str], npt.NDArray[Any]]

LINEAR_TYPES = ("identity", "scale", "translation", "mapAxis", "projectAxis", "affine",
                "rotation", "sequence", "byDimension", "bijection")

_MAX_DIM = 32


def _ints(value: Any, url: str, key: str, *, non_empty: bool = True) -> list[int]:
    items = as_list(value, url, key, non_empty=non_empty)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise err(url, key, f"expected integer axis indices, got {v!r}")
        out.append(v)
    return out


def _indices(value: Any, url: str, key: str, bound: int, *, non_empty: bool = True
             ) -> list[int]:
    """Unique axis indices in ``[0, bound)``."""
    idx = _ints(value, url, key, non_empty=non_empty)
    bad = [i for i in idx if not 0 <= i < bound]
    if bad:
        raise err(url, key, f"axis indices {bad} are out of range for {bound} axes")
    if len(set(idx)) != len(idx):
        raise err(url, key, f"axis indices must be unique, got {idx}")
    return idx


def _param_matrix(d: Mapping[str, Any], typ: str, key: str, url: str,
                  load: ParamLoader | None) -> Any:
    """The ``affine``/``rotation`` parameters: inline rows, or read from the array at ``path``."""
    if typ in d and "path" in d:
        raise err(url, key, f"give either '{typ}' or 'path', not both")
    if typ in d:
        return d[typ]
    if "path" not in d:
        raise err(url, f"{key}.{typ}", f"missing: a {typ} needs '{typ}' or 'path'")
    path = check_relative_path(d["path"], url, f"{key}.path")
    if load is None:
        raise err(url, f"{key}.path", f"{typ} parameters stored in an array ({path!r}) need "
                  "the store; open the image with ngff_dreg.io.open_multiscale")
    arr = np.asarray(load(path, f"{key}.path"))
    if arr.ndim != 2 or arr.size > _MAX_DIM * (_MAX_DIM + 1) or arr.dtype.kind not in "iuf":
        raise err(url, f"{key}.path", f"array {path!r} must be a small 2-D numeric matrix, "
                  f"got shape {list(arr.shape)} and dtype {arr.dtype}")
    return arr.astype(np.float64).tolist()


def _rows(raw: Any, url: str, key: str) -> FloatArray:
    rows = as_list(raw, url, key)
    width = len(rows[0]) if isinstance(rows[0], list) else -1
    if width < 1:
        raise err(url, key, "expected a 2-D nested list of numbers (a list of rows)")
    return np.stack([numbers(r, url, f"{key}[{i}]", width) for i, r in enumerate(rows)])


def _drop_homogeneous_row(a: FloatArray) -> FloatArray:
    """``a`` without a trailing ``[0, ..., 0, 1]`` row (a full homogeneous matrix)."""
    if a.shape[0] >= 2:
        tail = np.zeros(a.shape[1])
        tail[-1] = 1.0
        if np.array_equal(a[-1], tail) and a.shape[0] == a.shape[1]:
            return a[:-1]
    return a


def _embed(lin: FloatArray, off: FloatArray, n: int, spatial: Sequence[int]) -> FloatArray:
    """An ``n``-D matrix acting as ``lin``/``off`` on the ``spatial`` axes only."""
    h = np.eye(n + 1)
    idx = np.asarray(spatial)
    h[np.ix_(idx, idx)] = lin
    h[idx, n] = off
    return h


def _vector(d: Mapping[str, Any], typ: str, key: str, n: int, spatial: Sequence[int],
            url: str) -> FloatArray:
    """``scale``/``translation`` as a matrix; parameters for the spatial axes only are tolerated."""
    if "path" in d:
        raise err(url, f"{key}.path", f"{typ} parameters cannot be stored in an array (only "
                  "affine and rotation may use 'path')")
    raw = d.get(typ)
    k = f"{key}.{typ}"
    if raw is None:
        raise err(url, k, "missing")
    ns = len(spatial)
    given = len(raw) if isinstance(raw, list) else n
    size = ns if (given == ns and 0 < ns < n) else n
    v = numbers(raw, url, k, size)
    if size != n:
        logger.warning("%s: '%s' has %d entries for %d axes; applied to the spatial axes",
                       url, k, size, n)
    if typ == "scale":
        if np.any(v <= 0):
            raise err(url, k, f"scale factors must be > 0, got {v.tolist()}")
        return _embed(np.diag(v), np.zeros(size), n, spatial if size != n else range(n))
    return _embed(np.eye(size), v, n, spatial if size != n else range(n))


def _matrix_type(d: Mapping[str, Any], typ: str, key: str, n: int, spatial: Sequence[int],
                 url: str, load: ParamLoader | None) -> FloatArray:
    """``affine`` (``m x (n+1)``) or ``rotation`` (``n x n``) as a homogeneous matrix."""
    k = f"{key}.{typ}"
    a = _rows(_param_matrix(d, typ, key, url, load), url, k)
    ns = len(spatial)
    if typ == "rotation":
        if a.shape[0] != a.shape[1] or a.shape[0] not in (n, ns) or a.shape[0] == 0:
            raise err(url, k, f"expected a {n} x {n} matrix, got {a.shape[0]} x {a.shape[1]}")
        if not np.allclose(a @ a.T, np.eye(a.shape[0]), atol=1e-6) or np.linalg.det(a) < 0:
            raise err(url, k, "must be orthonormal with determinant +1")
        if a.shape[0] != n:
            return _embed(a, np.zeros(ns), n, spatial)
        h = np.eye(n + 1)
        h[:n, :n] = a
        return h
    a = _drop_homogeneous_row(a)
    if a.shape[1] == n + 1:
        h = np.zeros((a.shape[0] + 1, n + 1))
        h[:-1] = a
        h[-1, -1] = 1.0
        return h
    if 0 < ns < n and a.shape == (ns, ns + 1):  # parameters for the spatial axes only
        return _embed(a[:, :ns], a[:, ns], n, spatial)
    raise err(url, k, f"expected {n + 1} columns (an M x {n + 1} matrix for {n} input "
              f"axes), got {a.shape[0]} x {a.shape[1]}")


def _map_axis(d: Mapping[str, Any], key: str, n: int, url: str) -> FloatArray:
    perm = _indices(d.get("mapAxis"), url, f"{key}.mapAxis", n)
    if len(perm) != n:
        raise err(url, f"{key}.mapAxis", f"has {len(perm)} entries but the input has {n} axes")
    h = np.zeros((n + 1, n + 1))
    h[np.arange(n), perm] = 1.0
    h[n, n] = 1.0
    return h


def _project_axis(d: Mapping[str, Any], key: str, n: int, n_out: int | None, url: str
                  ) -> FloatArray:
    if "droppedInputs" not in d and "createdOutputs" not in d:
        raise err(url, key, "a projectAxis needs 'droppedInputs' or 'createdOutputs'")
    dropped = _indices(d.get("droppedInputs", []), url, f"{key}.droppedInputs", n,
                       non_empty=False)
    created_raw = _ints(d.get("createdOutputs", []), url, f"{key}.createdOutputs",
                        non_empty=False)
    m = n - len(dropped) + len(created_raw)
    if n_out is not None and m != n_out:
        raise err(url, key, f"maps {n} axes to {m}, but the output has {n_out}")
    created = _indices(created_raw, url, f"{key}.createdOutputs", m, non_empty=False)
    if m < 1:
        raise err(url, key, "drops every axis")
    kept_in = [i for i in range(n) if i not in dropped]
    kept_out = [j for j in range(m) if j not in created]
    h = np.zeros((m + 1, n + 1))
    h[kept_out, kept_in] = 1.0
    h[m, n] = 1.0
    return h


def _by_dimension(d: Mapping[str, Any], key: str, n: int, n_out: int | None, url: str,
                  load: ParamLoader | None) -> FloatArray:
    items = as_list(d.get("transformations"), url, f"{key}.transformations")
    parts = []
    for i, item in enumerate(items):
        k = f"{key}.transformations[{i}]"
        it = as_dict(item, url, k)
        for field in ("transformation", "inputAxes", "outputAxes"):
            if field not in it:
                raise err(url, f"{k}.{field}", "missing (each byDimension entry needs "
                          "'transformation', 'inputAxes' and 'outputAxes')")
        ins = _indices(it["inputAxes"], url, f"{k}.inputAxes", n)
        outs = _ints(it["outputAxes"], url, f"{k}.outputAxes")
        parts.append((k, as_dict(it["transformation"], url, f"{k}.transformation"), ins, outs))
    m = n_out if n_out is not None else max(j for *_, outs in parts for j in outs) + 1
    h = np.zeros((m + 1, n + 1))
    h[m, n] = 1.0
    covered: set[int] = set()
    for k, sub, ins, outs in parts:
        outs = _indices(outs, url, f"{k}.outputAxes", m)
        if covered & set(outs):
            raise err(url, f"{k}.outputAxes", f"output axes {sorted(covered & set(outs))} "
                      "appear in more than one byDimension entry")
        covered |= set(outs)
        s = affine_map(sub, f"{k}.transformation", len(ins), url, n_out=len(outs), load=load)
        h[np.ix_(outs, ins)] = s[:-1, :-1]
        h[outs, n] = s[:-1, -1]
    missing = [j for j in range(m) if j not in covered]
    if missing:
        if any(j >= n for j in missing):
            raise err(url, f"{key}.transformations", f"output axes {missing} are not set "
                      "by any entry")
        logger.warning("%s: '%s' sets no value for output axes %s; they pass through",
                       url, key, missing)
        h[missing, missing] = 1.0
    return h


def output_dim(h: FloatArray) -> int:
    """Output dimension of a homogeneous matrix from :func:`affine_map`."""
    return int(h.shape[0]) - 1


def affine_map(
    d: Any, key: str, n: int, url: str, *, n_out: int | None = None,
    spatial: Sequence[int] = (), load: ParamLoader | None = None,
) -> FloatArray:
    """Homogeneous ``(m+1) x (n+1)`` matrix of one RFC-5 linear transform.

    Parameters
    ----------
    d:
        The transform object.
    key:
        Its metadata key, for messages.
    n:
        Input dimension.
    url:
        The group's URL, for messages.
    n_out:
        Output dimension when known (the output coordinate system's length);
        checked against what the transform gives.
    spatial:
        Indices of the input's spatial axes: ``scale``/``translation``/
        ``affine``/``rotation`` parameters given for these axes only are
        accepted (with a warning for vectors) and act on them alone.
    load:
        Reads parameter arrays named by ``path``; without it such a transform
        is an error.

    Raises
    ------
    InvalidMetadataError
        For unknown or non-linear types and inconsistent parameters.

    """
    obj = as_dict(d, url, key)
    typ = obj.get("type")
    if not isinstance(typ, str):
        raise err(url, f"{key}.type", f"missing or not a string: {typ!r}")
    if not 0 < n <= _MAX_DIM:
        raise err(url, key, f"cannot transform {n} axes")
    if typ == "identity":
        h = np.eye(n + 1)
    elif typ in ("scale", "translation"):
        h = _vector(obj, typ, key, n, spatial, url)
    elif typ in ("affine", "rotation"):
        h = _matrix_type(obj, typ, key, n, spatial, url, load)
    elif typ == "mapAxis":
        h = _map_axis(obj, key, n, url)
    elif typ == "projectAxis":
        h = _project_axis(obj, key, n, n_out, url)
    elif typ == "byDimension":
        h = _by_dimension(obj, key, n, n_out, url, load)
    elif typ == "bijection":
        h = affine_map(obj.get("forward"), f"{key}.forward", n, url, n_out=n_out,
                       spatial=spatial, load=load)
    elif typ == "sequence":
        h = _sequence(obj, key, n, n_out, spatial, url, load)
    else:
        raise err(url, f"{key}.type", f"transform type {typ!r} is not supported by ngff-dreg "
                  "here (not a linear transform)")
    if n_out is not None and output_dim(h) != n_out:
        raise err(url, key, f"gives {output_dim(h)} output axes (rows), but the output "
                  f"has {n_out}")
    if not np.all(np.isfinite(h)) or math.isnan(float(np.abs(h).max())):
        raise err(url, key, "parameters must be finite")
    return h


def _sequence(obj: Mapping[str, Any], key: str, n: int, n_out: int | None,
              spatial: Sequence[int], url: str, load: ParamLoader | None) -> FloatArray:
    items = as_list(obj.get("transformations"), url, f"{key}.transformations")
    h = np.eye(n + 1)
    sp: Sequence[int] = spatial
    for i, item in enumerate(items):
        last = i == len(items) - 1
        step = affine_map(item, f"{key}.transformations[{i}]", output_dim(h), url,
                          n_out=n_out if last else None, spatial=sp, load=load)
        if step.shape[0] != step.shape[1]:
            sp = ()  # axes were added or removed: the spatial indices no longer apply
        h = step @ h
    return h
