"""task_args.Sealed: passed to tasks as it is, tokenized and pickled by its value."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

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
