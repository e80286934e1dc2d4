import logging

import numpy as np
import pytest

from ngff_dreg.blocks import align_block_shape, axis_chunks, moving_region, padding_for, plan_blocks
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain


def test_block_shape_rounds_to_storage_chunks_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="ngff_dreg.blocks"):
        shape = align_block_shape((50, 64, 70), (32, 32, 32), (200, 200, 200))
    assert shape == (64, 64, 96)
    assert "rounded" in caplog.text
    # Never larger than the chunk-aligned image.
    assert align_block_shape((500,), (32,), (100,)) == (128,)


def test_thin_last_block_merged():
    assert axis_chunks(197, 64) == (64, 64, 69)
    assert axis_chunks(240, 64) == (64, 64, 64, 48)
    assert axis_chunks(30, 64) == (30,)


def test_plan_blocks_pads_and_crops_at_edges():
    plans, chunks = plan_blocks((100, 80), (50, 40), 0.2)
    assert chunks == ((50, 50), (40, 40))
    assert len(plans) == 4
    first = plans[0]
    assert first.box == Box((0, 0), (50, 40))
    assert first.padded == Box((0, 0), (55, 44))  # cropped at the start
    last = plans[-1]
    assert last.padded == Box((45, 36), (100, 80))
    assert last.info.chunk_index == (1, 1)
    assert padding_for((50, 40), [0.2, 0.5]) == (5, 10)
    with pytest.raises(ValueError):
        padding_for((50, 40), [-0.1, 0.0])


def test_moving_region_samples_interior_not_only_corners():
    g = ImageGeometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # A bump: zero displacement at the block's corners, 12 voxels in its middle.
    fg = g.with_spacing((4.0, 4.0, 4.0))
    zz, yy, xx = np.meshgrid(*[4.0 * np.arange(n) for n in fg.shape], indexing="ij")
    bump = 12.0 * np.exp(-((zz - 32) ** 2 + (yy - 25) ** 2 + (xx - 25) ** 2) / (2 * 5.0**2))
    data = np.zeros((3, *fg.shape))
    data[0] = bump  # z displacement (NGFF component order z, y, x)
    chain = TransformChain(AffineTransform.identity(3), DisplacementField(fg, data=data))
    big = ImageGeometry((100, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mbox, inside = moving_region(
        g, Box((10, 10, 10), (40, 40, 40)), big, chain.transform_points, pad_voxels=0
    )
    assert inside == 1.0
    # Corner-only mapping would end near z=39; the interior reaches past 49.
    corners = np.array([[z, y, x] for z in (10, 39) for y in (10, 39) for x in (10, 39)], float)
    corner_hi = chain.transform_points(g.array_index_to_physical(corners))[:, 2].max()
    centre = chain.transform_points(g.array_index_to_physical(np.array([[32.0, 25.0, 25.0]])))[0, 2]
    assert centre > corner_hi + 3
    # The lattice samples the interior: the box reaches most of the bump.
    assert mbox is not None and mbox.stop[0] > corner_hi + 4


def test_moving_region_out_of_bounds():
    g = ImageGeometry((32, 32), (1.0, 1.0), (0.0, 0.0))
    far = AffineTransform.from_arrays(np.eye(2), [1000.0, 0.0])
    mbox, inside = moving_region(g, Box((0, 0), (32, 32)), g, far.transform_points)
    assert mbox is None and inside == 0.0


def test_plan_blocks_plans_a_slab_of_grid_layers_like_the_whole_grid():
    from ngff_dreg.blocks import GridSlabs, padded_intervals

    shape, block, overlap = (100, 90, 70), (30, 40, 32), 0.5
    whole, chunks = plan_blocks(shape, block, overlap)
    assert [len(c) for c in chunks] == [3, 2, 2]
    parts = [plan_blocks(shape, block, overlap, grid_slab=s) for s in [(0, 1), (1, 2), (2, 3)]]

    def layers(slabs: GridSlabs) -> list[tuple[int, int]]:
        assert slabs.axis == 0
        return [(b.start[0], b.stop[0]) for b in slabs.boxes()]

    assert layers(GridSlabs([3, 2, 2], 5)) == [(0, 1), (1, 2), (2, 3)]
    assert layers(GridSlabs([3, 2, 2], 8)) == [(0, 2), (2, 3)]
    # under a layer's blocks, slabs are rows of a layer (single blocks here)
    assert len(GridSlabs([3, 2, 2], 1)) == 12
    assert all(c == chunks for _, c in parts)
    assert [p for plans, _ in parts for p in plans] == whole
    # the padded boxes are the product of the per-axis padded intervals
    axes = padded_intervals(shape, chunks, overlap)
    for p in whole:
        assert p.padded.start == tuple(axes[a][i][0] for a, i in enumerate(p.info.chunk_index))
        assert p.padded.stop == tuple(axes[a][i][1] for a, i in enumerate(p.info.chunk_index))
    with pytest.raises(ValueError, match="slab"):
        plan_blocks(shape, block, overlap, grid_slab=(2, 4))


@pytest.mark.parametrize("max_blocks", [1, 2, 3, 5, 7, 20, 25, 59, 60, 1000])
def test_grid_slabs_cover_the_grid_once_in_order_never_over_the_limit(max_blocks):
    from ngff_dreg.blocks import GridSlabs

    shape = (3, 4, 5)
    slabs = GridSlabs(shape, max_blocks)
    seen = np.zeros(shape, dtype=int)
    order = []
    for s, box in enumerate(slabs.boxes()):
        assert 0 < int(np.prod(box.shape)) <= max_blocks
        seen[box.slices] += 1
        for rest in np.ndindex(*box.shape):
            index = tuple(int(i) + a for i, a in zip(rest, box.start))
            assert slabs.slab_of(index) == s
            order.append(index)
        # a slab's pieces: one index along the cut axis each, spanning the later axes
        pieces = [slabs.piece_box(p) for p in slabs.pieces(s)]
        assert sum(int(np.prod(p.shape)) for p in pieces) == int(np.prod(box.shape))
        assert all(slabs.slab_of(p) == s for p in slabs.pieces(s))
    assert (seen == 1).all()
    # the slabs follow the blocks' C order, and a slab number never falls as an index grows
    numbers = [slabs.slab_of(index) for index in sorted(order)]
    assert numbers == sorted(numbers)
    for index in order:
        for a in range(3):
            if index[a] + 1 < shape[a]:
                up = (*index[:a], index[a] + 1, *index[a + 1:])
                assert slabs.slab_of(up) >= slabs.slab_of(index)
    # as few slabs as whole layers, else whole rows, else single runs allow
    if max_blocks >= 20:
        assert slabs.axis == 0 and len(slabs) == -(-3 // min(3, max_blocks // 20))
    elif max_blocks >= 5:
        assert slabs.axis == 1 and len(slabs) == 3 * -(-4 // (max_blocks // 5))
    else:
        assert slabs.axis == 2 and len(slabs) == 12 * -(-5 // max_blocks)
    assert slabs.describe() == {"grid": [3, 4, 5], "axis": slabs.axis, "step": slabs.step}
    with pytest.raises(ValueError, match="at least 1"):
        GridSlabs(shape, 0)


def test_plan_blocks_plans_a_box_of_the_grid_like_the_whole_grid():
    from ngff_dreg.blocks import GridSlabs

    shape, block, overlap = (100, 90, 70), (30, 40, 32), 0.5
    whole, chunks = plan_blocks(shape, block, overlap)
    by_index = {p.info.chunk_index: p for p in whole}
    slabs = GridSlabs([len(c) for c in chunks], 3)  # rows of one layer: 2 blocks each
    assert slabs.axis == 1
    parts = [plan_blocks(shape, block, overlap, grid_slab=box)[0] for box in slabs.boxes()]
    planned = [p for plans in parts for p in plans]
    assert sorted(p.info.chunk_index for p in planned) == sorted(by_index)
    assert all(by_index[p.info.chunk_index] == p for p in planned)
    with pytest.raises(ValueError, match="slab"):
        plan_blocks(shape, block, overlap, grid_slab=Box((0, 0, 0), (1, 3, 1)))
