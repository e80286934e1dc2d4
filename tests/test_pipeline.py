"""Coarse-to-fine registration end to end, against a known ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ngff_dreg.demo import make_demo, point_errors
from ngff_dreg.errors import IncompatibleImagesError, OutputExistsError
from ngff_dreg.geometry import Box
from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.io.omezarr.output_state import Checkpoints, output_status, set_status
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.pipeline import register
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule
from ngff_dreg.transforms import AffineTransform


class Interrupt(Exception):
    pass


def _schedule_3d() -> Schedule:
    return Schedule(
        GlobalStage(level=1),
        [
            BlockStage(
                level=1,
                block_size=32,
                overlap=0.5,
                method="bspline",
                method_options={"mesh_size": 3},
                field_spacing_factor=2,
            ),
            BlockStage(
                level=0,
                block_size=32,
                overlap=0.5,
                method="bspline",
                method_options={"mesh_size": 3},
                field_spacing_factor=3,
            ),
        ],
    )


@pytest.fixture(scope="module")
def pair_3d(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair3d")
    return make_demo(d, synthetic=True, ndim=3, size=72, max_displacement_voxels=3.0, chunks=16)


@pytest.fixture(scope="module")
def pair_2d(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair2d")
    return make_demo(d, synthetic=True, ndim=2, size=192, max_displacement_voxels=4.0, chunks=32)


def _foreground(pair):
    arr = OMEZarrReaderConstructor(pair.fixed)().read_box(Box.full(pair.fixed_geometry.shape))
    return arr > 0.05


@pytest.fixture(scope="module")
def run_3d(pair_3d, tmp_path_factory, dask_client):
    out = str(tmp_path_factory.mktemp("out3d") / "out.zarr")
    result = register(
        pair_3d.fixed,
        pair_3d.moving,
        out,
        schedule=_schedule_3d(),
        client=dask_client,
        progress=False,
    )
    return out, result


def test_3d_recovers_known_warp_and_refines(pair_3d, run_3d):
    out, result = run_3d
    mask = _foreground(pair_3d)
    truth, geom = pair_3d.truth, pair_3d.fixed_geometry
    final = point_errors(result.transforms.transform, truth, geom, mask=mask)
    assert final["mean_vox"] < 0.35, final
    assert final["p95_vox"] < 0.8, final
    # Coarse to fine refines: affine-only error > first block stage >= final.
    from ngff_dreg.io.omezarr.output_state import Checkpoints

    manifest = Checkpoints(out, None).read()
    affine = AffineTransform.from_homogeneous(manifest["stages"]["global"]["affine"])
    coarse = read_transform(f"{out}/checkpoints/stage_0")
    e_affine = point_errors(affine, truth, geom, mask=mask)["mean_vox"]
    e_coarse = point_errors(coarse, truth, geom, mask=mask)["mean_vox"]
    assert e_affine > e_coarse > final["mean_vox"] * 0.99, (e_affine, e_coarse, final)
    assert e_affine > 2 * final["mean_vox"]
    # Reports per stage, NCC improves, no folding, a valid complete output.
    assert [r.name for r in result.levels] == ["global", "stage 0", "stage 1"]
    assert result.levels[0].ncc_after > result.levels[0].ncc_before
    assert result.levels[-1].ncc_after >= result.levels[1].ncc_before
    assert result.transforms.report["jacobian_min"] > 0
    assert output_status(out) == "complete"
    assert np.count_nonzero(result.status == BlockRegStatus.SUCCESS) >= result.status.size // 2
    back = read_transform(out)
    pts = geom.array_index_to_physical(np.array([[30.0, 31.0, 40.0], [10.0, 50.0, 20.0]]))
    np.testing.assert_allclose(
        back.transform_points(pts), result.transforms.transform.transform_points(pts), atol=1e-3
    )


def test_store_io_is_counted_per_image_and_stage(pair_3d, run_3d):
    """The run's reads, counted at the store layer on the client and both workers."""
    out, result = run_3d
    io = result.io
    assert list(io["stages"])[:4] == ["open", "global", "stage_0", "stage_1"]
    images = io["run"]["images"]
    fixed, moving = images[pair_3d.fixed], images[pair_3d.moving]
    for f in (fixed, moving):
        assert f["chunk_requests"] > 0 and f["distinct_bytes"] > 0
        assert f["chunk_bytes"] >= f["distinct_bytes"]
        assert f["cache_hits"] > 0  # neighbouring blocks share chunks
        # metadata: read by the client once, handed to the workers
        assert f["metadata_requests"] == f["metadata_objects"] > 0
    # The workers share one host cache (ngff_dreg.io.storage.chunk_cache.HostCache): each
    # chunk is fetched once by the whole run, whichever process reads it.
    assert fixed["reread"] == 1.0 and moving["reread"] == 1.0
    assert io["run"]["total"]["reread"] == 1.0  # the run's own fields too
    stage_sum = sum(st["images"].get(pair_3d.fixed, {}).get("chunk_bytes", 0)
                    for st in io["stages"].values())
    assert stage_sum == fixed["chunk_bytes"]
    # The stage reports carry their own figures (manifest and HTML report).
    assert result.levels[-1].report["io"]["total"]["requests"] > 0
    from ngff_dreg.io.omezarr.output_state import Checkpoints

    entry = Checkpoints(out, None).read()["stages"]["stage_1"]
    assert entry["report"]["io"]["total"] == result.levels[-1].report["io"]["total"]


def test_rerun_of_a_finished_output_needs_overwrite_or_same_args(pair_3d, run_3d, dask_client):
    out, _ = run_3d
    other = Schedule(GlobalStage(level=1), [BlockStage(level=0, block_size=32)])
    with pytest.raises(OutputExistsError, match="overwrite"):
        register(
            pair_3d.fixed, pair_3d.moving, out, schedule=other, client=dask_client, progress=False
        )


def test_interrupted_run_resumes_with_same_answer(pair_3d, run_3d, tmp_path, dask_client):
    _, reference = run_3d
    out = str(tmp_path / "resume.zarr")

    def stop_after_stage_0(report):
        if report.name == "stage 0":
            raise Interrupt

    with pytest.raises(Interrupt):
        register(
            pair_3d.fixed,
            pair_3d.moving,
            out,
            schedule=_schedule_3d(),
            client=dask_client,
            progress=False,
            on_stage_done=stop_after_stage_0,
        )
    assert output_status(out) == "incomplete"
    seen = []
    result = register(
        pair_3d.fixed,
        pair_3d.moving,
        out,
        schedule=_schedule_3d(),
        client=dask_client,
        progress=False,
        on_stage_done=seen.append,
    )
    assert [r.name for r in seen] == ["stage 1"]  # only the rest ran
    assert [r.resumed for r in result.levels] == [True, True, False]
    geom = pair_3d.fixed_geometry
    pts = geom.array_index_to_physical(np.random.default_rng(0).uniform(5, 65, (200, 3)))
    np.testing.assert_allclose(
        result.transforms.transform.transform_points(pts),
        reference.transforms.transform.transform_points(pts),
        atol=0.05,
    )


def test_2d_pair(pair_2d, tmp_path, dask_client):
    sched = Schedule(
        GlobalStage(level=1),
        [
            BlockStage(
                level=1,
                block_size=64,
                overlap=0.5,
                method_options={"mesh_size": 3},
                field_spacing_factor=2,
            ),
            BlockStage(
                level=0,
                block_size=64,
                overlap=0.5,
                method_options={"mesh_size": 3},
                field_spacing_factor=3,
            ),
        ],
    )
    out = str(tmp_path / "out2d.zarr")
    result = register(
        pair_2d.fixed,
        pair_2d.moving,
        out,
        schedule=sched,
        client=dask_client,
        progress=False,
        resample=True,
        into_fixed=True,
        upgrade_fixed=True,
    )
    # The registration was also written into the fixed image (upgraded to 0.6),
    # and reads back from there the same; the image keeps its geometry.
    assert OMEZarrReaderConstructor(pair_2d.fixed)().geometry == pair_2d.fixed_geometry
    rng = np.random.default_rng(1)
    pts = rng.uniform(20, 170, size=(100, 2)) * np.asarray(pair_2d.fixed_geometry.spacing)
    np.testing.assert_allclose(
        read_transform(pair_2d.fixed, coordinate_system="moving").transform_points(pts),
        read_transform(out).transform_points(pts), atol=1e-6)
    err = point_errors(
        result.transforms.transform,
        pair_2d.truth,
        pair_2d.fixed_geometry,
        mask=_foreground(pair_2d),
    )
    assert err["mean_vox"] < 0.35, err
    assert err["p95_vox"] < 0.8, err
    # The resampled moving image matches the fixed image far better than the raw one.
    fixed = OMEZarrReaderConstructor(pair_2d.fixed)().read_box(Box.full((192, 192)))
    moving = OMEZarrReaderConstructor(pair_2d.moving)().read_box(Box.full((192, 192)))
    warped = OMEZarrReaderConstructor(f"{out}/view/moving_resampled")().read_box(
        Box.full((192, 192)))
    inner = (slice(16, -16), slice(16, -16))
    before = np.abs(fixed[inner] - moving[inner]).mean()
    after = np.abs(fixed[inner] - warped[inner]).mean()
    assert after < 0.35 * before, (before, after)


def test_a_stage_for_the_other_similarity_is_left_out(pair_2d, tmp_path, dask_client):
    """``when_similarity``: the global stage's ``auto`` choice decides which stages run.

    The synthetic pair has one contrast, so ``auto`` picks the intensity model:
    the stage meant for MIND fits is left out, the stage before it writes the
    output, and a rerun resumes the finished output instead of running it
    (also when an interrupted resample left it marked incomplete).
    """
    stage = BlockStage(level=1, block_size=64, overlap=0.5, field_spacing_factor=2,
                       method_options={"mesh_size": 3, "similarity": "auto"})
    sched = Schedule(GlobalStage(level=1, similarity="auto", initializer="multi"), [
        stage, dataclasses.replace(stage, level=0, when_similarity="mind")])
    out = str(tmp_path / "left_out.zarr")
    result = register(pair_2d.fixed, pair_2d.moving, out, schedule=sched,
                      client=dask_client, progress=False)
    assert [r.name for r in result.levels] == ["global", "stage 0"]
    assert output_status(out) == "complete"
    assert set(Checkpoints(out, None).read()["stages"]) == {"global", "stage_0"}
    err = point_errors(result.transforms.transform, pair_2d.truth, pair_2d.fixed_geometry,
                       mask=_foreground(pair_2d))
    assert err["p95_vox"] < 1.5, err
    pts = np.random.default_rng(2).uniform(20, 170, size=(50, 2))
    np.testing.assert_allclose(read_transform(out).transform_points(pts),
                               result.transforms.transform.transform_points(pts), atol=1e-6)
    # as a resample interrupted after the last stage that ran leaves it
    set_status(out, None, "incomplete")
    again = register(pair_2d.fixed, pair_2d.moving, out, schedule=sched,
                     client=dask_client, progress=False)
    assert [r.name for r in again.levels] == ["global", "stage 0"]
    assert again.levels[-1].seconds == result.levels[-1].seconds  # read back, not rerun
    assert output_status(out) == "complete"
    np.testing.assert_allclose(again.transforms.transform.transform_points(pts),
                               result.transforms.transform.transform_points(pts), atol=1e-6)


def test_output_inside_input_is_refused(pair_3d, dask_client):
    with pytest.raises(IncompatibleImagesError, match="somewhere else"):
        register(
            pair_3d.fixed,
            pair_3d.moving,
            pair_3d.fixed + "/out",
            client=dask_client,
            progress=False,
        )


@pytest.mark.s3
def test_s3_end_to_end_on_process_cluster(s3_server, dask_client):
    """Inputs in one bucket, output to another, on a 2-worker process cluster."""
    opts = s3_server.storage_options()
    src, dst = s3_server.create_bucket(), s3_server.create_bucket()
    pair = make_demo(
        s3_server.url(src, "pair"),
        synthetic=True,
        ndim=3,
        size=48,
        max_displacement_voxels=2.0,
        chunks=16,
        storage_options=opts,
    )
    out = s3_server.url(dst, "reg.zarr")
    sched = Schedule(
        GlobalStage(level=1),
        [
            BlockStage(
                level=0,
                block_size=32,
                overlap=0.5,
                method_options={"mesh_size": 3},
                field_spacing_factor=3,
            )
        ],
    )
    result = register(
        pair.fixed,
        pair.moving,
        out,
        schedule=sched,
        client=dask_client,
        storage_options=opts,
        progress=False,
    )
    assert output_status(out, opts) == "complete"
    fixed = OMEZarrReaderConstructor(pair.fixed, storage_options=opts)().read_box(
        Box.full(pair.fixed_geometry.shape)
    )
    back = read_transform(out, opts)
    err = point_errors(back, pair.truth, pair.fixed_geometry, mask=fixed > 0.05)
    assert err["mean_vox"] < 0.5, err
    affine_only = point_errors(
        result.transforms.transform.affine, pair.truth, pair.fixed_geometry, mask=fixed > 0.05
    )
    assert err["mean_vox"] < 0.6 * affine_only["mean_vox"], (err, affine_only)


def test_into_fixed_is_checked_before_anything_is_written(pair_3d, tmp_path, dask_client):
    from ngff_dreg.errors import UnsupportedVersionError

    out = tmp_path / "never.zarr"
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        register(pair_3d.fixed, pair_3d.moving, str(out), schedule=_schedule_3d(),
                 client=dask_client, progress=False, into_fixed=True)
    assert not out.exists()


def test_output_shards_shard_the_final_fields_and_the_resampled_image(pair_3d, tmp_path,
                                                                       dask_client):
    """register(output_shards=) on a process cluster: sharded outputs, unsharded checkpoints."""
    import zarr

    out = str(tmp_path / "sharded.zarr")
    schedule = Schedule(GlobalStage(level=1), [
        BlockStage(level=1, block_size=32, method="affine", field_spacing_factor=2),
        BlockStage(level=0, block_size=32, method="affine", field_spacing_factor=3),
    ])
    result = register(pair_3d.fixed, pair_3d.moving, out, schedule=schedule,
                      client=dask_client, progress=False, resample=True, output_shards="auto")
    assert output_status(out) == "complete"

    def shards(path: str) -> tuple[int, ...] | None:
        arr = zarr.open_array(out, path=path, mode="r")
        return None if arr.shards is None else tuple(arr.shards)

    # final fields: 24³ nodes in 64³ chunks, 'auto' capped to the one chunk they need
    assert shards("coordinateTransformations/fixed_to_moving/s0") == (3, 64, 64, 64)
    assert shards("coordinateTransformations/moving_to_fixed/s0") == (3, 64, 64, 64)
    assert shards("quality/jacobian") == (64, 64, 64)
    # resampled: 72³ voxels in 64³ chunks, one 128³ shard of 8 chunks
    assert shards("view/moving_resampled/0") == (128, 128, 128)
    ckpt = [p for p in zarr.open_group(f"{out}/checkpoints", mode="r").group_keys()]
    assert ckpt and all(
        shards(f"checkpoints/{c}/coordinateTransformations/fixed_to_moving/s0") is None
        for c in ckpt)
    pts = np.random.default_rng(0).uniform(20, 50, size=(30, 3))
    np.testing.assert_allclose(read_transform(out).transform_points(pts),
                               result.transforms.transform.transform_points(pts), atol=1e-6)
    # the layout is part of the run: a rerun asking for another one is refused
    with pytest.raises(OutputExistsError, match="overwrite"):
        register(pair_3d.fixed, pair_3d.moving, out, schedule=schedule, client=dask_client,
                 progress=False, resample=True)
