"""NGFF 0.6 coordinate systems of one multiscale image: its transforms, checked and chained.

The datasets of a 0.6 multiscale map array indices to one *intrinsic*
coordinate system. ``multiscales > coordinateTransformations`` may add
transforms from (or to) it; :func:`routes` checks every one of them against
the spec's constraints, and :func:`chain` follows them from the intrinsic
system, giving the homogeneous matrix (possibly non-square, after
``projectAxis`` or a dimension-changing ``affine``) from intrinsic
coordinates to each system reached. :func:`spatial_block` then finds the 2-3
spatial axes an image geometry can be built on. No I/O: parameter arrays are
read through the caller's :data:`~ngff_dreg.ngff.affine_maps.ParamLoader`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.ngff._checks import as_dict, err
from ngff_dreg.ngff.affine_maps import ParamLoader, affine_map
from ngff_dreg.ngff.transforms import check_ref, has_field_transform

__all__ = ["Route", "SpatialBlock", "chain", "routes", "spatial_block", "uses_param_arrays"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

_LABEL_TYPES = ("identity", "scale", "translation")


@dataclass(frozen=True)
class Route:
    """One checked ``multiscales > coordinateTransformations`` entry."""

    key: str
    source: str
    target: str
    transform: Mapping[str, Any]
    #: the other end lies in a child (labels) group, or the transform is a field
    external: bool


def _ref(value: Any, url: str, key: str) -> tuple[str, str | None]:
    """``(name, path)`` of a multiscales transform's ``input``/``output``; a name is required.

    A plain string (0.6.dev1-dev3) is the name of a coordinate system.
    """
    name, path = check_ref(value, url, key, string="name")
    if name is None:
        raise err(url, f"{key}.name", "missing: a multiscales transform must name the "
                  "coordinate system")
    return name, path


def uses_param_arrays(t: Any) -> bool:
    """True if a transform (or one nested in it) reads its parameters from an array."""
    if isinstance(t, list):
        return any(uses_param_arrays(x) for x in t)
    if not isinstance(t, Mapping):
        return False
    if t.get("type") in ("affine", "rotation") and "path" in t:
        return True
    return any(uses_param_arrays(v) for k, v in t.items() if k not in ("input", "output"))


#: the parameter fields a transform needs (one of them), checked even on entries
#: that are then left out because ngff-dreg cannot place them
_NEEDS = {"scale": ("scale",), "translation": ("translation",), "affine": ("affine", "path"),
          "rotation": ("rotation", "path"), "mapAxis": ("mapAxis",),
          "projectAxis": ("droppedInputs", "createdOutputs"), "sequence": ("transformations",),
          "byDimension": ("transformations",), "bijection": ("forward", "inverse"),
          "displacements": ("path",), "coordinates": ("path",)}


def _check_fields(d: Mapping[str, Any], url: str, key: str) -> None:
    """Refuse a transform missing every one of its type's parameter fields."""
    needs = _NEEDS.get(str(d.get("type")))
    if needs and not any(f in d for f in needs):
        raise err(url, f"{key}.{needs[0]}", f"a {d.get('type')!r} transform needs "
                  + " or ".join(repr(f) for f in needs))


def routes(
    cts: Sequence[Any], intrinsic: str, systems: Mapping[str, Sequence[Any]], url: str,
    key: str, load: ParamLoader | None,
) -> list[Route]:
    """Check every multiscales-level transform and return it as a :class:`Route`.

    Each entry must name its ``input`` and ``output`` (objects, or strings
    holding coordinate-system names as 0.6.dev1-dev3 allowed); one of them
    should be the intrinsic system, the other a coordinate system of this
    multiscale (or, with a ``path``, of a child labels group, through an
    identity/scale/translation only); an entry that names unknown systems, or
    does not touch the intrinsic one, is logged and left out. Parameters are
    checked too, also for transforms ngff-dreg then does not follow.
    """
    out = []
    for i, item in enumerate(cts):
        k = f"{key}[{i}]"
        d = as_dict(item, url, k)
        if "input" not in d or "output" not in d:
            raise err(url, k, "missing 'input' or 'output': a multiscales transform must "
                      "name the coordinate systems it maps between")
        src, src_path = _ref(d["input"], url, f"{k}.input")
        dst, dst_path = _ref(d["output"], url, f"{k}.output")
        local_src, local_dst = src_path is None, dst_path is None
        unknown = [n for n, local in ((src, local_src), (dst, local_dst))
                   if local and n not in systems]
        if unknown or not ((local_src and src == intrinsic) or (local_dst and dst == intrinsic)):
            why = (f"names no coordinate system of this multiscale ({unknown})" if unknown
                   else f"neither starts nor ends at the intrinsic system {intrinsic!r}")
            _check_fields(d, url, k)
            logger.warning("%s: '%s' %s; ignored", url, k, why)
            continue
        external = not (local_src and local_dst)
        if external and d.get("type") not in _LABEL_TYPES:
            raise err(url, f"{k}.type", "a transform to a child group must be identity, "
                      f"scale or translation, got {d.get('type')!r}")
        field = has_field_transform(d)
        if local_src and not field and (load is not None or not uses_param_arrays(d)):
            n_out = len(systems[dst]) if local_dst else None
            affine_map(d, k, len(systems[src]), url, n_out=n_out, load=load,
                       spatial=[j for j, a in enumerate(systems[src]) if a.is_spatial])
        out.append(Route(k, src, dst, d, external or field))
    return out


def chain(
    rs: Sequence[Route], intrinsic: str, target: str | None, systems: Mapping[str, Sequence[Any]],
    url: str, key: str, load: ParamLoader | None,
) -> list[tuple[str, FloatArray]]:
    """``(system, matrix from intrinsic)`` along the transforms from ``intrinsic``.

    Without ``target`` the first forward transform leaving each system is
    taken, to the end of the chain. With ``target`` the shortest chain
    reaching it; a transform *into* a system on the way (the spec lets a
    multiscales transform end at the intrinsic system) is walked backwards
    through its inverse: a ``bijection``'s ``inverse``, else the closed-form
    inverse of its matrix. One with no such inverse is an error naming its key.
    """
    parent: dict[str, tuple[str, Route, bool] | None] = {intrinsic: None}
    frontier = [intrinsic]
    while frontier and (target is None or target not in parent):
        nxt = []
        for cur in frontier:
            steps = [(r.target, r, False) for r in rs if r.source == cur and not r.external]
            if target is not None:
                steps += [(r.source, r, True) for r in rs if r.target == cur and not r.external]
            for name, r, backwards in steps:
                if name not in parent:
                    parent[name] = (cur, r, backwards)
                    nxt.append(name)
                    if target is None:
                        break
        frontier = nxt[:1] if target is None else nxt
    if target is not None and target not in parent:
        field = [r for r in rs if r.target == target and has_field_transform(r.transform)]
        if field:
            raise err(url, field[0].key, f"the transform to {target!r} is a displacement "
                      "field, not part of the image geometry; read it with "
                      "ngff_dreg.read_transform")
        raise err(url, key, f"no transform chain from {intrinsic!r} to coordinate system "
                  f"{target!r}")
    end = target if target is not None else frontier_end(parent, intrinsic)
    path: list[tuple[str, Route, bool]] = []
    node = end
    while (p := parent[node]) is not None:
        path.append((node, p[1], p[2]))
        node = p[0]
    h = np.eye(len(systems[intrinsic]) + 1)
    out = [(intrinsic, h)]
    for name, r, backwards in reversed(path):
        step = _inverse_map(r, systems, url, load) if backwards else _forward_map(
            r, systems, url, load)
        h = step @ h
        out.append((name, h))
    return out


def _forward_map(r: Route, systems: Mapping[str, Sequence[Any]], url: str,
                 load: ParamLoader | None) -> FloatArray:
    """Homogeneous matrix of a route, from its source to its target system."""
    src = systems[r.source]
    return affine_map(r.transform, r.key, len(src), url, n_out=len(systems[r.target]),
                      spatial=[j for j, a in enumerate(src) if a.is_spatial], load=load)


def _inverse_map(r: Route, systems: Mapping[str, Sequence[Any]], url: str,
                 load: ParamLoader | None) -> FloatArray:
    """Homogeneous matrix of a route walked backwards, from its target to its source."""
    inverse = r.transform.get("inverse") if r.transform.get("type") == "bijection" else None
    if inverse is not None:
        dst = systems[r.target]
        return affine_map(inverse, f"{r.key}.inverse", len(dst), url,
                          n_out=len(systems[r.source]),
                          spatial=[j for j, a in enumerate(dst) if a.is_spatial], load=load)
    m = _forward_map(r, systems, url, load)
    n = m.shape[1] - 1
    if m.shape[0] != m.shape[1] or np.linalg.matrix_rank(m[:n, :n]) < n:
        raise err(url, r.key, f"maps {r.source!r} to {r.target!r} and has no inverse in "
                  f"closed form ({m.shape[0] - 1} x {n}, rank "
                  f"{np.linalg.matrix_rank(m[:-1, :n])}); {r.source!r} cannot be reached "
                  "through it")
    return np.asarray(np.linalg.inv(m), dtype=np.float64)


def frontier_end(parent: Mapping[str, tuple[Any, ...] | None], start: str) -> str:
    """The last system reached by a first-edge walk (the deepest one in ``parent``).

    ``parent`` maps each system reached to ``None`` (``start``) or to a tuple
    whose first item is the system it was reached from.
    """
    depth = {start: 0}

    def d(name: str) -> int:
        if name not in depth:
            p = parent[name]
            assert p is not None
            depth[name] = d(p[0]) + 1
        return depth[name]

    return max(parent, key=d)


@dataclass(frozen=True)
class SpatialBlock:
    """Where the image's 2-3 spatial axes sit in a transform's output and input."""

    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


def spatial_block(h: FloatArray, out_spatial: Sequence[bool], tol: float = 1e-12
                  ) -> SpatialBlock | str:
    """The spatial output rows and the input columns feeding them, or why there are none.

    Output spatial axes that depend on no input (added by ``projectAxis`` or
    set to a constant by an ``affine``) are left out. The rest must number 2
    or 3, be fed by as many input axes, through an invertible block, and not
    mix with the non-spatial axes.
    """
    lin = h[:-1, :-1]
    live = np.abs(lin).max(axis=1, initial=0.0) > tol
    rows = [r for r, s in enumerate(out_spatial) if s and live[r]]
    if not 2 <= len(rows) <= 3:
        return f"{len(rows)} spatial axes depend on the image (2 or 3 are needed)"
    cols = [c for c in range(lin.shape[1]) if np.abs(lin[rows, c]).max() > tol]
    if len(cols) != len(rows):
        return f"{len(rows)} spatial axes are fed by {len(cols)} image axes"
    other_rows = [r for r in range(lin.shape[0]) if r not in rows]
    other_cols = [c for c in range(lin.shape[1]) if c not in cols]
    if other_rows and np.abs(lin[np.ix_(other_rows, cols)]).max() > tol:
        return "non-spatial axes depend on spatial ones"
    if other_cols and np.abs(lin[np.ix_(rows, other_cols)]).max() > tol:
        return "spatial axes depend on non-spatial ones"
    if abs(np.linalg.det(lin[np.ix_(rows, cols)])) < 1e-300:
        return "the spatial part of the transform is singular"
    return SpatialBlock(tuple(rows), tuple(cols))
