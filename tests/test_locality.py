"""Block placement by machine (ngff_dreg.locality): pure logic, no cluster."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ngff_dreg.blocks import plan_blocks
from ngff_dreg.engine import BlockOptions, preferred_workers
from ngff_dreg.locality import (
    group_blocks,
    machines_of,
    place_blocks,
    shared_chunk_count,
    slab_order,
)


def _grid(*shape: int) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in i) for i in itertools.product(*[range(s) for s in shape])]


def _connected(members: list[tuple[int, ...]]) -> bool:
    """True when the blocks form one face-connected piece of the grid."""
    left = set(members)
    stack = [members[0]]
    left.discard(members[0])
    while stack:
        cur = stack.pop()
        for axis in range(len(cur)):
            for step in (-1, 1):
                nb = tuple(c + (step if a == axis else 0) for a, c in enumerate(cur))
                if nb in left:
                    left.discard(nb)
                    stack.append(nb)
    return not left


@pytest.mark.parametrize("shape", [(4, 4, 4), (3, 5, 7), (1, 2, 2), (2, 2, 2), (6, 9), (10, 3, 2)])
@pytest.mark.parametrize("n_groups", [1, 2, 3, 4, 8])
def test_every_block_in_one_contiguous_balanced_group(shape: tuple[int, ...],
                                                      n_groups: int) -> None:
    idx = _grid(*shape)
    groups = group_blocks(idx, n_groups)
    assert len(groups) == len(idx)  # every block assigned, once
    used = sorted(set(groups))
    assert used == list(range(min(n_groups, len(idx))))
    sizes = [groups.count(g) for g in used]
    assert max(sizes) <= 2 * -(-len(idx) // len(used)), sizes
    for g in used:
        members = [b for b, gi in zip(idx, groups) if gi == g]
        assert _connected(members), (g, members)


def test_groups_of_a_cube_are_octants() -> None:
    idx = _grid(4, 4, 4)
    groups = group_blocks(idx, 8)
    for g in range(8):
        members = np.array([b for b, gi in zip(idx, groups) if gi == g])
        assert (members.max(axis=0) - members.min(axis=0)).tolist() == [1, 1, 1]


def _round_robin(n: int, k: int) -> list[int]:
    return [i % k for i in range(n)]


@pytest.mark.parametrize("n_groups", [2, 4, 8])
def test_groups_share_fewer_halo_chunks_than_round_robin(n_groups: int) -> None:
    shape, block, chunk = (512, 512, 512), (128, 128, 128), (64, 64, 64)
    plans, _ = plan_blocks(shape, block, 0.5)
    idx = [p.info.chunk_index for p in plans]
    boxes = [p.padded for p in plans]
    ours = shared_chunk_count(boxes, group_blocks(idx, n_groups), chunk)
    robin = shared_chunk_count(boxes, _round_robin(len(idx), n_groups), chunk)
    slabs = shared_chunk_count(boxes, slab_order(idx, n_groups), chunk)
    assert ours < robin, (ours, robin)
    assert ours <= slabs, (ours, slabs)  # compact groups: no more than slabs
    assert shared_chunk_count(boxes, [0] * len(idx), chunk) == 0


def test_shared_chunk_count_counts_extra_readers() -> None:
    from ngff_dreg.geometry import Box

    boxes = [Box((0,), (128,)), Box((64,), (192,)), Box((100,), (130,))]
    # chunks of 64: box 0 -> {0, 1}; box 1 -> {1, 2}; box 2 -> {1, 2}
    assert shared_chunk_count(boxes, [0, 1, 2], (64,)) == 2 + 1  # chunk 1: 3 groups, 2: 2
    assert shared_chunk_count(boxes, [0, 1, 1], (64,)) == 1


def test_machines_of_groups_workers_by_identity() -> None:
    ident = {"tcp://b:2": "h1:/tmp", "tcp://a:1": "h1:/tmp", "tcp://c:3": "h2:/tmp"}
    assert machines_of(ident) == (("tcp://a:1", "tcp://b:2"), ("tcp://c:3",))


def test_place_blocks_one_group_per_machine_then_a_slab_per_worker() -> None:
    idx = _grid(4, 2, 2)
    machines = (("w0", "w1"), ("w2",))
    places = place_blocks(idx, machines)
    groups = group_blocks(idx, 2)
    assert all(p is not None for p in places)
    for place, g in zip(places, groups):
        assert place in machines[g]
    # the first machine's group is split between its two workers, each a slab
    first = [b for b, g in zip(idx, groups) if g == 0]
    workers = [p for p, g in zip(places, groups) if g == 0]
    assert set(workers) == {"w0", "w1"}
    for w in ("w0", "w1"):
        assert _connected([b for b, p in zip(first, workers) if p == w])


def test_preferred_workers_one_machine_is_the_per_worker_slabs() -> None:
    idx = _grid(2, 3, 4)
    workers = ("tcp://a", "tcp://b", "tcp://c")
    before = [workers[p] for p in slab_order(idx, 3)]
    one_machine = BlockOptions(workers=workers, machines=(workers,))
    assert preferred_workers(idx, one_machine) == before
    assert preferred_workers(idx, BlockOptions(workers=workers)) == before
    assert preferred_workers(idx, BlockOptions()) == [None] * len(idx)
    two = BlockOptions(workers=workers, machines=(("tcp://a",), ("tcp://b", "tcp://c")))
    assert preferred_workers(idx, two) == place_blocks(idx, two.machines)
