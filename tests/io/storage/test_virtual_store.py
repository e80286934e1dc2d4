"""The virtual store: an OME-Zarr pyramid of any size, every chunk computed from its key."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ngff_dreg.errors import InvalidInputDataError, StoreAccessError
from ngff_dreg.geometry import Box
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.stores import open_store
from ngff_dreg.io.storage.virtual_store import VirtualStore, open_virtual_store
from ngff_dreg.virtual_image import VirtualPair

PETABYTE = VirtualPair(shape=(100_000, 100_000, 100_000), chunks=(64,), seed=3)
SMALL = VirtualPair(shape=(40, 100, 90), chunks=(32, 32, 32), levels=3)


def test_a_petabyte_pyramid_opens_with_zarr() -> None:
    assert PETABYTE.nbytes() == 2 * 10**15
    store = VirtualStore(PETABYTE, "fixed")
    assert isinstance(store, Store) and store.read_only
    group = zarr.open_group(store=store, mode="r")
    ms = group.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == [str(i) for i in range(PETABYTE.levels)]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 2.0]
    top = group[str(PETABYTE.levels - 1)]
    assert isinstance(top, zarr.Array)
    assert top.shape == PETABYTE.level_shape(PETABYTE.levels - 1)
    assert max(top.shape) <= 64 < max(PETABYTE.level_shape(PETABYTE.levels - 2))
    a0 = group["0"]
    assert isinstance(a0, zarr.Array)
    assert a0.shape == (100_000,) * 3 and a0.chunks == (64,) * 3 and a0.dtype == np.uint16
    block = np.asarray(a0[50_000:50_064, 50_000:50_064, 50_000:50_064])
    assert block.std() > 0  # texture inside the specimen


def test_chunks_are_deterministic_and_consistent_with_regions() -> None:
    a = zarr.open_array(store=VirtualStore(SMALL, "moving"), path="0", mode="r")
    b = zarr.open_array(store=VirtualStore(SMALL, "moving"), path="0", mode="r")
    got = np.asarray(a[5:37, 20:90, 10:70])  # across chunk edges
    np.testing.assert_array_equal(got, np.asarray(b[5:37, 20:90, 10:70]))
    np.testing.assert_array_equal(got, SMALL.region("moving", 0, (5, 20, 10), (32, 70, 60)))
    edge = np.asarray(a[32:40, 96:100, 64:90])  # the partial edge chunks
    np.testing.assert_array_equal(edge, SMALL.region("moving", 0, (32, 96, 64), (8, 4, 26)))
    fixed = np.asarray(zarr.open_array(store=VirtualStore(SMALL, "fixed"), path="0")[:])
    assert not np.array_equal(fixed, np.asarray(a[:]))
    other_seed = VirtualPair(shape=SMALL.shape, chunks=SMALL.chunks, levels=3, seed=1)
    assert not np.array_equal(fixed, other_seed.region("fixed", 0, (0, 0, 0), SMALL.shape))


def test_moving_is_fixed_warped_by_the_known_transform() -> None:
    pair = VirtualPair(shape=(64, 80, 96), chunks=(32,), rotation_deg=2.0, translation_vox=4.0,
                       deformation_vox=3.0)
    rng = np.random.default_rng(0)
    p_xyz = rng.uniform(10, 50, (200, 3))
    q_xyz = pair.fixed_to_moving(p_xyz)
    # S(T(p)) = p: the truth inverts the moving image's warp
    back = pair.moving_to_fixed(q_xyz[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(back, p_xyz, atol=1e-6)
    assert np.abs(q_xyz - p_xyz).max() > 3.0  # a real warp
    # a moving voxel shows the fixed content at S(its position)
    idx = np.array([[20, 30, 40], [40, 50, 60]])
    mov = np.asarray(zarr.open_array(store=VirtualStore(pair, "moving"), path="0")[:])
    expected = pair.intensity(pair.moving_to_fixed(idx.astype(float)), 0)
    np.testing.assert_allclose(mov[tuple(idx.T)], np.round(expected * 50000), atol=1)


def test_levels_are_the_same_image_band_limited() -> None:
    pair = VirtualPair(shape=(64, 128, 128), chunks=(64,), levels=3, dtype="float32")
    full = pair.region("fixed", 0, (0, 0, 0), pair.shape).astype(np.float64)
    down = full.reshape(32, 2, 64, 2, 64, 2).mean(axis=(1, 3, 5))
    level1 = pair.region("fixed", 1, (0, 0, 0), pair.level_shape(1)).astype(np.float64)
    assert np.corrcoef(down.ravel(), level1.ravel())[0, 1] > 0.95


def test_byte_ranges_and_absent_keys() -> None:
    store = VirtualStore(SMALL, "fixed")
    proto = default_buffer_prototype()
    whole = sync(store.get("0/c/0/1/2", proto))
    assert whole is not None and len(whole.to_bytes()) == 32**3 * 2
    part = sync(store.get("0/c/0/1/2", proto, RangeByteRequest(10, 20)))
    assert part is not None and part.to_bytes() == whole.to_bytes()[10:20]
    tail = sync(store.get("0/c/0/1/2", proto, SuffixByteRequest(6)))
    assert tail is not None and tail.to_bytes() == whole.to_bytes()[-6:]
    for absent in ("0/c/2/0/0", "3/zarr.json", "0/c/0/0", "x/zarr.json", "0/c/a/0/0"):
        assert sync(store.get(absent, proto)) is None, absent
        assert not sync(store.exists(absent))
    assert sync(store.exists("0/c/1/3/2")) and sync(store.getsize("0/c/1/3/2")) == 32**3 * 2


def test_it_is_read_only() -> None:
    store = VirtualStore(SMALL, "fixed")
    with pytest.raises(ValueError, match="read-only"):
        sync(store.set("zarr.json", default_buffer_prototype().buffer.from_bytes(b"{}")))
    with pytest.raises(StoreAccessError, match="read-only"):
        open_store(SMALL.url("fixed"), read_only=False)


def test_one_chunk_of_a_petabyte_image_costs_one_chunk() -> None:
    store = VirtualStore(PETABYTE, "moving")
    proto = default_buffer_prototype()
    sync(store.get("0/c/700/800/900", proto))  # warm-up (imports)
    tracemalloc.start()
    try:
        got = sync(store.get("0/c/780/781/782", proto))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got is not None
    chunk_points = 64**3
    assert peak < 40 * chunk_points * 8, peak  # a few float64 arrays of the chunk, no more


def test_urls_round_trip_and_pickle() -> None:
    url = PETABYTE.url("moving")
    assert url.startswith("virtual://moving?shape=100000x100000x100000")
    store = open_virtual_store(url)
    assert store == VirtualStore(PETABYTE, "moving") != VirtualStore(PETABYTE, "fixed")
    assert pickle.loads(pickle.dumps(store)) == store
    for bad in ("virtual://other?shape=4x4", "virtual://fixed?chunks=4",
                "virtual://fixed?shape=4x4&colour=red", "virtual://fixed?shape=4x4x4x4x4"):
        with pytest.raises(InvalidInputDataError):
            VirtualPair.from_url(bad)


def test_ngff_dreg_reads_it_by_url() -> None:
    ms = open_multiscale(SMALL.url("fixed"))
    assert len(ms.levels) == 3 and ms.levels[0].geometry.shape == SMALL.shape
    assert ms.levels[2].geometry.spacing == (4.0, 4.0, 4.0)
    reader = OMEZarrReaderConstructor(SMALL.url("moving"), level=1)()
    box = Box.full(SMALL.level_shape(1))
    np.testing.assert_array_equal(
        np.asarray(reader.read_box(box)),
        SMALL.region("moving", 1, (0, 0, 0), SMALL.level_shape(1)).astype(np.float32))


def test_the_mask_role_is_a_box() -> None:
    pair = VirtualPair(shape=(40, 100, 90), chunks=(32,), levels=2,
                       mask_box=(0.25, 0.5, 0.0, 0.75, 1.0, 0.5))
    mask = np.asarray(zarr.open_array(store=open_virtual_store(pair.url("mask")), path="0")[:])
    assert mask.dtype == np.uint8
    expected = np.zeros(pair.shape, np.uint8)
    expected[10:30, 50:100, 0:45] = 1
    np.testing.assert_array_equal(mask, expected)
    assert VirtualPair.from_url(pair.url("mask")) == (pair, "mask")
