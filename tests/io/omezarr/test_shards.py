"""Shard requests and shard-aligned write units (ngff_dreg.io.omezarr.shards)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ngff_dreg.errors import InvalidInputDataError, NgffDregError
from ngff_dreg.geometry import Box, chunk_boxes
from ngff_dreg.io.omezarr.shards import assemble, check_shard_request, resolve_shards, write_units


def test_requests_resolve_to_whole_chunks_capped_by_the_array() -> None:
    assert resolve_shards(None, (8, 8, 8), (40, 40, 40)) is None
    assert resolve_shards(16, (8, 8, 8), (40, 40, 40)) == (16, 16, 16)
    assert resolve_shards((8, 16, 32), (8, 8, 8), (40, 40, 40)) == (8, 16, 32)
    assert resolve_shards([24], (8, 8), (40, 40)) == (24, 24)
    # 'auto' is 4 chunks per axis, capped by what the array needs
    assert resolve_shards("auto", (8, 8, 8), (40, 20, 4)) == (32, 24, 8)
    assert resolve_shards("AUTO", (64, 64), (1000, 1000)) == (256, 256)
    # an edge spanning the axis need not be a multiple (one shard along it)
    assert resolve_shards(50, (8, 8), (40, 12)) == (40, 16)


@pytest.mark.parametrize("bad", [12, (8, 12, 16), 4])
def test_an_edge_that_is_not_whole_chunks_is_an_error_naming_the_option(bad) -> None:
    with pytest.raises(InvalidInputDataError, match=r"output_shards=.*not a whole number of "
                                                    r"chunks \(chunk edge 8\)"):
        resolve_shards(bad, (8, 8, 8), (40, 40, 40), option="output_shards")


@pytest.mark.parametrize("bad", [0, -8, (8, 8), "big", 8.0, True, (8, None, 8)])
def test_malformed_requests_are_errors_naming_the_option(bad) -> None:
    with pytest.raises(NgffDregError, match="shards="):
        check_shard_request(bad, 3)


@pytest.mark.parametrize(("shape", "chunks", "shards"), [
    ((40, 36, 44), (8, 8, 8), (16, 16, 16)),
    ((21, 19, 23), (4, 4, 4), (8, 12, 4)),
    ((5, 7), (4, 4), (8, 8)),
])
def test_units_tile_the_array_by_shards_of_the_plain_chunk_grid(shape, chunks, shards) -> None:
    sh = resolve_shards(shards, chunks, shape)
    units = write_units(shape, chunks, sh)
    plain = write_units(shape, chunks, None)
    assert [u.chunks for u in plain] == [(b,) for b in chunk_boxes(shape, chunks)]
    # one unit per shard, each holding exactly the chunks of the plain grid inside it
    assert [u.box for u in units] == chunk_boxes(shape, sh)
    inner = sorted(c.start for u in units for c in u.chunks)
    assert inner == sorted(b.start for b in chunk_boxes(shape, chunks))
    for u in units:
        for c in u.chunks:
            assert c.intersect(u.box) == c
    # made on demand from their numbers, and their extents along each axis
    listed = list(units)
    assert len(units) == len(listed) and units[-1] == listed[-1]
    assert all(units[c] == listed[c] for c in range(0, len(listed), 3))
    for axis in range(len(shape)):
        assert units.spans(axis) == sorted({(u.box.start[axis], u.box.stop[axis])
                                            for u in listed})
    with pytest.raises(IndexError):
        units[len(listed)]


def test_assemble_places_parts_and_casts() -> None:
    box = Box((4, 8), (12, 14))
    data = np.arange(3 * 8 * 6, dtype=np.float64).reshape(3, 8, 6) + 0.25
    parts = [(c, data[(slice(None), *c.relative_to(box))])
             for c in (Box((4 + a, 8 + b), (min(4 + a + 4, 12), min(8 + b + 4, 14)))
                       for a, b in itertools.product((0, 4), (0, 4)))]
    out = assemble(box, iter(parts), np.float32, (3,))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))
