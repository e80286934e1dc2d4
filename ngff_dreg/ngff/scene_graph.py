"""RFC-5 (NGFF 0.6) transforms as point maps, and the graph of coordinate systems they join.

Pure NumPy: no store is opened here. Parameters stored in arrays and the
``displacements``/``coordinates`` fields are reached through an
:class:`ArraySource` (:mod:`ngff_dreg.io.omezarr.scene_reader` gives one over a
Zarr store), and a field is read box by box: only the part around the points
being mapped.

Points are ``(n, ndim)`` arrays in the axis order of the coordinate system
they are in (NGFF order, e.g. ``z, y, x``).

Supported: ``identity``, ``translation``, ``scale``, ``affine``, ``rotation``,
``mapAxis`` (each inline or with its parameters in an array at ``path``),
``sequence``, ``bijection``, ``byDimension``, ``displacements``,
``coordinates``. Inverses: closed forms for the linear types, each part of a
sequence or byDimension in reverse, and the stored ``inverse`` of a
``bijection``; a ``displacements`` or ``coordinates`` field has no closed-form
inverse, and asking for one raises :class:`NonInvertibleTransformError` naming it.

Also read: the spellings of the 0.6 development drafts still found in files
(``input``/``output`` as plain names; ``input_axes``/``output_axes``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError, NgffDregError

__all__ = [
    "ArraySource",
    "CoordinateSystemNotFoundError",
    "Edge",
    "NoPathError",
    "NonInvertibleTransformError",
    "PointMap",
    "SceneGraph",
    "SystemKey",
    "parse_transform",
]

FloatArray = npt.NDArray[np.float64]
#: A coordinate system: ``(path of the group that holds it, relative to the scene; name)``.
SystemKey = tuple[str, str]


class NonInvertibleTransformError(NgffDregError, ValueError):
    """A path between coordinate systems needs the inverse of a step that has none."""


class CoordinateSystemNotFoundError(NgffDregError, KeyError):
    """No coordinate system of that name in the scene."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoPathError(NgffDregError, LookupError):
    """No chain of transforms joins the two coordinate systems."""


class ArraySource(Protocol):
    """Arrays of a store, by path relative to the scene (parameters and field levels)."""

    def array(self, path: str) -> Any:
        """The array at ``path`` (anything NumPy-indexable with a ``shape``)."""

    def attributes(self, path: str) -> Mapping[str, Any]:
        """The attributes of the group at ``path``."""


def _points(points: npt.ArrayLike) -> FloatArray:
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if pts.ndim != 2:
        raise ValueError(f"points must be (n, ndim), got shape {pts.shape}")
    return pts


class PointMap(ABC):
    """A map of points from one coordinate system to another."""

    #: Short description naming the step (type, and path where there is one).
    label: str = ""

    @abstractmethod
    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Map ``(n, ndim_in)`` points to ``(n, ndim_out)``."""

    @abstractmethod
    def inverse(self) -> PointMap:
        """The inverse map; raises :class:`NonInvertibleTransformError` if there is none."""

    def homogeneous(self) -> FloatArray | None:
        """The ``(out+1, in+1)`` matrix of a linear map, ``None`` otherwise."""
        return None


@dataclass(frozen=True)
class Linear(PointMap):
    """``y = A x + t`` given as a homogeneous ``(out+1, in+1)`` matrix."""

    matrix: FloatArray
    label: str = "affine"

    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Map points."""
        pts = _points(points)
        n_in = self.matrix.shape[1] - 1
        if pts.shape[1] != n_in:
            raise ValueError(f"{self.label}: points have {pts.shape[1]} coordinates, "
                             f"the transform takes {n_in}")
        out: FloatArray = pts @ self.matrix[:-1, :-1].T + self.matrix[:-1, -1]
        return out

    def inverse(self) -> PointMap:
        """The inverse matrix (square and non-singular only)."""
        m = self.matrix
        if m.shape[0] != m.shape[1] or abs(np.linalg.det(m)) < 1e-300:
            raise NonInvertibleTransformError(
                f"{self.label}: a {m.shape[0] - 1}x{m.shape[1] - 1} linear map that is not "
                "invertible")
        return Linear(np.asarray(np.linalg.inv(m), dtype=np.float64), f"inverse of {self.label}")

    def homogeneous(self) -> FloatArray | None:
        """The matrix."""
        return self.matrix


@dataclass(frozen=True)
class Chain(PointMap):
    """Maps applied first to last (a ``sequence``, or a path through the graph)."""

    parts: tuple[PointMap, ...]
    label: str = "sequence"

    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Map points through every part in order."""
        pts = _points(points)
        for p in self.parts:
            pts = p(pts)
        return pts

    def inverse(self) -> PointMap:
        """Each part inverted, in reverse order."""
        return Chain(tuple(p.inverse() for p in reversed(self.parts)),
                     f"inverse of {self.label}")

    def homogeneous(self) -> FloatArray | None:
        """The product of the parts' matrices, when all are linear."""
        out: FloatArray | None = None
        for p in self.parts:
            h = p.homogeneous()
            if h is None:
                return None
            out = h if out is None else h @ out
        return out


@dataclass(frozen=True)
class Bijection(PointMap):
    """A ``bijection``: a forward map with its stored inverse."""

    forward: PointMap
    backward: PointMap
    label: str = "bijection"

    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Map points with the forward map."""
        return self.forward(points)

    def inverse(self) -> PointMap:
        """The stored inverse (as a bijection whose inverse is the forward map)."""
        return Bijection(self.backward, self.forward, f"inverse of {self.label}")

    def homogeneous(self) -> FloatArray | None:
        """The forward map's matrix."""
        return self.forward.homogeneous()


@dataclass(frozen=True)
class ByDimension(PointMap):
    """A ``byDimension``: each part maps some input axes to some output axes."""

    parts: tuple[tuple[PointMap, tuple[int, ...], tuple[int, ...]], ...]
    n_out: int
    label: str = "byDimension"

    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Map points, part by part."""
        pts = _points(points)
        out = np.zeros((pts.shape[0], self.n_out))
        for part, ins, outs in self.parts:
            out[:, list(outs)] = part(pts[:, list(ins)])
        return out

    def inverse(self) -> PointMap:
        """Each part inverted, mapping its output axes back to its input axes."""
        n_in = 1 + max((max(ins) for _, ins, _ in self.parts if ins), default=-1)
        return ByDimension(tuple((p.inverse(), outs, ins) for p, ins, outs in self.parts),
                           n_in, f"inverse of {self.label}")


@dataclass
class Field(PointMap):
    """A ``displacements`` (``x + d(x)``) or ``coordinates`` (``c(x)``) field.

    ``vectors(box)`` returns the stored vectors over an index box, with the
    vector axis first; the field's grid maps index ``i`` to ``scale * i +
    translation`` in the input system. Only the box around the points is read.
    """

    kind: str
    shape: tuple[int, ...]
    scale: FloatArray
    translation: FloatArray
    vectors: Callable[[tuple[slice, ...]], FloatArray] = field(repr=False)
    order: int = 1
    label: str = "displacements"
    #: The point coordinate each array axis of the field stands for (its axes matched
    #: to the input system's by name); ``None``: the same order.
    perm: tuple[int, ...] | None = None

    def __call__(self, points: npt.ArrayLike) -> FloatArray:
        """Sample the field at the points (linear or nearest, clamped at the border).

        The vectors' components are in the system's axis order (RFC-5: the
        ``i``-th component is along the ``i``-th axis of the output system).
        """
        from scipy.ndimage import map_coordinates

        pts = _points(points)
        if pts.shape[1] != len(self.shape):
            raise ValueError(f"{self.label}: points have {pts.shape[1]} coordinates, the "
                             f"field has {len(self.shape)} axes")
        if pts.shape[0] == 0:
            return pts.copy()
        on_grid = pts if self.perm is None else pts[:, list(self.perm)]
        idx = (on_grid - self.translation) / self.scale
        idx = np.clip(idx, 0, np.asarray(self.shape) - 1)
        lo = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.floor(idx.max(axis=0)).astype(int) + 2, self.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        vec = np.asarray(self.vectors(box), dtype=np.float64)
        local = (idx - lo).T
        sampled = np.stack([map_coordinates(v, local, order=self.order, mode="nearest")
                            for v in vec], axis=1)
        return pts + sampled if self.kind == "displacements" else sampled

    def inverse(self) -> PointMap:
        """A field has no closed-form inverse: store a ``bijection``."""
        raise NonInvertibleTransformError(
            f"{self.label}: a {self.kind} field has no closed-form inverse (a bijection "
            "holding its inverse is needed)")


# ------------------------------------------------------------------ parsing
_LINEAR_TYPES = ("identity", "translation", "scale", "affine", "rotation", "mapAxis")


def _values(t: Mapping[str, Any], key: str, arrays: ArraySource | None, where: str
            ) -> FloatArray:
    """A parameter given inline under ``key`` or as an array at ``path``."""
    if key in t:
        return np.asarray(t[key], dtype=np.float64)
    path = t.get("path")
    if isinstance(path, str) and arrays is not None:
        return np.asarray(arrays.array(path)[...], dtype=np.float64)
    raise InvalidMetadataError(f"{where}: {t.get('type')} has neither {key!r} nor a 'path'")


def _linear(t: Mapping[str, Any], arrays: ArraySource | None, where: str,
            ndim: int | None) -> Linear:
    kind = str(t.get("type"))
    label = f"{kind} ({where})"
    if kind == "identity":
        if ndim is None:
            raise InvalidMetadataError(f"{where}: identity of unknown dimension")
        return Linear(np.eye(ndim + 1), label)
    if kind in ("translation", "scale"):
        v = _values(t, kind, arrays, where).ravel()
        h = np.eye(len(v) + 1)
        if kind == "translation":
            h[:-1, -1] = v
        else:
            h[:-1, :-1] = np.diag(v)
        return Linear(h, label)
    if kind == "mapAxis":
        picks = [int(i) for i in _values(t, "mapAxis", arrays, where).ravel()]
        h = np.zeros((len(picks) + 1, len(picks) + 1))
        for out_axis, in_axis in enumerate(picks):
            h[out_axis, in_axis] = 1.0
        h[-1, -1] = 1.0
        return Linear(h, label)
    m = np.atleast_2d(_values(t, "affine" if kind == "affine" else "rotation", arrays, where))
    if kind == "rotation":
        if m.shape[0] != m.shape[1]:
            raise InvalidMetadataError(f"{where}: rotation must be square, got {m.shape}")
        m = np.hstack([m, np.zeros((m.shape[0], 1))])
    elif m.shape[0] == m.shape[1]:  # the (N+1)x(N+1) homogeneous form
        m = m[:-1]
    if m.ndim != 2 or m.shape[1] < 2:
        raise InvalidMetadataError(f"{where}: affine of shape {m.shape}")
    h = np.vstack([m, np.zeros((1, m.shape[1]))])
    h[-1, -1] = 1.0
    return Linear(h, label)


def _axis_order(field_names: Sequence[str], names: Sequence[str] | None
                ) -> tuple[int, ...] | None:
    """Which point coordinate each field axis is, matched by name (``None``: positional)."""
    if names is None or list(field_names) == list(names):
        return None
    if sorted(field_names) != sorted(names) or len(set(names)) != len(names):
        return None  # not the same names: keep the stored order
    return tuple(list(names).index(n) for n in field_names)


def _field(t: Mapping[str, Any], arrays: ArraySource | None, where: str,
           names: Sequence[str] | None = None) -> Field:
    kind = str(t["type"])
    path = t.get("path")
    if not isinstance(path, str) or arrays is None:
        raise InvalidMetadataError(f"{where}: {kind} needs a 'path' to a field group")
    attrs = arrays.attributes(path)
    ome = attrs.get("ome", attrs)
    try:
        ms = ome["multiscales"][0]
        ds = ms["datasets"][0]
        systems = ms.get("coordinateSystems") or [{"axes": ms.get("axes")}]
        axes = systems[-1]["axes"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidMetadataError(f"{where}: {path} is not a multiscale field group") from exc
    kinds = [a.get("type") if isinstance(a, Mapping) else None for a in axes]
    vec_axis = next((i for i, k in enumerate(kinds) if k in ("displacement", "coordinate")),
                    None)
    if vec_axis is None:
        raise InvalidMetadataError(f"{where}: {path} has no axis of type 'displacement' or "
                                   f"'coordinate' (axes types {kinds})")
    grid = Chain(tuple(_parse(ct, arrays, f"{where} -> {path}", len(axes))
                       for ct in ds.get("coordinateTransformations", [])))
    h = grid.homogeneous()
    if h is None or not np.allclose(h[:-1, :-1], np.diag(np.diag(h[:-1, :-1]))):
        raise InvalidMetadataError(f"{where}: the field {path} is not placed by a scale "
                                   "and translation")
    keep = [i for i in range(len(axes)) if i != vec_axis]
    scale = np.diag(h[:-1, :-1])[keep]
    trans = h[:-1, -1][keep]
    arr = arrays.array(f"{path}/{ds['path']}")
    shape = tuple(int(s) for i, s in enumerate(arr.shape) if i != vec_axis)

    def vectors(box: tuple[slice, ...]) -> FloatArray:
        sel = list(box)
        sel.insert(vec_axis, slice(None))
        data = np.asarray(arr[tuple(sel)], dtype=np.float64)
        return np.moveaxis(data, vec_axis, 0)

    interp = t.get("interpolation", "linear")
    order = 0 if interp == "nearest" else 1
    field_names = [str(a.get("name")) if isinstance(a, Mapping) else "" for a in axes]
    perm = _axis_order([n for i, n in enumerate(field_names) if i != vec_axis], names)
    return Field(kind, shape, scale, trans, vectors, order, f"{kind} {path} ({where})", perm)


Names = tuple[tuple[str, ...] | None, tuple[str, ...] | None]
"""The axis names of a transform's input and output systems, where known."""


def _names_after(step: PointMap, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The axis names after a step of a sequence: kept, permuted by ``mapAxis``, else lost."""
    if names is None:
        return None
    if isinstance(step, Field):
        return names if step.kind == "displacements" else None
    h = step.homogeneous()
    if h is None or h.shape != (len(names) + 1, len(names) + 1):
        return None
    if step.label.startswith("mapAxis"):
        return tuple(names[int(np.argmax(row))] for row in h[:-1, :-1])
    return names


def _parse(t: Any, arrays: ArraySource | None, where: str, ndim: int | None,
           names: Names = (None, None)) -> PointMap:
    if not isinstance(t, Mapping) or "type" not in t:
        raise InvalidMetadataError(f"{where}: not a transform: {t!r}")
    kind = t["type"]
    if kind in _LINEAR_TYPES:
        return _linear(t, arrays, where, ndim)
    if kind == "sequence":
        items = t.get("transformations")
        if not isinstance(items, list):
            raise InvalidMetadataError(f"{where}: sequence without 'transformations'")
        parts: list[PointMap] = []
        current = names[0]
        for i, it in enumerate(items):
            part = _parse(it, arrays, f"{where}.transformations[{i}]", ndim, (current, None))
            current = _names_after(part, current)
            parts.append(part)
        return Chain(tuple(parts), f"sequence ({where})")
    if kind == "bijection":
        if "forward" not in t or "inverse" not in t:
            raise InvalidMetadataError(f"{where}: a bijection needs 'forward' and 'inverse'")
        return Bijection(_parse(t["forward"], arrays, f"{where}.forward", ndim, names),
                         _parse(t["inverse"], arrays, f"{where}.inverse", ndim,
                                (names[1], names[0])),
                         f"bijection ({where})")
    if kind == "byDimension":
        items = t.get("transformations")
        if not isinstance(items, list):
            raise InvalidMetadataError(f"{where}: byDimension without 'transformations'")
        out_parts = []
        n_out = 0
        for i, it in enumerate(items):
            k = f"{where}.transformations[{i}]"
            inner = it.get("transformation", it) if isinstance(it, Mapping) else it
            ins = _axes_list(it, ("inputAxes", "input_axes"), k)
            outs = _axes_list(it, ("outputAxes", "output_axes"), k)
            sub = (_pick(names[0], ins), _pick(names[1], outs))
            out_parts.append((_parse(inner, arrays, k, len(ins), sub), ins, outs))
            n_out = max(n_out, 1 + max(outs, default=-1))
        return ByDimension(tuple(out_parts), n_out, f"byDimension ({where})")
    if kind in ("displacements", "coordinates"):
        return _field(t, arrays, where, names[0])
    raise InvalidMetadataError(f"{where}: unsupported transform type {kind!r}")


def _pick(names: tuple[str, ...] | None, axes: tuple[int, ...]) -> tuple[str, ...] | None:
    if names is None or any(not 0 <= a < len(names) for a in axes):
        return None
    return tuple(names[a] for a in axes)


def _axes_list(it: Any, keys: tuple[str, ...], where: str) -> tuple[int, ...]:
    for key in keys:
        if isinstance(it, Mapping) and key in it:
            return tuple(int(a) for a in it[key])
    raise InvalidMetadataError(f"{where}: missing {keys[0]!r}")


def parse_transform(t: Mapping[str, Any], arrays: ArraySource | None = None, *,
                    where: str = "transform", ndim: int | None = None,
                    input_axes: Sequence[str] | None = None,
                    output_axes: Sequence[str] | None = None) -> PointMap:
    """Parse one RFC-5 transform into a :class:`PointMap`.

    Parameters
    ----------
    t:
        The transform's JSON object.
    arrays:
        Reaches parameter arrays and field groups by ``path`` (relative to the
        group that holds ``t``); ``None`` when every parameter is inline.
    where:
        Where ``t`` was found, for error messages (file and key).
    ndim:
        Input dimension, needed only by a bare ``identity``.
    input_axes, output_axes:
        Axis names of the input and output systems, where known: a field whose
        own spatial axes are the same names in another order is matched to the
        points by name (e.g. a field stored ``z, y, x`` in a system ``x, y, z``).

    Raises
    ------
    InvalidMetadataError
        A malformed or unsupported transform, naming ``where``.

    """
    names: Names = (None if input_axes is None else tuple(input_axes),
                    None if output_axes is None else tuple(output_axes))
    return _parse(t, arrays, where, ndim, names)


# ------------------------------------------------------------------ the graph
def reference(ref: Any, where: str) -> SystemKey:
    """``(path, name)`` of an ``input``/``output``: an object ``{path?, name?}`` or a name."""
    if isinstance(ref, str):
        return ("", ref)
    if isinstance(ref, Mapping):
        path = ref.get("path") or ""
        name = ref.get("name") or ""
        if not isinstance(path, str) or not isinstance(name, str):
            raise InvalidMetadataError(f"{where}: path and name must be strings: {ref!r}")
        return (path.strip("/"), name)
    raise InvalidMetadataError(f"{where}: expected a coordinate-system reference, got {ref!r}")


@dataclass(frozen=True)
class Edge:
    """One stored transform between two coordinate systems."""

    source: SystemKey
    target: SystemKey
    transform: PointMap
    where: str


@dataclass
class SceneGraph:
    """Coordinate systems (with their axes) and the transforms that join them."""

    systems: dict[SystemKey, list[Mapping[str, Any]]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    where: str = "scene"

    def add_system(self, key: SystemKey, axes: Sequence[Mapping[str, Any]]) -> None:
        """Declare a coordinate system."""
        self.systems[key] = list(axes)

    def add_edge(self, edge: Edge) -> None:
        """Add a stored transform (its systems are declared if new, without axes)."""
        for key in (edge.source, edge.target):
            self.systems.setdefault(key, [])
        self.edges.append(edge)

    def ndim(self, key: SystemKey) -> int | None:
        """Number of axes of a system (``None`` when its axes are unknown)."""
        axes = self.systems.get(key)
        return len(axes) if axes else None

    def resolve(self, name: str) -> SystemKey:
        """The system called ``name`` (or ``path/name``, or ``path`` alone for an image).

        Raises :class:`CoordinateSystemNotFoundError` for none, and
        :class:`InvalidMetadataError` for a name found in several groups.
        """
        if name in {k[1] for k in self.systems if k[0] == ""}:
            return ("", name)
        found = [k for k in self.systems if k[1] == name]
        if "/" in name or not found:
            path, _, last = name.rpartition("/")
            found = found or [k for k in self.systems if k == (path, last)]
        if not found:
            images = sorted({k for k in self.systems if k[0] == name.strip("/")})
            found = images[-1:] if images else []
        if not found:
            raise CoordinateSystemNotFoundError(
                f"{self.where}: no coordinate system {name!r}; it has "
                f"{sorted(self.describe_names())}")
        if len(found) > 1:
            raise InvalidMetadataError(
                f"{self.where}: {name!r} names systems in several groups "
                f"{sorted(k[0] for k in found)}; write it as path/name")
        return found[0]

    def describe_names(self) -> list[str]:
        """Every system as ``name`` (scene) or ``path/name`` (image)."""
        return [n if not p else f"{p}/{n}" for p, n in self.systems]

    def path(self, source: SystemKey, target: SystemKey) -> PointMap:
        """The map from ``source`` to ``target``: the shortest chain of stored transforms.

        A transform may be walked backwards through its inverse (at each
        step the stored directions are tried first). Raises
        :class:`NonInvertibleTransformError` naming the step when every path
        needs an inverse that does not exist, and :class:`NoPathError` when
        the systems are not joined at all.
        """
        for key in (source, target):
            if key not in self.systems:
                raise CoordinateSystemNotFoundError(f"{self.where}: no coordinate system {key}")
        if source == target:
            n = self.ndim(source)
            return Chain((), "identity") if n is None else Linear(np.eye(n + 1), "identity")
        blocked: list[str] = []
        steps = self._search(source, target, blocked)
        if steps is None:
            if blocked and self._connected(source, target):
                raise NonInvertibleTransformError(
                    f"{self.where}: from {source} to {target} needs an inverse that does not "
                    f"exist: {blocked[0]}")
            raise NoPathError(f"{self.where}: no transforms join {source} and {target}")
        return steps[0] if len(steps) == 1 else Chain(tuple(steps), "path")

    def _connected(self, source: SystemKey, target: SystemKey) -> bool:
        """Whether the systems are joined when every transform is walked either way."""
        seen = {source}
        todo = [source]
        while todo:
            here = todo.pop()
            for e in self.edges:
                for a, b in ((e.source, e.target), (e.target, e.source)):
                    if a == here and b not in seen:
                        seen.add(b)
                        todo.append(b)
        return target in seen

    def _search(self, source: SystemKey, target: SystemKey, blocked: list[str]
                ) -> list[PointMap] | None:
        prev: dict[SystemKey, tuple[SystemKey, PointMap] | None] = {source: None}
        queue: deque[SystemKey] = deque([source])
        while queue:
            here = queue.popleft()
            if here == target:
                break
            for edge in self.edges:
                if edge.source == here and edge.target not in prev:
                    prev[edge.target] = (here, edge.transform)
                    queue.append(edge.target)
            for edge in self.edges:
                if edge.target == here and edge.source not in prev:
                    try:
                        inv = edge.transform.inverse()
                    except NonInvertibleTransformError as exc:
                        blocked.append(f"{exc} [{edge.where}]")
                        continue
                    prev[edge.source] = (here, inv)
                    queue.append(edge.source)
        if target not in prev:
            return None
        steps: list[PointMap] = []
        node = target
        while prev[node] is not None:
            back = prev[node]
            assert back is not None
            node, step = back
            steps.append(step)
        return steps[::-1]
