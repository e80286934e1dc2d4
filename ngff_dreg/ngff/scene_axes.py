"""Points with named spatial coordinates, carried into and out of a scene's coordinate systems.

ngff-dreg's points are spatial only, with coordinates named ``x, y, z`` (ITK
order; a table's columns, an image's physical points). A coordinate system
of an RFC-5 scene may order its axes otherwise (``x, y, z`` as well as ``z,
y, x``) and may carry ``time`` or ``channel`` axes. :func:`spatial_map` wraps
the map between two systems so that it takes and returns named spatial
points: each coordinate goes to the system's axis of type ``space`` with the
same name, every other axis of the source system is set to 0, and only the
target system's spatial axes of those names are kept. A system whose spatial
axes are not exactly the points' names is refused with an
:class:`AxisMismatchError` naming it. Pure NumPy, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.ngff.scene_graph import Chain, Linear, PointMap, SceneGraph, SystemKey

__all__ = ["ITK_NAMES", "AxisMismatchError", "check_point_count", "spatial_map",
           "spatial_names", "spatial_unit"]

#: The names of ngff-dreg's point coordinates, ITK order, by dimension.
ITK_NAMES = {2: ("x", "y"), 3: ("x", "y", "z")}
_SPACE_NAMES = {"x", "y", "z"}


class AxisMismatchError(InvalidMetadataError):
    """Points do not fit the axes of a coordinate system (names, count or none declared)."""


def _label(key: SystemKey) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def _is_space(axis: Mapping[str, Any]) -> bool:
    kind = axis.get("type")
    return kind == "space" or (kind is None and axis.get("name") in _SPACE_NAMES)


def _axes(graph: SceneGraph, key: SystemKey) -> list[Mapping[str, Any]]:
    axes = graph.systems.get(key) or []
    if not axes:
        raise AxisMismatchError(f"{graph.where}: coordinate system {_label(key)!r} declares "
                                "no axes, so its spatial axes cannot be matched by name")
    return axes


def spatial_names(graph: SceneGraph, key: SystemKey) -> tuple[str, ...]:
    """Names of the axes of type ``space`` of a system, in the system's order."""
    return tuple(str(a.get("name")) for a in _axes(graph, key) if _is_space(a))


def spatial_unit(graph: SceneGraph, key: SystemKey) -> str | None:
    """The unit of a system's first spatial axis that gives one (``None`` if none does)."""
    units = [a.get("unit") for a in graph.systems.get(key) or [] if _is_space(a)]
    return next((str(u) for u in units if u), None)


def _positions(graph: SceneGraph, key: SystemKey, names: Sequence[str]) -> list[int]:
    """Index, among the system's axes, of the spatial axis called each of ``names``."""
    axes = _axes(graph, key)
    space = {str(a.get("name")): i for i, a in enumerate(axes) if _is_space(a)}
    if sorted(space) != sorted(names):
        listed = ", ".join(f"{a.get('name')}[{a.get('type', '?')}]" for a in axes)
        raise AxisMismatchError(
            f"{graph.where}: coordinate system {_label(key)!r} has spatial axes "
            f"{sorted(space) or 'none'} (axes: {listed}); the points have "
            f"{', '.join(names)}")
    return [space[n] for n in names]


def _embedding(graph: SceneGraph, key: SystemKey, names: Sequence[str]) -> Linear:
    """Named points -> the system's full axis order (other axes 0)."""
    n_axes = len(_axes(graph, key))
    h = np.zeros((n_axes + 1, len(names) + 1))
    for j, i in enumerate(_positions(graph, key, names)):
        h[i, j] = 1.0
    h[-1, -1] = 1.0
    return Linear(h, f"spatial axes {', '.join(names)} into {_label(key)!r}")


def _projection(graph: SceneGraph, key: SystemKey, names: Sequence[str]) -> Linear:
    """The system's full axis order -> its spatial axes called ``names``."""
    n_axes = len(_axes(graph, key))
    h = np.zeros((len(names) + 1, n_axes + 1))
    for j, i in enumerate(_positions(graph, key, names)):
        h[j, i] = 1.0
    h[-1, -1] = 1.0
    return Linear(h, f"spatial axes {', '.join(names)} of {_label(key)!r}")


def spatial_map(graph: SceneGraph, source: SystemKey, target: SystemKey,
                names: Sequence[str], target_names: Sequence[str] | None = None) -> PointMap:
    """The map from ``source`` to ``target`` on points whose coordinates are ``names``.

    Parameters
    ----------
    graph:
        The scene.
    source, target:
        The two systems (:meth:`SceneGraph.resolve`).
    names:
        Names of the points' coordinates, in the order the points give them
        (e.g. ``("z", "y", "x")``); each must be a spatial axis of ``source``.
    target_names:
        Names of the mapped points' coordinates (default ``names``); each
        must be a spatial axis of ``target``.

    Raises
    ------
    AxisMismatchError
        A system declares no axes, or its spatial axes are not exactly the
        names given; the message names the system and lists its axes.
    NonInvertibleTransformError, NoPathError
        As :meth:`SceneGraph.path`.

    """
    out = tuple(names if target_names is None else target_names)
    embed = _embedding(graph, source, names)
    project = _projection(graph, target, out)
    return Chain((embed, graph.path(source, target), project),
                 f"{_label(source)} -> {_label(target)} on axes {', '.join(names)}")


def check_point_count(graph: SceneGraph, key: SystemKey, points: Any) -> None:
    """Refuse points whose coordinate count is not the system's axis count (when it has axes).

    For points given in a system's own axis order (``transform-coords``).
    """
    axes = graph.systems.get(key) or []
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if axes and pts.size and pts.shape[-1] != len(axes):
        listed = ", ".join(str(a.get("name")) for a in axes)
        raise AxisMismatchError(
            f"{graph.where}: coordinate system {_label(key)!r} has {len(axes)} axes "
            f"({listed}); the coordinates have {pts.shape[-1]}")
