"""Graph building that stays cheap at tens of thousands of tasks per graph.

Building a graph with :func:`dask.delayed`, dask walks every argument of a
call for collections to depend on: lists, dicts and the fields of
dataclasses, at every depth, and merges the graphs of the collections it
finds. A block task's plan (boxes, slices, geometry) costs about 2 ms of
client time a call that way, and one call over a slab's 20 000 status and
blend tasks minutes and gigabytes. So:

* :class:`Sealed` wraps an argument that holds no dask collection; dask
  passes it to the task as it is, without a walk;
* :func:`task_layer` makes many tasks as one graph layer, each naming the
  tasks it needs by key (dask's plain task tuples), with the graphs of its
  dependencies merged once; :class:`Layer` does so for calls with any
  arguments, and :func:`one_task` for a single call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.typing import Key

__all__ = ["Layer", "Sealed", "one_task", "task_layer"]


def task_layer(name: str, tasks: Mapping[Key, Any], dependencies: Sequence[Any],
               annotations: Mapping[str, Any] | None = None) -> list[Delayed]:
    """One :class:`~dask.delayed.Delayed` per task of a new graph layer ``name``.

    ``tasks`` maps each key to a task tuple ``(function, *arguments)``; an
    argument that is the key of a task in ``dependencies`` (or a list of such
    keys) is replaced by that task's value, any other is passed as it is
    (wrap objects dask would look into in :class:`Sealed`). ``dependencies``
    are the collections those keys come from. ``annotations`` are the
    layer's (a callable value is called with each key), over those of any
    :func:`dask.annotate` around the call.
    """
    merged = {**dask.get_annotations(), **(annotations or {})}
    layer = MaterializedLayer(dict(tasks), annotations=merged or None)
    graph = _layer_graph(name, layer, dependencies)
    return [Delayed(key, graph, layer=name) for key in tasks]


def _layer_graph(name: str, tasks: MaterializedLayer, dependencies: Sequence[Any]
                 ) -> HighLevelGraph:
    """:meth:`HighLevelGraph.from_collections`, merging each distinct graph once.

    Thousands of dependencies often share one graph (a layer's tasks): dask
    merges its layers again for each of them, which at a slab's 20 000
    samples costs seconds of client time.
    """
    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    names: set[str] = set()
    # the graphs themselves are kept: a collection may make its graph anew on
    # each call, and an id is reused once its object is gone
    merged: dict[int, HighLevelGraph] = {}
    for collection in dependencies:
        graph = collection.__dask_graph__()
        if not isinstance(graph, HighLevelGraph):  # dask's own merge handles those
            return HighLevelGraph.from_collections(name, tasks, dependencies=list(dependencies))
        names.update(collection.__dask_layers__())
        if id(graph) not in merged:
            merged[id(graph)] = graph
            layers.update(graph.layers)
            deps.update(graph.dependencies)
    layers[name] = tasks
    deps[name] = names
    return HighLevelGraph(layers, deps)


class Sealed:
    """A task argument holding no dask collection, passed to the task as it is (``.value``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __dask_tokenize__(self) -> Any:
        return tokenize(self.value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sealed, (self.value,))


def _apply(func: Sealed, *args: Any) -> Any:
    return func.value(*(a.value if isinstance(a, Sealed) else a for a in args))


class Layer:
    """Calls made as one graph layer (:func:`task_layer`).

    An argument that is a :class:`~dask.delayed.Delayed`, or a non-empty list
    or tuple of them (passed on as a list), is the value of that task; any
    other argument is passed as it is.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: dict[Key, Any] = {}
        self.dependencies: dict[Key, Any] = {}

    def _arg(self, value: Any) -> Any:
        if isinstance(value, Delayed):
            self.dependencies[value.key] = value
            return value.key
        if (isinstance(value, (list, tuple)) and value
                and all(isinstance(v, Delayed) for v in value)):
            return [self._arg(v) for v in value]
        return Sealed(value)

    def add(self, key: Key, func: Callable[..., Any], *args: Any) -> None:
        """Add the task ``key``: ``func(*args)``."""
        self.tasks[key] = (_apply, Sealed(func), *(self._arg(a) for a in args))

    def build(self, annotations: Mapping[str, Any] | None = None) -> list[Delayed]:
        """The layer's tasks, in the order they were added (``annotations``: the layer's)."""
        return task_layer(self.name, self.tasks, list(self.dependencies.values()), annotations)


def one_task(key: str, func: Callable[..., Any], *args: Any) -> Delayed:
    """The task ``key``: ``func(*args)``, made as :class:`Layer` makes its calls."""
    layer = Layer(key)
    layer.add(key, func, *args)
    return layer.build()[0]
