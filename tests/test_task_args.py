"""task_args.Sealed: passed to tasks as it is, tokenized and pickled by its value."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import dask
from dask.base import tokenize

from ngff_dreg.task_args import Sealed


@dataclass(frozen=True)
class _Plan:
    index: tuple[int, ...]
    slices: tuple[slice, ...]


def _value(sealed: Sealed) -> _Plan:
    assert isinstance(sealed, Sealed)  # the task gets the wrapper, not a walked copy
    return sealed.value


def test_a_sealed_argument_reaches_the_task_as_it_is() -> None:
    plan = _Plan((1, 2), (slice(0, 4), slice(4, 8)))
    task = dask.delayed(_value, pure=True)(Sealed(plan))
    assert task.compute(scheduler="sync") == plan


def test_sealed_values_tokenize_and_pickle_by_their_value() -> None:
    a, b = Sealed(_Plan((1,), (slice(0, 2),))), Sealed(_Plan((1,), (slice(0, 2),)))
    assert tokenize(a) == tokenize(b)
    assert tokenize(a) != tokenize(Sealed(_Plan((2,), (slice(0, 2),))))
    assert pickle.loads(pickle.dumps(a)).value == a.value


def _total(label: str, parts: list[int], extra: int | None, plan: _Plan) -> tuple[Any, ...]:
    return label, sum(parts), extra, plan


def test_a_layer_resolves_tasks_and_lists_of_tasks_and_passes_the_rest_as_is() -> None:
    from ngff_dreg.task_args import Layer, one_task

    parts = [dask.delayed(lambda i: i * i, pure=True)(i, dask_key_name=f"sq-{i}")
             for i in range(5)]
    plan = _Plan((3,), (slice(1, 2),))
    layer = Layer("totals")
    layer.add("total-a", _total, "a", parts[:3], None, plan)
    layer.add("total-b", _total, "sq-1", parts[3:], parts[0], plan)  # a string stays a string
    a, b = layer.build()
    assert dask.compute(a, b, scheduler="sync") == (("a", 5, None, plan), ("sq-1", 25, 0, plan))
    single = one_task("one", _total, "c", [], 7, plan)  # an empty list is a value
    assert single.compute(scheduler="sync") == ("c", 0, 7, plan)
    assert len(a.__dask_graph__().layers["totals"]) == 2  # one layer for both


def test_a_layers_annotations_are_given_per_key_over_the_surrounding_ones() -> None:
    from ngff_dreg.task_args import Layer

    layer = Layer("annotated")
    for key in ("x-0", "x-1"):
        layer.add(key, int, 1)
    with dask.annotate(retries=2):
        tasks = layer.build({"workers": lambda key: [f"w-{key}"]})
    annotations = tasks[0].__dask_graph__().layers["annotated"].annotations
    assert annotations["retries"] == 2
    assert [annotations["workers"](t.key) for t in tasks] == [["w-x-0"], ["w-x-1"]]


def test_a_layer_over_many_leaves_whose_graphs_are_made_on_each_call() -> None:
    from ngff_dreg.task_args import one_task

    # a delayed value makes its graph anew each time it is asked for it, so the
    # merge must not take a freed graph's reused id for one it has seen
    leaves = [dask.delayed(_Plan((i,), ()), pure=False) for i in range(300)]
    total = one_task("leaf-total", lambda plans: sum(p.index[0] for p in plans), leaves)
    assert total.compute(scheduler="sync") == sum(range(300))
