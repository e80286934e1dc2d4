"""The block engine on real ITK methods, threaded and on a multi-process cluster."""

import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import itk
import numpy as np
import pytest

from ngff_dreg import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
    ReduceResultsMethod,
    RegistrationResult,
    RegistrationTransformResult,
)
from ngff_dreg.engine import BlockOptions, register_images
from ngff_dreg.errors import IncompatibleImagesError, StoreChangedError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.memory import ArrayReader, ArrayReaderConstructor
from ngff_dreg.synthetic import textured_phantom, warp_to_fixed
from ngff_dreg.transforms import AffineTransform

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SHIFT = np.array([2.0, -1.5, 1.0])  # truth: fixed→moving translation (x, y, z)


# --- a block method and a reduce written the itk-dreg way ------------------------
class ItkDregStyleTranslation(BlockPairRegistrationMethod):
    """Translation per block with ITK v4, as an itk-dreg user writes it."""

    def __call__(self, fixed_subimage, moving_subimage, initial_transform, block_info, **kwargs):
        dim = fixed_subimage.GetImageDimension()
        image_type = type(fixed_subimage)
        reg = itk.ImageRegistrationMethodv4[image_type, image_type].New()
        metric = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
        optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
            LearningRate=1.0, MinimumStepLength=0.001, NumberOfIterations=200
        )
        transform = itk.TranslationTransform[itk.D, dim].New()
        reg.SetFixedImage(fixed_subimage)
        reg.SetMovingImage(moving_subimage)
        reg.SetMetric(metric)
        reg.SetOptimizer(optimizer)
        reg.SetInitialTransform(transform)
        reg.SetMovingInitialTransform(initial_transform)
        reg.SetNumberOfLevels(1)
        reg.SetShrinkFactorsPerLevel([1])
        reg.SetSmoothingSigmasPerLevel([0])
        reg.Update()
        domain = itk.Image[itk.F, dim].New()
        domain.CopyInformation(fixed_subimage)
        domain.SetRegions(fixed_subimage.GetBufferedRegion())
        return BlockPairRegistrationResult(
            transform=transform,
            transform_domain=domain,
            inv_transform=None,
            inv_transform_domain=None,
            status=BlockRegStatus.SUCCESS,
        )


class MeanTranslationReduce(ReduceResultsMethod):
    """Average the blocks' translations and fold in the initial transform."""

    def __call__(self, block_results, fixed_reader_ctor, initial_transform, **kwargs):
        offsets = [
            np.asarray(r.result.transform.GetOffset())
            for r in block_results
            if r.result.status == BlockRegStatus.SUCCESS
        ]
        mean = np.mean(offsets, axis=0) if offsets else np.zeros(3)
        init = AffineTransform.from_itk(initial_transform)
        total = AffineTransform.from_arrays(init.A, init.A @ mean + init.t)
        return RegistrationTransformResult(transform=total, inv_transform=total.inverse())


@dataclass
class RaisesOnOneBlock(BlockPairRegistrationMethod):
    bad: tuple = (0, 0, 0)

    def __call__(self, fixed_subimage, moving_subimage, initial_transform, block_info, **kwargs):
        if block_info.chunk_index == self.bad:
            raise RuntimeError("synthetic failure")
        return ItkDregStyleTranslation()(
            fixed_subimage, moving_subimage, initial_transform, block_info
        )


def _pair(shape=(64, 64, 64)):
    g = ImageGeometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    moving = textured_phantom(shape, seed=3)
    truth = AffineTransform.from_arrays(np.eye(3), SHIFT)
    fixed = warp_to_fixed(moving, g, g, truth)
    return (
        ArrayReaderConstructor(fixed, g, chunk_shape=(16, 16, 16)),
        ArrayReaderConstructor(moving, g, chunk_shape=(16, 16, 16)),
    )


def _check_translation(result: RegistrationResult, tol: float = 0.25) -> None:
    total = result.transforms.transform
    np.testing.assert_allclose(total.t, SHIFT, atol=tol)


def test_threaded_engine_recovers_translation_and_reads_only_blocks():
    fixed_ctor, moving_ctor = _pair()
    initial = AffineTransform.from_arrays(np.eye(3), [1.0, 0.0, 0.0]).to_itk()
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor,
        moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=initial,
        fixed_chunk_size=(30, 30, 30),  # rounded up to 32 (storage chunk 16)
        overlap_factors=(0.25, 0.25, 0.25),
    )
    assert schedule.fixed_da.chunks == ((32, 32),) * 3
    result = schedule.registration_result.compute(scheduler="threads", num_workers=2)
    assert result.status.shape == (2, 2, 2)
    assert np.all(result.status == BlockRegStatus.SUCCESS)
    _check_translation(result)
    # Each fixed read is one padded block, never the whole image.
    padded = {p.padded for p in schedule.blocks}
    assert set(fixed_ctor.reads) == padded
    assert all(np.prod(b.shape) < 0.5 * 64**3 for b in moving_ctor.reads)


def test_statuses_never_stop_the_run():
    g = ImageGeometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    fixed_ctor, moving_ctor = _pair()
    fixed = fixed_ctor.array.copy()
    fixed[32:, 32:, 32:] = 0.0  # one empty block → NO_SIGNAL
    fixed_ctor = ArrayReaderConstructor(fixed, g, chunk_shape=(32, 32, 32))
    # A moving image that covers only part of the fixed one → OUT_OF_BOUNDS.
    small = ImageGeometry((64, 64, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    moving_small = ArrayReaderConstructor(moving_ctor.array[:, :, :20].copy(), small)
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor,
        moving_reader_ctor=moving_small,
        block_registration_method=RaisesOnOneBlock(bad=(0, 1, 0)),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(32, 32, 32),
        overlap_factors=0.0,
        skip_blank_blocks=True,
    )
    result = schedule.registration_result.compute(scheduler="threads")
    status = result.status
    assert status[1, 1, 1] == BlockRegStatus.NO_SIGNAL
    assert status[0, 0, 1] == BlockRegStatus.OUT_OF_BOUNDS  # x in [32, 64): outside
    assert status[0, 1, 0] == BlockRegStatus.METHOD_ERROR
    assert status[0, 0, 0] == BlockRegStatus.SUCCESS
    # The moving image was never read for the empty block.
    assert not any(b.start == (32, 32, 32) for b in moving_small.reads)


@dataclass
class RecordsCalls(BlockPairRegistrationMethod):
    """Declared the itk-dreg way (keywords only); records what each call was given."""

    calls: list = field(default_factory=list)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        domain = itk.Image[itk.F, 3].New()
        domain.CopyInformation(kwargs["fixed_subimage"])
        domain.SetRegions(kwargs["fixed_subimage"].GetBufferedRegion())
        return BlockPairRegistrationResult(
            transform=itk.TranslationTransform[itk.D, 3].New(), transform_domain=domain,
            inv_transform=None, inv_transform_domain=None, status=BlockRegStatus.SUCCESS,
        )


@pytest.mark.parametrize("skip", [None, False, True])
def test_blank_blocks_reach_the_method_unless_skipping_is_asked_for(skip):
    g = ImageGeometry((32, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    fixed_ctor, moving_ctor = _pair((32, 32, 32))
    fixed = fixed_ctor.array.copy()
    fixed[16:] = 0.0  # the four high-z blocks are blank
    method = RecordsCalls()
    extra = {} if skip is None else {"skip_blank_blocks": skip}
    schedule = register_images(
        fixed_reader_ctor=ArrayReaderConstructor(fixed, g),
        moving_reader_ctor=moving_ctor,
        block_registration_method=method,
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(16, 16, 16),
        overlap_factors=0.0,
        user_option=7,
        **extra,
    )
    result = schedule.registration_result.compute(scheduler="sync")
    n_blocks = int(np.prod(schedule.fixed_da.numblocks))
    assert n_blocks == 8
    called = sorted(tuple(c["block_info"].chunk_index) for c in method.calls)
    if skip:
        assert len(called) == 4 and all(i[0] == 0 for i in called)
        assert np.all(result.status[1] == BlockRegStatus.NO_SIGNAL)
        assert np.all(result.status[0] == BlockRegStatus.SUCCESS)
    else:
        assert called == sorted(np.ndindex(2, 2, 2))
        assert np.all(result.status == BlockRegStatus.SUCCESS)
    # The engine's own keyword is not passed on; the user's is, with the four itk-dreg names.
    for c in method.calls:
        assert set(c) == {
            "fixed_subimage", "moving_subimage", "initial_transform", "block_info", "user_option"
        }
        assert c["user_option"] == 7


def test_mismatched_dimensions_raise_our_error():
    fixed_ctor, _ = _pair((32, 32, 32))
    g2 = ImageGeometry((32, 32), (1.0, 1.0), (0.0, 0.0))
    moving2 = ArrayReaderConstructor(np.ones((32, 32), np.float32), g2)
    with pytest.raises(IncompatibleImagesError, match=r"3-D.*2-D"):
        register_images(
            fixed_reader_ctor=fixed_ctor,
            moving_reader_ctor=moving2,
            block_registration_method=ItkDregStyleTranslation(),
            reduce_method=MeanTranslationReduce(),
            initial_transform=AffineTransform.identity(3).to_itk(),
        )


@pytest.mark.cluster
def test_multiprocess_cluster_recovers_translation(dask_client):
    fixed_ctor, moving_ctor = _pair()
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor,
        moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(32, 32, 32),
        overlap_factors=(0.25, 0.25, 0.25),
        block_options=BlockOptions(),
    )
    result = dask_client.compute(schedule.registration_result).result(timeout=240)
    assert np.all(result.status == BlockRegStatus.SUCCESS)
    _check_translation(result)
    # Tasks ran in two worker processes, not in the client.
    who = dask_client.run(lambda: __import__("os").getpid())
    assert len(set(who.values())) == 2


MAIN_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import itk
    from distributed import Client, LocalCluster

    from ngff_dreg import (BlockPairRegistrationMethod, BlockPairRegistrationResult,
                           BlockRegStatus, ReduceResultsMethod, RegistrationTransformResult)
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.memory import ArrayReader, ArrayReaderConstructor
    from ngff_dreg.engine import register_images
    from ngff_dreg.synthetic import textured_phantom, warp_to_fixed
    from ngff_dreg.transforms import AffineTransform


    class MainTranslation(BlockPairRegistrationMethod):
        def __call__(self, fixed_subimage, moving_subimage, initial_transform, block_info, **kw):
            t = type(fixed_subimage)
            reg = itk.ImageRegistrationMethodv4[t, t].New()
            reg.SetMetric(itk.MeanSquaresImageToImageMetricv4[t, t].New())
            reg.SetOptimizer(itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
                LearningRate=1.0, MinimumStepLength=0.001, NumberOfIterations=200))
            tx = itk.TranslationTransform[itk.D, 3].New()
            reg.SetFixedImage(fixed_subimage)
            reg.SetMovingImage(moving_subimage)
            reg.SetInitialTransform(tx)
            reg.SetMovingInitialTransform(initial_transform)
            reg.SetNumberOfLevels(1)
            reg.SetShrinkFactorsPerLevel([1])
            reg.SetSmoothingSigmasPerLevel([0])
            reg.Update()
            dom = itk.Image[itk.F, 3].New()
            dom.CopyInformation(fixed_subimage)
            dom.SetRegions(fixed_subimage.GetBufferedRegion())
            return BlockPairRegistrationResult(transform=tx, transform_domain=dom,
                inv_transform=None, inv_transform_domain=None, status=BlockRegStatus.SUCCESS)


    class MainReduce(ReduceResultsMethod):
        def __call__(self, block_results, fixed_reader_ctor, initial_transform, **kw):
            off = [np.asarray(r.result.transform.GetOffset()) for r in block_results
                   if r.result.status == BlockRegStatus.SUCCESS]
            return RegistrationTransformResult(transform=np.mean(off, axis=0))


    if __name__ == "__main__":
        itk.TranslationTransform[itk.D, 3].New()  # itk is loaded before pickling
        g = ImageGeometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        moving = textured_phantom(g.shape, seed=3)
        truth = AffineTransform.from_arrays(np.eye(3), [2.0, -1.5, 1.0])
        fixed = warp_to_fixed(moving, g, g, truth)
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        with cluster, Client(cluster) as c:
            s = register_images(
                fixed_reader_ctor=ArrayReaderConstructor(fixed, g, (32, 32, 32)),
                moving_reader_ctor=ArrayReaderConstructor(moving, g, (32, 32, 32)),
                block_registration_method=MainTranslation(), reduce_method=MainReduce(),
                initial_transform=AffineTransform.identity(3).to_itk(),
                fixed_chunk_size=(32, 32, 32), overlap_factors=0.25)
            r = c.compute(s.registration_result).result(timeout=200)
            print("STATUS", r.status.ravel().tolist())
            print("OFFSET", " ".join(f"{v:.4f}" for v in r.transforms.transform))
    """
)


@pytest.mark.cluster
def test_method_defined_in_main_runs_on_process_cluster(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["STATUS"] == str([0] * 8)
    offset = np.array([float(v) for v in lines["OFFSET"].split()])
    np.testing.assert_allclose(offset, SHIFT, atol=0.25)


class _ChangedOnOneBlock(ArrayReader):
    def read_box(self, box):
        if box.start == (0, 0, 0):
            raise StoreChangedError("fixed.zarr/0: chunk '0/c/0/0/0' existed when ...")
        return super().read_box(box)


@dataclass
class _ChangedReaderConstructor(ArrayReaderConstructor):
    def __call__(self, **kwargs):
        return _ChangedOnOneBlock(self)


def test_a_changed_store_stops_the_run_instead_of_failing_one_block():
    fixed_ctor, moving_ctor = _pair()
    changed = _ChangedReaderConstructor(fixed_ctor.array, fixed_ctor.geometry,
                                        chunk_shape=(16, 16, 16))
    schedule = register_images(
        fixed_reader_ctor=changed,
        moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(32, 32, 32),
        overlap_factors=0.0,
    )
    with pytest.raises(StoreChangedError, match="0/c/0/0/0"):
        schedule.registration_result.compute(scheduler="sync")


def test_block_info_contract():
    info = BlockInfo((0, 1), (slice(0, 10), slice(10, 30)))
    assert info.ndim == 2 and info.shape == (10, 20)
    with pytest.raises(ValueError):
        BlockPairRegistrationResult(None, None, None, None, BlockRegStatus.SUCCESS)
    empty = itk.Image[itk.F, 2].New()
    with pytest.raises(ValueError, match="non-empty"):
        BlockPairRegistrationResult(
            AffineTransform.identity(2).to_itk(), empty, None, None, BlockRegStatus.SUCCESS
        )
    assert Box((0,), (3,)).shape == (3,)


def test_masks_skip_blocks_before_reading_either_image():
    fixed_ctor, moving_ctor = _pair()
    g = fixed_ctor.geometry
    # The mask covers only the low-z half, on a 2x coarser grid (another level).
    mask_geom = ImageGeometry((32, 32, 32), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5))
    mask = np.zeros(mask_geom.shape, np.uint8)
    mask[:14] = 1
    mask_ctor = ArrayReaderConstructor(mask, mask_geom)
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor,
        moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(32, 32, 32),
        overlap_factors=0.0,
        block_options=BlockOptions(fixed_mask=mask_ctor),
    )
    result = schedule.registration_result.compute(scheduler="sync")
    assert np.all(result.status[0] == BlockRegStatus.SUCCESS)
    assert np.all(result.status[1] == BlockRegStatus.NO_SIGNAL)
    # Both images were read for the four masked-in blocks only.
    assert len(moving_ctor.reads) == 4
    assert len(fixed_ctor.reads) == 4
    assert g.shape == (64, 64, 64)


def test_block_placement_gives_each_worker_a_contiguous_slab() -> None:
    from itertools import product

    from ngff_dreg.engine import block_placement

    indices = list(product(range(2), range(4), range(3)))  # longest grid axis: 1
    places = block_placement(indices, 2)
    assert sorted(set(places)) == [0, 1] and places.count(0) == places.count(1) == 12
    for idx, w in zip(indices, places):
        assert w == (0 if idx[1] < 2 else 1)  # cut along the longest axis
    assert block_placement(indices, 1) == [0] * len(indices)
    many = block_placement(indices, 5)  # more workers than slabs: runs of rows
    assert sorted(set(many)) == [0, 1, 2, 3, 4]
    # axes ranked longest first (4, then 3, then 2): worker numbers never go down
    ranked = [many[indices.index(i)] for i in sorted(indices, key=lambda t: (t[1], t[2], t[0]))]
    assert ranked == sorted(ranked)


# --- unreadable inputs stop the run; the method's own errors do not ---------------
def _on_disk(tmp_path, ctor, name):
    """An in-memory pair image written as a one-level OME-Zarr image (chunks 16)."""
    from ngff_dreg.io.omezarr.image_writer import write_multiscale
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor

    url = str(tmp_path / f"{name}.ome.zarr")
    write_multiscale(url, ctor.array, ctor.geometry, version="0.5", chunks=16, n_levels=1)
    return OMEZarrReaderConstructor(url)


def _run_on_disk(fixed, moving, method=None):
    schedule = register_images(
        fixed_reader_ctor=fixed,
        moving_reader_ctor=moving,
        block_registration_method=method or ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(32, 32, 32),
        overlap_factors=0.0,
    )
    return schedule.registration_result.compute(scheduler="sync")


@pytest.fixture
def disk_pair(tmp_path, ngff_config):
    ngff_config({"io.read-attempts": 3, "io.read-backoff": 0.01})
    fixed_mem, moving_mem = _pair()
    return _on_disk(tmp_path, fixed_mem, "fixed"), _on_disk(tmp_path, moving_mem, "moving")


def test_an_unreadable_chunk_stops_the_run_instead_of_failing_one_block(disk_pair, read_faults):
    from ngff_dreg.errors import StoreReadError

    fixed, moving = disk_pair
    read_faults.fail(f"{fixed.url}/0/c/1/0/1")     # read by block (0, 0, 0) only
    with pytest.raises(StoreReadError) as info:
        _run_on_disk(fixed, moving)
    msg = str(info.value)
    assert f"{fixed.url}: cannot read chunk '0/c/1/0/1' of level '0'" in msg, msg
    assert "gave up after 3 attempts" in msg
    assert sum(read_faults.hits.values()) == 3


def test_a_read_that_works_on_retry_gives_the_clean_result(disk_pair, read_faults):
    fixed, moving = disk_pair
    clean = _run_on_disk(fixed, moving)
    read_faults.fail(f"{fixed.url}/0/c/1/0/1", times=2)
    read_faults.fail(f"{moving.url}/0/c/2/2/2", times=2)
    flaky = _run_on_disk(fixed, moving)
    assert sum(read_faults.hits.values()) == 4
    assert np.all(flaky.status == BlockRegStatus.SUCCESS)
    np.testing.assert_array_equal(flaky.transforms.transform.t, clean.transforms.transform.t)
    _check_translation(flaky)


def test_a_corrupt_chunk_stops_the_run(disk_pair, tmp_path):
    from ngff_dreg.errors import CorruptChunkError

    fixed, moving = disk_pair
    chunk = tmp_path / "moving.ome.zarr" / "0" / "c" / "3" / "3" / "3"
    chunk.write_bytes(b"\x00garbage" * (chunk.stat().st_size // 8 + 1))
    with pytest.raises(CorruptChunkError, match=r"moving\.ome\.zarr: chunk '0/c/3/3/3'"):
        _run_on_disk(fixed, moving)


@dataclass
class RaisesStoreErrorOnOneBlock(BlockPairRegistrationMethod):
    """A method whose own code fails with an I/O-looking error on one block."""

    def __call__(self, fixed_subimage, moving_subimage, initial_transform, block_info, **kwargs):
        from ngff_dreg.errors import StoreReadError

        if block_info.chunk_index == (1, 0, 1):
            raise StoreReadError("the method's own lookup table could not be read")
        return ItkDregStyleTranslation()(
            fixed_subimage, moving_subimage, initial_transform, block_info
        )


def test_the_method_own_exceptions_still_fail_only_their_block(disk_pair):
    fixed, moving = disk_pair
    result = _run_on_disk(fixed, moving, RaisesStoreErrorOnOneBlock())
    assert result.status[1, 0, 1] == BlockRegStatus.METHOD_ERROR
    assert (result.status == BlockRegStatus.SUCCESS).sum() == 7


def test_blocks_prefer_a_worker_of_their_machine_and_any_worker_may_take_them():
    from ngff_dreg.engine import BlockOptions
    from ngff_dreg.locality import place_blocks

    fixed_ctor, moving_ctor = _pair()
    machines = (("tcp://a:1",), ("tcp://b:2", "tcp://c:3"))
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor,
        moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3).to_itk(),
        fixed_chunk_size=(16, 16, 16),
        overlap_factors=0.5,
        block_options=BlockOptions(workers=("tcp://a:1", "tcp://b:2", "tcp://c:3"),
                                   machines=machines),
    )
    expected = place_blocks([p.info.chunk_index for p in schedule.blocks], machines)
    assert set(expected) == {"tcp://a:1", "tcp://b:2", "tcp://c:3"}
    # the block tasks are one graph layer, its annotations given per key
    (layer,) = {task.__dask_layers__() for task in schedule.block_results}
    annotations = schedule.block_results[0].__dask_graph__().layers[layer[0]].annotations
    assert annotations["allow_other_workers"] is True  # a dead or busy worker strands nothing
    assert [annotations["workers"](task.key) for task in schedule.block_results] == [
        [want] for want in expected]


def _restrictions(dask_scheduler: Any) -> dict[str, tuple[set[str], bool]]:
    return {str(k): (set(ts.worker_restrictions or ()), ts.loose_restrictions)
            for k, ts in dask_scheduler.tasks.items() if str(k).startswith("register-block-")}


def test_the_scheduler_gets_each_blocks_preferred_worker(dask_client: Any) -> None:
    from ngff_dreg.engine import preferred_workers

    workers = tuple(sorted(dask_client.scheduler_info()["workers"]))
    fixed_ctor, moving_ctor = _pair((32, 32, 32))
    options = BlockOptions(workers=workers)
    schedule = register_images(
        fixed_reader_ctor=fixed_ctor, moving_reader_ctor=moving_ctor,
        block_registration_method=ItkDregStyleTranslation(),
        reduce_method=MeanTranslationReduce(),
        initial_transform=AffineTransform.identity(3), fixed_chunk_size=16,
        overlap_factors=0.5, block_options=options)
    expected = preferred_workers([p.info.chunk_index for p in schedule.blocks], options)
    assert set(expected) == set(workers)
    futures = dask_client.compute(schedule.block_results)
    try:
        dask_client.gather(futures)
        seen = dask_client.run_on_scheduler(_restrictions)
        assert seen == {task.key: ({want}, True)
                        for task, want in zip(schedule.block_results, expected)}
    finally:
        for future in futures:
            future.release()


def test_a_grid_slab_plans_its_layers_alone_with_the_whole_grids_keys(monkeypatch, caplog):
    from ngff_dreg import engine

    fixed_ctor, moving_ctor = _pair()
    args = dict(fixed_reader_ctor=fixed_ctor, moving_reader_ctor=moving_ctor,
                block_registration_method=ItkDregStyleTranslation(),
                reduce_method=MeanTranslationReduce(),
                initial_transform=AffineTransform.identity(3), fixed_chunk_size=16,
                overlap_factors=0.5)
    whole = register_images(**args)
    part = register_images(**args, grid_slab=(1, 3))
    assert [p.info.chunk_index[0] for p in part.blocks] == [1] * 16 + [2] * 16
    assert part.blocks == whole.blocks[16:48]
    assert [r.key for r in part.block_results] == [r.key for r in whole.block_results[16:48]]
    assert part.fixed_da.chunks == whole.fixed_da.chunks  # the whole grid's chunks
    # a box of the grid: one row of one layer
    row = register_images(**args, grid_slab=Box((2, 1, 0), (3, 2, 4)))
    assert [p.info.chunk_index for p in row.blocks] == [(2, 1, i) for i in range(4)]
    assert [r.key for r in row.block_results] == [r.key for r in whole.block_results[36:40]]
    # a grid too large for one graph is coarsened when planned whole, never in slabs
    monkeypatch.setattr(engine, "MAX_BLOCKS", 8)
    with caplog.at_level(logging.WARNING, logger="ngff_dreg.engine"):
        assert len(register_images(**args, grid_slab=(0, 1)).blocks) == 16
        assert not caplog.records
        assert len(register_images(**args).blocks) <= 8
        assert "coarsened" in caplog.text
