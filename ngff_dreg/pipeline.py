"""Coarse-to-fine registration of two OME-Zarr images: :func:`register`, a loop over stage runners.

1. **Read and check** (:func:`ngff_dreg.run.open_inputs`): both pyramids,
   the schedule's levels and the data, before anything is written; the
   output is then leased (:mod:`ngff_dreg.io.storage.lease`: one run writes
   it at a time) and claimed
   (:func:`ngff_dreg.io.omezarr.output_state.claim_output`).
2. **Global stage** (:mod:`ngff_dreg.global_stage`): rigid then affine on a
   coarse level, in one task, started from the images' centres of mass (or a
   user's initial transform).
3. **Block stages**, coarse to fine (:mod:`ngff_dreg.block_stage`): blocks
   registered by the engine (:func:`~ngff_dreg.engine.register_images`) from
   the transform composed so far, then reduced to one field
   (:class:`~ngff_dreg.reduce.ReduceToDisplacementField`) that folds in
   everything before it. The last stage writes the final affine + dense field
   as an NGFF 0.6 scene at ``output``.
4. Optionally the moving image resampled into fixed space, as a multiscale
   OME-Zarr image at ``output/moving_resampled``, and the transform written
   into the fixed image.

Each finished stage is checkpointed under ``output/checkpoints`` (a manifest
plus one transform scene per block stage). A rerun with the same arguments
skips finished stages and gives the same answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from ngff_dreg.block_stage import BlockStageRunner
from ngff_dreg.cluster import client_context, progress_bar
from ngff_dreg.global_stage import GlobalStageRunner
from ngff_dreg.interfaces import RegistrationResult
from ngff_dreg.io.omezarr.output_state import RESAMPLED, claim_output, set_status
from ngff_dreg.io.omezarr.view_writer import VIEW_FIXED, VIEW_GROUP, link_view
from ngff_dreg.io.storage.chunk_cache import close_host_cache
from ngff_dreg.io.storage.lease import hold_output
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import join_url
from ngff_dreg.run import Run, RunInputs, RunOptions, open_inputs, open_masks
from ngff_dreg.schedule import Schedule
from ngff_dreg.transforms import TransformChain

__all__ = ["RunOptions", "block_runners", "register", "stage_runners"]

logger = logging.getLogger(__name__)


def stage_runners(schedule: Schedule, similarity: str | None = None
                  ) -> list[Callable[[Run], None]]:
    """The runners of a schedule's stages, coarse to fine (global first).

    ``similarity``: what the global stage chose for ``similarity = "auto"``;
    block stages whose ``when_similarity`` does not match what they would fit
    are left out (and the last one left writes the output).
    """
    runners: list[Callable[[Run], None]] = []
    if schedule.global_stage is not None:
        runners.append(GlobalStageRunner(schedule.global_stage))
    return runners + block_runners(schedule, similarity)


def block_runners(schedule: Schedule, similarity: str | None) -> list[BlockStageRunner]:
    """The block stages that run given the global stage's choice (see :func:`stage_runners`)."""
    kept = schedule.running_stages(similarity)
    return [BlockStageRunner(i, schedule.stages[i], i == kept[-1]) for i in kept]


def _run_stages(run: Run, progress: bool, resample: bool) -> None:
    """Every stage runner in order, then the resample if asked for and not done yet.

    The global stage runs first: which block stages run can depend on its
    choice of similarity (:attr:`~ngff_dreg.schedule.BlockStage.when_similarity`).
    """
    run.complete_finished_output()
    schedule = run.inputs.schedule
    bar = progress_bar(progress, 1 + len(schedule.stages), "stages")
    if schedule.global_stage is not None:
        GlobalStageRunner(schedule.global_stage)(run)
    bar.update(1)
    runners = block_runners(schedule, run.similarity)
    kept = {r.index for r in runners}
    for i, st in enumerate(schedule.stages):
        if i not in kept:
            logger.info("stage %d left out: it runs only when the block stages fit %s, "
                        "and they fit %s", i, st.when_similarity, st.fits(run.similarity))
            bar.update(1)
    for runner in runners:
        runner(run)
        bar.update(1)
    bar.close()
    if resample and not run.claim.manifest.get("resampled"):
        _resample(run)


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
    resample_channels: Sequence[int | str] | None = None,
    resample_times: Sequence[int | str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    signal_threshold: float | None = None,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    channel: int | str = 0,
    time_index: int | str = 0,
    fixed_channel: int | str | None = None,
    moving_channel: int | str | None = None,
    fixed_time: int | str | None = None,
    moving_time: int | str | None = None,
    on_stage_done: Callable[[Any], Any] | None = None,
    into_fixed: bool | str = False,
    upgrade_fixed: bool = False,
    output_shards: int | Sequence[int] | str | None = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` coarse to fine and write the transform.

    Parameters
    ----------
    fixed, moving:
        OME-Zarr multiscale image URLs (local path, ``s3://``, ``https://``).
    output:
        URL of the NGFF 0.6 scene to write (must differ from the inputs).
    schedule, client, storage_options, ..., upgrade_fixed, output_shards:
        The run's options, each documented in :class:`~ngff_dreg.run.RunOptions`
        (the schedule, the dask client or ``"local:N"``, fsspec options,
        ``initial_transform``, ``resample``, ``overwrite``, masks...).
        ``fixed_channel``/``moving_channel`` pick the channel registered in
        each image, by index or ``omero`` label (``channel`` sets both);
        ``fixed_time``/``moving_time`` the time point (``time_index`` both).
        With ``resample``, every channel and time point of the moving image is
        resampled. ``output_shards`` writes the output's fields and resampled
        image sharded (an edge, a shape or ``"auto"``; default unsharded).

    Returns
    -------
    RegistrationResult
        ``transforms`` (forward/inverse :class:`TransformChain`), ``status``
        of the last block stage, ``levels`` (a :class:`StageReport` per stage)
        and ``timings``.

    """
    namespace = dict(locals())
    for key in ("resample_channels", "resample_times"):
        if namespace[key] is not None:
            namespace[key] = tuple(namespace[key])
    if isinstance(output_shards, (list, tuple)):
        namespace["output_shards"] = tuple(int(v) for v in output_shards)
    options = RunOptions.from_namespace(namespace)
    t_start = time.perf_counter()
    inputs = open_inputs(fixed, moving, output, options)  # nothing is written before this
    with ExitStack() as stack:
        if inputs.cache_token is not None:  # opened by open_inputs in this process
            stack.callback(close_host_cache, inputs.cache_token)
        # one writer per output: see ngff_dreg.io.storage.lease
        lease = stack.enter_context(hold_output(output, inputs.o_opts, inputs.fingerprint()))
        claim = claim_output(output, inputs.o_opts, inputs.fingerprint(), overwrite=overwrite)
        masks = open_masks(inputs)
        run = Run(inputs, client_context(client, stack), claim, masks, lease=lease)
        stack.callback(run.close_host_cache)  # before the client closes
        _run_stages(run, progress, resample)
    if inputs.into_name is not None:
        _into_fixed(run, inputs)
    return run.result(t_start)


def _resample(run: Run) -> None:
    """Write the moving image resampled into fixed space below the output."""
    from ngff_dreg.apply import apply_transform

    inputs = run.inputs
    assert run.final is not None
    t0 = time.perf_counter()
    # Until the image is written the output as a whole is incomplete.
    run.check_lease()
    set_status(inputs.output, inputs.o_opts, "incomplete")
    # The view is ours and written whole each time (a killed run may have left part of it).
    zarr_group(join_url(inputs.output, VIEW_GROUP), inputs.o_opts, mode="w", zarr_format=3)
    common: dict[str, Any] = dict(
        level=0, fixed_storage_options=inputs.f_opts, output_storage_options=inputs.o_opts,
        overwrite=True, scheduler=run.client, shards=inputs.options.output_shards)
    apply_transform(
        inputs.moving,
        inputs.fixed,
        run.final.transform,
        join_url(inputs.output, RESAMPLED),
        moving_storage_options=inputs.m_opts,
        channels=inputs.options.resample_channels,
        times=inputs.options.resample_times,
        name="moving_resampled",
        **common,
    )
    # The fixed image beside it, on its own grid (so a viewer finds both in one
    # scene, with the same pyramid and metadata), then the scenes that link them.
    apply_transform(
        inputs.fixed,
        inputs.fixed,
        TransformChain.identity(inputs.ndim),
        join_url(inputs.output, VIEW_FIXED),
        moving_storage_options=inputs.f_opts,
        name="fixed",
        **common,
    )
    link_view(inputs.output, inputs.o_opts)
    run.claim.manifest["resampled"] = True
    run.check_lease()
    run.checkpoints.write(run.claim.manifest)
    set_status(inputs.output, inputs.o_opts, "complete")
    run.timings["resample"] = time.perf_counter() - t0
    run.io.collect("resample", run.client)


def _into_fixed(run: Run, inputs: RunInputs) -> None:
    """Copy the registration into the fixed image's own group."""
    from ngff_dreg.io.omezarr.image_transform_writer import write_transform_into_image

    t0 = time.perf_counter()
    write_transform_into_image(inputs.fixed, inputs.output, name=inputs.into_name,
                               storage_options=inputs.f_opts, scene_storage_options=inputs.o_opts,
                               overwrite=inputs.options.overwrite,
                               upgrade=inputs.options.upgrade_fixed)
    run.timings["into_fixed"] = time.perf_counter() - t0
