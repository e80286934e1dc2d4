"""reduce.graph pieces that are pure logic (its graphs run in test_pipeline, test_slab_stage)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ngff_dreg.geometry import Box
from ngff_dreg.reduce.graph import ReachIndex


def _random_box(rng: np.random.Generator, shape: tuple[int, ...]) -> Box:
    start = tuple(int(rng.integers(-5, n)) for n in shape)
    stop = tuple(int(a + rng.integers(0, 30)) for a in start)
    return Box(start, stop)


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_reach_index_finds_what_testing_every_box_finds(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    shape = (70, 90, 50)[:ndim]
    chunks = (16, 32, 8)[:ndim]
    boxes = [_random_box(rng, shape) for _ in range(300)]
    index = ReachIndex(boxes, chunks)
    cells = [range(0, n, c) for n, c in zip(shape, chunks)]
    queries = [Box(tuple(lo), tuple(min(a + c, n) for a, c, n in zip(lo, chunks, shape)))
               for lo in itertools.product(*cells)]
    queries += [_random_box(rng, shape) for _ in range(50)]
    for q in queries:
        brute = [i for i, b in enumerate(boxes) if not b.intersect(q).is_empty]
        assert index.reaching(q) == brute
    # an empty reach box reaches nothing
    assert ReachIndex([Box((3,) * ndim, (3,) * ndim)], chunks).reaching(
        Box((0,) * ndim, shape)) == []
