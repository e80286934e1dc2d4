"""Coarse-to-fine registration of two OME-Zarr images: :func:`register`.

1. **Global stage**: rigid then affine on a coarse level, in one task, started
   from the images' centres of mass (or a user's initial transform).
2. **Block stages**, coarse to fine: blocks registered by the engine
   (:func:`~ngff_dreg.engine.register_images`) from the transform composed so
   far, then reduced to one field (:class:`~ngff_dreg.reduce.ReduceToDisplacementField`)
   that folds in everything before it. The last stage writes the final
   affine + dense field as an NGFF 0.6 scene at ``output``.
3. Optionally the moving image resampled into fixed space, as a multiscale
   OME-Zarr image at ``output/moving_resampled``.

Each finished stage is checkpointed under ``output/checkpoints`` (a manifest
plus one transform scene per block stage). A rerun with the same arguments
skips finished stages and gives the same answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.engine import BlockOptions, register_images
from ngff_dreg.errors import (
    IncompatibleImagesError,
    RegistrationFailedError,
    ScheduleError,
)
from ngff_dreg.geometry import ImageGeometry, one_per_axis
from ngff_dreg.interfaces import (
    BlockRegStatus,
    HasReport,
    ItkTransformLike,
    RegistrationResult,
    RegistrationTransformResult,
)
from ngff_dreg.io.output_state import (
    Checkpoints,
    StageReport,
    claim_output,
    fingerprint,
    output_status,
    set_status,
)
from ngff_dreg.schedule import Schedule, check_schedule_levels, matching_level, resolve_level
from ngff_dreg.transforms import AffineTransform, TransformChain
from ngff_dreg.validate import check_level_data, check_overlap

__all__ = ["register"]

logger = logging.getLogger(__name__)

RESAMPLED = "moving_resampled"


# --------------------------------------------------------------------------- tasks
def _level_arrays(fixed_ctor: Any, moving_ctor: Any) -> tuple[Any, Any]:
    from ngff_dreg.geometry import Box

    f = fixed_ctor().read_box(Box.full(fixed_ctor.geometry.shape)).astype(np.float32)
    m = moving_ctor().read_box(Box.full(moving_ctor.geometry.shape)).astype(np.float32)
    return f, m


def _centre_of_mass(arr: npt.NDArray[np.float32], geom: ImageGeometry) -> npt.NDArray[np.float64]:
    a = np.nan_to_num(arr.astype(np.float64))
    a = a - np.percentile(a, 5)
    a[a < 0] = 0
    total = a.sum()
    if total <= 0:
        return geom.index_to_physical((np.asarray(geom.size) - 1) / 2.0)
    idx = [np.arange(n) for n in a.shape]
    com_zyx = [
        float((a.sum(axis=tuple(j for j in range(a.ndim) if j != i)) * idx[i]).sum() / total)
        for i in range(a.ndim)
    ]
    return geom.array_index_to_physical(np.asarray(com_zyx))


def global_alignment(
    fixed_ctor: Any,
    moving_ctor: Any,
    initial: AffineTransform | None,
    initializer: str,
    kinds: Sequence[str],
    metric: str,
    iterations: int,
) -> AffineTransform:
    """Whole-level linear registration (runs in one task).

    Returns the fixed→moving affine.
    """
    from ngff_dreg.geometry import Box
    from ngff_dreg.itk_bridge import image_from_array
    from ngff_dreg.methods import ItkLinearRegistration
    from ngff_dreg.worker import prepare_worker

    prepare_worker()
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor)
    fixed, moving = np.nan_to_num(fixed), np.nan_to_num(moving)
    fg, mg = fixed_ctor.geometry, moving_ctor.geometry
    ndim = fg.ndim
    if initial is not None:
        current = initial
    elif initializer == "none":
        current = AffineTransform.identity(ndim)
    elif initializer == "moments":
        cf, cm = _centre_of_mass(fixed, fg), _centre_of_mass(moving, mg)
        current = AffineTransform.from_arrays(np.eye(ndim), cm - cf)
    else:
        current = _centres_translation(fg, mg)
    fimg = image_from_array(fixed, fg, Box.full(fg.shape))
    mimg = image_from_array(moving, mg, Box.full(mg.shape))
    from ngff_dreg.interfaces import BlockInfo

    info = BlockInfo((0,) * ndim, Box.full(fg.shape).slices)
    smallest = min(fg.shape)
    shrink = tuple(f for f in (4, 2, 1) if smallest // f >= 16) or (1,)
    sigmas = tuple(float(max(0, f - 1)) for f in shrink)
    best = _ncc_arrays(fixed, fg, moving, mg, current)
    for kind in kinds:
        method = ItkLinearRegistration(
            kind=kind,
            metric=metric,
            shrink_factors=shrink,
            smoothing_sigmas=sigmas,
            iterations=iterations,
            sampling_percentage=0.25,
            max_displacement_fraction=0.5,
        )
        result = method(fimg, mimg, current.to_itk(), info)
        if result.status != BlockRegStatus.SUCCESS or result.transform is None:
            logger.warning(
                "global %s stage failed (%s); keeping the previous transform",
                kind,
                result.message or result.status.name,
            )
            continue
        step = AffineTransform.from_itk(result.transform)
        candidate = step.then(current)  # block transform acts first
        score = _ncc_arrays(fixed, fg, moving, mg, candidate)
        if not np.isfinite(score) or (np.isfinite(best) and score < best - 1e-4):
            logger.warning(
                "global %s stage lowered the NCC (%.4f -> %.4f); keeping the previous transform",
                kind,
                best,
                score,
            )
            continue
        current, best = candidate, score
    return current


def _ncc_arrays(
    fixed: npt.NDArray[np.float32],
    fg: ImageGeometry,
    moving: npt.NDArray[np.float32],
    mg: ImageGeometry,
    transform: Any,
) -> float:
    """NCC of ``fixed`` vs ``moving`` warped into it, where the warp lands inside."""
    from scipy import ndimage

    from ngff_dreg.transforms import map_points

    grids = np.meshgrid(*[np.arange(n) for n in fg.shape], indexing="ij")
    idx = np.stack(grids, -1).reshape(-1, fg.ndim)
    pts = fg.array_index_to_physical(idx.astype(np.float64))
    midx = mg.physical_to_index(map_points(transform, pts))[:, ::-1]
    inside = np.all((midx >= 0) & (midx <= np.asarray(mg.shape) - 1), axis=1)
    warped = ndimage.map_coordinates(moving, midx.T, order=1, mode="nearest")
    f = fixed.reshape(-1)[inside]
    w = warped[inside]
    if f.size < 10:
        return float("nan")
    f = f - f.mean()
    w = w - w.mean()
    den = float(np.sqrt((f * f).sum() * (w * w).sum()))
    return float((f * w).sum() / den) if den > 0 else float("nan")


def ncc_at_level(fixed_ctor: Any, moving_ctor: Any, transform: Any) -> float:
    """NCC of the fixed level vs the moving level warped by ``transform``.

    Computed over fixed voxels whose mapped point falls inside the moving image.
    """
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor)
    return _ncc_arrays(
        np.nan_to_num(fixed),
        fixed_ctor.geometry,
        np.nan_to_num(moving),
        moving_ctor.geometry,
        transform,
    )


# --------------------------------------------------------------------------- driver
def _same_location(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same location or one is inside the other."""
    from ngff_dreg.io.stores import location_key

    na, nb = location_key(a), location_key(b)
    return na == nb or na.startswith(nb + "/") or nb.startswith(na + "/")


def _as_affine(initial: Any, ndim: int, storage_options: Mapping[str, Any] | None) -> Any:
    """User initial transform → AffineTransform or TransformChain."""
    if initial is None:
        return None
    if isinstance(initial, (AffineTransform, TransformChain)):
        return initial
    if isinstance(initial, str):
        from ngff_dreg.io.transform_reader import read_transform

        return read_transform(initial, storage_options)
    if isinstance(initial, ItkTransformLike):
        return AffineTransform.from_itk(initial)
    arr = np.asarray(initial, dtype=np.float64)
    if arr.shape == (ndim + 1, ndim + 1):
        return AffineTransform.from_homogeneous(arr)
    if arr.shape == (ndim, ndim + 1):
        return AffineTransform.from_arrays(arr[:, :ndim], arr[:, ndim])
    raise ScheduleError(f"initial transform matrix must be {ndim + 1}x{ndim + 1}, got {arr.shape}")


def _client_context(client: Any, stack: ExitStack) -> Any:
    """The dask client to use: the given one, an address, or a new LocalCluster."""
    from distributed import Client, LocalCluster

    n_workers: int | None = None
    if client is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        n_workers = max(1, len(affinity) if affinity else os.cpu_count() or 1)
    elif isinstance(client, str) and client.startswith("local:"):
        try:
            n_workers = int(client.split(":", 1)[1])
        except ValueError:
            n_workers = 0
        if n_workers < 1:
            raise ScheduleError(f"--scheduler {client!r}: expected local:N with N >= 1")
    if n_workers is not None:
        from ngff_dreg.worker import warm_up_workers, worker_spawn_settings

        # One single-threaded process per core: ITK then runs one thread per task.
        with worker_spawn_settings():
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                )
            )
        client = stack.enter_context(Client(cluster, set_as_default=False))
        from ngff_dreg.methods.bspline import NUMPY_ENGINE_ITK

        # What the default block method needs of ITK loads in every worker at
        # once; the global stage's worker loads the rest of it.
        warm_up_workers(client, modules=NUMPY_ENGINE_ITK)
    elif isinstance(client, str):
        client = stack.enter_context(Client(client, set_as_default=False))
    link = getattr(client, "dashboard_link", None)
    if link:
        logging.getLogger("ngff_dreg.dashboard").info("dask dashboard: %s", link)
    return client


def register(
    fixed: str,
    moving: str,
    output: str,
    *,
    schedule: Schedule | str | None = None,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    fixed_storage_options: Mapping[str, Any] | None = None,
    moving_storage_options: Mapping[str, Any] | None = None,
    output_storage_options: Mapping[str, Any] | None = None,
    initial_transform: Any = None,
    resample: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    signal_threshold: float | None = None,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    channel: int = 0,
    time_index: int = 0,
    on_stage_done: Any = None,
    into_fixed: bool | str = False,
    upgrade_fixed: bool = False,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` coarse to fine and write the transform.

    Parameters
    ----------
    fixed, moving:
        OME-Zarr multiscale image URLs (local path, ``s3://``, ``https://``).
    output:
        URL of the NGFF 0.6 scene to write (must differ from the inputs).
    schedule:
        A :class:`~ngff_dreg.schedule.Schedule`, a path to a TOML/YAML schedule, or
        ``None`` for :meth:`Schedule.default` adapted to the fixed pyramid.
    client:
        A ``dask.distributed.Client``, a scheduler address
        (``"tcp://host:8786"``), ``"local:N"``, or ``None`` to start a
        process-based LocalCluster sized to the machine.
    storage_options:
        fsspec options for every URL; the specific ``*_storage_options``
        override them per URL. Never logged.
    initial_transform:
        Skip the automatic start: an ``itk`` linear transform, an
        ``(ndim+1)²`` matrix, an :class:`AffineTransform`, a
        :class:`TransformChain`, or the URL of an NGFF transform scene.
    resample:
        Also write the moving image resampled into fixed space at
        ``output/moving_resampled``.
    overwrite:
        Start afresh, replacing whatever is at ``output``. Without it, an
        output left by an interrupted run with the same arguments is resumed,
        and any other existing output is an error.
    progress:
        Show progress bars (terminal or Jupyter).
    signal_threshold:
        Fixed blocks with under 5 % of voxels above this value are skipped
        as background.
    fixed_mask, moving_mask:
        URLs of OME-Zarr label/mask images (e.g. ``fixed.ome.zarr/labels/brain``)
        in the same physical space as their image; blocks outside the masks are
        skipped (``NO_SIGNAL``) before any moving voxel is read. Their storage
        options are those of the fixed/moving image.
    channel, time_index:
        Index of the channel / time point to register.
    on_stage_done:
        Optional callback ``f(stage_report)`` after each stage (tests use it
        to interrupt a run).
    into_fixed:
        Also write the transform into the fixed image's own group, as an NGFF
        0.6 transform from its intrinsic coordinate system to a new one named
        after the moving image (or this string). Checked before the run starts.
        See :func:`ngff_dreg.io.image_transform_writer.write_transform_into_image`.
    upgrade_fixed:
        With ``into_fixed``, allow rewriting a 0.5 fixed image's metadata as
        0.6 (arrays untouched; the old metadata is kept).

    Returns
    -------
    RegistrationResult
        ``transforms`` (forward/inverse :class:`TransformChain`), ``status``
        of the last block stage, ``levels`` (a :class:`StageReport` per stage)
        and ``timings``.

    """
    from ngff_dreg.io.field_writer import FieldSceneWriter
    from ngff_dreg.io.multiscale import open_multiscale
    from ngff_dreg.io.reader import OMEZarrReaderConstructor
    from ngff_dreg.io.transform_reader import read_transform
    from ngff_dreg.reduce import ReduceToDisplacementField

    t_start = time.perf_counter()
    base = dict(storage_options or {})
    f_opts = {**base, **(fixed_storage_options or {})} or None
    m_opts = {**base, **(moving_storage_options or {})} or None
    o_opts = {**base, **(output_storage_options or {})} or None
    for url in (fixed, moving):
        if _same_location(url, output):
            raise IncompatibleImagesError(
                f"output {output} is (inside) input {url}: write the transform somewhere else"
            )

    into_name: str | None = None
    if into_fixed:
        from ngff_dreg.io.image_transform_writer import check_into_image, default_system_name

        into_name = into_fixed if isinstance(into_fixed, str) else default_system_name(moving)
        check_into_image(fixed, into_name, storage_options=f_opts, overwrite=overwrite,
                         upgrade=upgrade_fixed, scene_url=output)

    fms = open_multiscale(fixed, f_opts)
    mms = open_multiscale(moving, m_opts)
    if fms.ndim != mms.ndim:
        raise IncompatibleImagesError(
            f"fixed image {fixed} is {fms.ndim}-D but moving image {moving} is {mms.ndim}-D"
        )
    unit = fms.levels[0].geometry.unit or mms.levels[0].geometry.unit
    fixed_geoms = [lvl.geometry for lvl in fms.levels]
    moving_ms = open_multiscale(moving, m_opts, unit=unit) if unit else mms
    moving_geoms = [lvl.geometry for lvl in moving_ms.levels]
    if isinstance(schedule, str):
        schedule = Schedule.load(schedule)
    schedule = schedule or Schedule.default(fixed_geoms)
    if not schedule.stages:
        raise ScheduleError("the schedule has no block stage")
    check_overlap(fixed, moving, fixed_geoms[-1], moving_geoms[-1], initial_transform)
    check_schedule_levels(schedule, fixed_geoms, fixed)  # before anything is written

    def ctor(url: str, opts: Any, level: int) -> OMEZarrReaderConstructor:
        return OMEZarrReaderConstructor(
            url, level=level, storage_options=opts, channel=channel, time=time_index, unit=unit
        )

    ndim = fms.ndim
    g_level = (
        resolve_level(fixed_geoms, schedule.global_stage.level, what=f"fixed image {fixed}")
        if schedule.global_stage is not None and schedule.global_stage.level is not None
        else _default_global(fixed_geoms)
    )
    gm_level = matching_level(moving_geoms, fixed_geoms[g_level].spacing)
    g_fixed, g_moving = ctor(fixed, f_opts, g_level), ctor(moving, m_opts, gm_level)
    for name, url, c in (("fixed", fixed, g_fixed), ("moving", moving, g_moving)):
        check_level_data(name, url, c.level, c().read_box(_full(c.geometry)))

    run_fingerprint = fingerprint(
        {
            "fixed": fixed,
            "moving": moving,
            "schedule": schedule.to_dict(),
            "channel": channel,
            "time": time_index,
            "initial": repr(_as_affine(initial_transform, ndim, f_opts)),
            "threshold": signal_threshold,
            "masks": [fixed_mask, moving_mask],
        }
    )
    claim = claim_output(output, o_opts, run_fingerprint, overwrite=overwrite)
    ckpt = Checkpoints(output, o_opts)
    state, same_run, manifest = claim.state, claim.same_run, claim.manifest

    reports: list[StageReport] = []
    timings: dict[str, float] = {}
    mask_levels = {
        name: (url, opts, [lvl.geometry for lvl in open_multiscale(url, opts, unit=unit).levels])
        for name, url, opts in (("fixed", fixed_mask, f_opts), ("moving", moving_mask, m_opts))
        if url is not None
    }

    def stage_options(f_level: int, m_level: int) -> BlockOptions:
        masks: dict[str, Any] = {}
        for name, (url, opts, geoms) in mask_levels.items():
            spacing = (fixed_geoms[f_level] if name == "fixed" else moving_geoms[m_level]).spacing
            masks[f"{name}_mask"] = OMEZarrReaderConstructor(
                url, level=matching_level(geoms, spacing), storage_options=opts, unit=unit
            )
        return BlockOptions(signal_threshold=signal_threshold, **masks)

    with ExitStack() as stack:
        dask_client = _client_context(client, stack)
        bar = _progress(
            progress, len(schedule.stages) + (schedule.global_stage is not None), "stages"
        )

        # ---- global stage
        current: Any = _as_affine(initial_transform, ndim, f_opts)
        done = manifest["stages"]
        if schedule.global_stage is not None and current is None:
            entry = done.get("global")
            if entry is not None:
                current = AffineTransform.from_homogeneous(entry["affine"])
                reports.append(StageReport.from_entry("global", entry))
            else:
                t0 = time.perf_counter()
                gs = schedule.global_stage
                fut = dask_client.submit(
                    global_alignment,
                    g_fixed,
                    g_moving,
                    None,
                    gs.initializer,
                    gs.kinds,
                    gs.metric,
                    gs.iterations,
                    pure=False,
                )
                current = fut.result()
                before = dask_client.submit(
                    ncc_at_level,
                    g_fixed,
                    g_moving,
                    _initial_only(g_fixed, g_moving, gs.initializer),
                )
                after = dask_client.submit(ncc_at_level, g_fixed, g_moving, current)
                rep = StageReport(
                    "global",
                    g_level,
                    gm_level,
                    "+".join(gs.kinds),
                    ncc_before=before.result(),
                    ncc_after=after.result(),
                    seconds=time.perf_counter() - t0,
                )
                reports.append(rep)
                done["global"] = {"affine": current.homogeneous.tolist(), "report": rep.to_json()}
                ckpt.write(manifest)
                logger.info(
                    "global stage: NCC %.3f -> %.3f in %.1fs",
                    rep.ncc_before or 0,
                    rep.ncc_after or 0,
                    rep.seconds,
                )
                if on_stage_done:
                    on_stage_done(rep)
            bar.update(1)
        elif schedule.global_stage is not None:
            bar.update(1)
        if current is None:
            current = AffineTransform.identity(ndim)
        timings["global"] = reports[-1].seconds if reports else 0.0

        # ---- block stages
        last_key = f"stage_{len(schedule.stages) - 1}"
        if same_run and last_key in done and state == "incomplete":
            # Every stage finished earlier; only the resample was interrupted (it marks
            # the finished scene incomplete while it writes).
            set_status(output, o_opts, "complete")
        final: Any = None
        last_status: Any = np.zeros((0,), dtype=np.int8)
        for i, stage in enumerate(schedule.stages):
            key = f"stage_{i}"
            is_last = i == len(schedule.stages) - 1
            stage_url = output if is_last else ckpt.url(f"stage_{i}")
            f_level = resolve_level(fixed_geoms, stage.level, what=f"fixed image {fixed}")
            m_level = matching_level(moving_geoms, fixed_geoms[f_level].spacing)
            entry = done.get(key)
            if entry is not None and output_status(stage_url, o_opts) == "complete":
                current = read_transform(stage_url, o_opts)
                rep = StageReport.from_entry(key, entry)
                reports.append(rep)
                last_status = rep.status
                if is_last:
                    final = RegistrationTransformResult(
                        transform=current,
                        inv_transform=read_transform(stage_url, o_opts, inverse=True),
                    )
                bar.update(1)
                continue
            t0 = time.perf_counter()
            f_ctor, m_ctor = ctor(fixed, f_opts, f_level), ctor(moving, m_opts, m_level)
            writer = FieldSceneWriter(
                stage_url, o_opts, overwrite=True, fixed_url=fixed, moving_url=moving
            )
            reducer = ReduceToDisplacementField(
                field_spacing_factor=stage.field_spacing_factor,
                compute_inverse=True,
                writer=writer,
            )
            stage_plan = register_images(
                fixed_reader_ctor=f_ctor,
                moving_reader_ctor=m_ctor,
                block_registration_method=stage.make_method(),
                reduce_method=reducer,
                initial_transform=current,
                fixed_chunk_size=_block_shape(stage.block_size, ndim),
                overlap_factors=stage.overlap,
                block_options=stage_options(f_level, m_level),
            )
            result = _run(dask_client, stage_plan, progress, f"stage {i} (level {f_level})")
            status = np.asarray(result.status)
            n_ok = int((status == BlockRegStatus.SUCCESS).sum())
            if n_ok == 0:
                raise RegistrationFailedError(
                    f"stage {i} (fixed level {f_level}): no block registered "
                    f"(statuses {_status_counts(status)}); check the images overlap or pass an "
                    "initial transform"
                )
            previous = current
            current = result.transforms.transform
            # The previous stage already scored the transform this stage started from.
            last = reports[-1].ncc_after if reports else None
            before = (
                last
                if last is not None
                else dask_client.submit(ncc_at_level, g_fixed, g_moving, previous).result()
            )
            after = dask_client.submit(ncc_at_level, g_fixed, g_moving, current)
            rep = StageReport(
                f"stage {i}",
                f_level,
                m_level,
                stage.method,
                status=status,
                ncc_before=before,
                ncc_after=after.result(),
                seconds=time.perf_counter() - t0,
                report=(
                    dict(result.transforms.report or {})
                    if isinstance(result.transforms, HasReport)
                    else {}
                ),
            )
            reports.append(rep)
            last_status = status
            timings[key] = rep.seconds
            done[key] = rep.to_json()
            ckpt.write(manifest)
            logger.info(
                "stage %d (level %d): %d/%d blocks, NCC %.3f -> %.3f in %.1fs",
                i,
                f_level,
                n_ok,
                status.size,
                rep.ncc_before or 0,
                rep.ncc_after or 0,
                rep.seconds,
            )
            if is_last:
                final = result.transforms
            if on_stage_done:
                on_stage_done(rep)
            bar.update(1)
        bar.close()

        # ---- resample
        if resample and not manifest.get("resampled"):
            from ngff_dreg.apply import apply_transform
            from ngff_dreg.io.stores import join_url

            t0 = time.perf_counter()
            # Until the image is written the output as a whole is incomplete.
            set_status(output, o_opts, "incomplete")
            apply_transform(
                moving,
                fixed,
                final.transform,
                join_url(output, RESAMPLED),
                level=0,
                moving_storage_options=m_opts,
                fixed_storage_options=f_opts,
                output_storage_options=o_opts,
                overwrite=True,
                scheduler=dask_client,
            )
            manifest["resampled"] = True
            ckpt.write(manifest)
            set_status(output, o_opts, "complete")
            timings["resample"] = time.perf_counter() - t0
    if into_name is not None:
        from ngff_dreg.io.image_transform_writer import write_transform_into_image

        t0 = time.perf_counter()
        write_transform_into_image(fixed, output, name=into_name, storage_options=f_opts,
                                   scene_storage_options=o_opts, overwrite=overwrite,
                                   upgrade=upgrade_fixed)
        timings["into_fixed"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    assert final is not None
    return RegistrationResult(transforms=final, status=last_status, levels=reports, timings=timings)


def _full(geom: ImageGeometry) -> Any:
    from ngff_dreg.geometry import Box

    return Box.full(geom.shape)


def _default_global(levels: Sequence[ImageGeometry]) -> int:
    from ngff_dreg.schedule import default_global_level

    return default_global_level(levels, 48)


def _block_shape(block: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(int(b) for b in one_per_axis(block, ndim, "block_size"))


def _status_counts(status: npt.NDArray[Any]) -> str:
    vals, counts = np.unique(status, return_counts=True)
    return ", ".join(f"{BlockRegStatus(int(v)).name}={c}" for v, c in zip(vals, counts))


def _centres_translation(fg: ImageGeometry, mg: ImageGeometry) -> AffineTransform:
    """Translation taking the fixed image's geometric centre to the moving image's."""
    cf = fg.index_to_physical((np.asarray(fg.size) - 1) / 2.0)
    cm = mg.index_to_physical((np.asarray(mg.size) - 1) / 2.0)
    return AffineTransform.from_arrays(np.eye(fg.ndim), cm - cf)


def _initial_only(fixed_ctor: Any, moving_ctor: Any, initializer: str) -> AffineTransform:
    fg, mg = fixed_ctor.geometry, moving_ctor.geometry
    if initializer == "centers":
        return _centres_translation(fg, mg)
    return AffineTransform.identity(fg.ndim)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, desc: str, unit: str = "stage") -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=True)


def _run(client: Any, plan: Any, progress: bool, desc: str) -> RegistrationResult:
    """Compute a planned stage on ``client`` with a per-block progress bar."""
    from distributed import as_completed

    futures = client.compute([*plan.block_results, plan.registration_result])
    blocks, final = futures[:-1], futures[-1]
    bar = _progress(progress, len(blocks), desc, unit="block")
    for _ in as_completed(blocks, loop=client.loop):
        bar.update(1)
    bar.close()
    return final.result()
