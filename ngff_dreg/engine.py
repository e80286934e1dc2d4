"""Register blocks: the dask graph of one block stage (``register_images``, itk-dreg's entry).

The graph knows only the plug-in interfaces (:mod:`ngff_dreg.interfaces`),
never a concrete method or reducer; optional capabilities are the Protocols
declared there. One task per fixed block reads its padded fixed block and the
matching moving region, calls the block method, and returns a picklable
:class:`~ngff_dreg.interfaces.LocatedBlockResult`. The reduction then turns the
block results into one transform. A failed block is a status, never a crash.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
from dask.base import tokenize
from dask.delayed import Delayed

from ngff_dreg._pickling import register_module_reducers
from ngff_dreg.blocks import (
    BlockPlan,
    align_block_shape,
    grid_chunks,
    moving_region,
    plan_blocks,
    status_grid,
)
from ngff_dreg.errors import (
    IncompatibleImagesError,
    InvalidMetadataError,
    ScheduleError,
    StoreAccessError,
    StoreChangedError,
)
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    AcceptsNgffTransforms,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
    ConstructReaderMethod,
    DeclaresItkModules,
    HasChunkShape,
    LocatedBlockResult,
    ReduceResultsMethod,
    RegistrationResult,
    RegistrationTransformResult,
    SupportsBuildGraph,
    SupportsToItk,
)
from ngff_dreg.itk_bridge import image_from_array, portable_domain, read_region, reader_geometry
from ngff_dreg.locality import place_blocks, slab_order
from ngff_dreg.task_args import Layer
from ngff_dreg.transforms import AffineTransform, TransformChain
from ngff_dreg.validate import has_signal

__all__ = [
    "BlockOptions",
    "BlockTasks",
    "RegistrationSchedule",
    "block_grid",
    "plan_block_tasks",
    "register_images",
    "register_block",
    "block_placement",
    "preferred_workers",
]

logger = logging.getLogger(__name__)
worker_logger = logging.getLogger("distributed.worker")

#: A whole grid with more blocks than this is coarsened (with a warning) by
#: :func:`register_images`; a slab (``grid_slab``) never is. The pipeline runs a
#: stage of more than ``ngff-dreg.stage.slab-blocks`` blocks in slabs instead
#: (:mod:`ngff_dreg.slab_stage`), at the block size asked for.
MAX_BLOCKS = 20_000

#: Errors reading a block's inputs that stop the run instead of failing the block:
#: the data changed since planning, or the store could not be read (even after
#: retrying: a chunk that stays unreadable, a corrupt chunk, metadata gone bad).
#: A failed block would be filled in from its neighbours, a guessed field that
#: looks complete.
STOP_RUN_ERRORS: tuple[type[Exception], ...] = (
    StoreChangedError,
    StoreAccessError,
    InvalidMetadataError,
)


@dataclass(frozen=True)
class BlockOptions:
    """Engine settings for block tasks (not passed to the methods).

    Attributes
    ----------
    signal_threshold:
        Voxels above this value count as signal. ``None``: only constant
        blocks are skipped.
    min_signal_fraction:
        A fixed block with a smaller fraction of signal voxels is skipped
        (``NO_SIGNAL``) before the moving image is read.
    moving_pad_voxels:
        Extra moving voxels around the mapped fixed block (``None``: the fixed
        padding, at least 4).
    points_per_axis:
        Lattice nodes per axis used to map the fixed block into the moving image.
    itk_threads:
        ITK threads per task (``None``: 1 on a dask worker).
    fixed_mask, moving_mask:
        Optional reader constructors of label/mask images (e.g. an OME-Zarr
        ``labels/`` image at a matching level). A block whose padded fixed
        region holds no mask voxel, or whose moving region holds none, is
        skipped as ``NO_SIGNAL`` (the moving image is then never read).
    workers:
        Addresses of the cluster's workers. When given, the block grid is cut
        into as many contiguous slabs (along its longest axis) and each slab's
        tasks prefer one worker, so neighbouring blocks, which share the
        storage chunks of their halos, are read by the same process and its
        chunk cache (:mod:`ngff_dreg.io.storage.chunk_cache`). Other workers may still
        take a task when theirs is busy. Empty: dask places tasks freely.
    machines:
        The workers grouped by machine (workers sharing a host cache). With
        more than one machine, the block grid is cut into one contiguous
        group per machine first, and each group into one slab per worker of
        its machine (:func:`ngff_dreg.locality.place_blocks`), so blocks on
        two machines share fewer halo chunks. Empty or one machine: as
        ``workers`` says.
    skip_blank_blocks:
        Skip (``NO_SIGNAL``) a fixed block with too little signal (see
        ``signal_threshold`` and ``min_signal_fraction``) instead of calling
        the block method on it. Off by default, as in itk-dreg, whose
        ``register_images`` calls the method on every block;
        :func:`ngff_dreg.register` turns it on.

    """

    skip_blank_blocks: bool = False
    signal_threshold: float | None = None
    min_signal_fraction: float = 0.05
    moving_pad_voxels: int | None = None
    points_per_axis: int = 7
    itk_threads: int | None = None
    fixed_mask: Any = None
    moving_mask: Any = None
    workers: tuple[str, ...] = ()
    machines: tuple[tuple[str, ...], ...] = ()


@dataclass
class RegistrationSchedule:
    """A planned (not yet computed) block-registration stage.

    ``registration_result.compute()`` runs it on the active dask client and
    returns a :class:`~ngff_dreg.interfaces.RegistrationResult`.
    """

    registration_result: Delayed
    fixed_da: da.Array
    blocks: list[BlockPlan] = field(default_factory=list)
    block_results: list[Delayed] = field(default_factory=list)
    fixed_geometry: ImageGeometry | None = None
    moving_geometry: ImageGeometry | None = None


def _chunk_shape(ctor: Any) -> tuple[int, ...] | None:
    shape = ctor.chunk_shape if isinstance(ctor, HasChunkShape) else None
    return tuple(int(v) for v in shape) if shape is not None else None


def _mask_covers(mask_ctor: Any, geometry: ImageGeometry, box: Box) -> bool:
    """True when the mask has a non-zero voxel in ``box`` of an image of ``geometry``.

    The box's physical bounds are mapped into the mask's own grid, so the mask
    may be on another pyramid level than the image.
    """
    mgeom = reader_geometry(mask_ctor)
    corner_idx = np.array(
        np.meshgrid(*[(a, b - 1) for a, b in zip(box.start, box.stop)], indexing="ij")
    ).reshape(geometry.ndim, -1).T
    corners = geometry.array_index_to_physical(corner_idx.astype(np.float64))
    idx = mgeom.physical_to_index(corners)[:, ::-1]
    lo = np.floor(idx.min(axis=0)).astype(int)
    hi = np.ceil(idx.max(axis=0)).astype(int) + 1
    mbox = Box(tuple(lo), tuple(hi)).clip(mgeom.shape)
    if mbox.is_empty:
        return False
    return bool(np.any(read_region(mask_ctor(), mbox)))


def _as_itk_transform(transform: Any, near_points: npt.NDArray[np.float64]) -> Any:
    if isinstance(transform, SupportsToItk):
        to_itk: Any = transform.to_itk  # a TransformChain also takes near_points=
        try:
            return to_itk(near_points=near_points)
        except TypeError:
            return to_itk()
    return transform


def _map_points(transform: Any) -> Any:
    from ngff_dreg.transforms import map_points

    return lambda pts: map_points(transform, pts)


@dataclass
class _PreparedBlock:
    """What a block method is called with (besides the block info)."""

    fixed_image: Any
    moving_image: Any
    initial: Any


def _failed(status: BlockRegStatus, message: str) -> BlockPairRegistrationResult:
    return BlockPairRegistrationResult.failed(status, message)


def _method_initial(
    method: BlockPairRegistrationMethod, initial: Any, geometry: ImageGeometry, padded: Box
) -> Any:
    """The initial transform as the method takes it: unconverted, or an ``itk.Transform``."""
    if (
        isinstance(method, AcceptsNgffTransforms)
        and method.accepts_ngff_transforms
        and isinstance(initial, (AffineTransform, TransformChain))
    ):
        return initial  # the method applies it itself
    near = geometry.sample_points(padded, per_axis=3)
    return _as_itk_transform(initial, near)


def _prepare_block(
    plan: BlockPlan,
    fixed_reader_ctor: ConstructReaderMethod,
    moving_reader_ctor: ConstructReaderMethod,
    method: BlockPairRegistrationMethod,
    initial_transform: Any,
    options: BlockOptions,
) -> _PreparedBlock | BlockPairRegistrationResult:
    """Read the padded fixed block and the moving region it maps to, as ITK images.

    A block skipped on the way (outside a mask, no signal, outside the moving
    image) is returned as its failed result. The fixed mask is checked before
    the fixed block is read, and the moving image is read last, so a skipped
    block costs no image reads it does not need.
    """
    fixed_geometry = reader_geometry(fixed_reader_ctor)
    if options.fixed_mask is not None and not _mask_covers(
        options.fixed_mask, fixed_geometry, plan.padded
    ):
        return _failed(BlockRegStatus.NO_SIGNAL, "outside the mask")
    fixed = read_region(fixed_reader_ctor(), plan.padded)
    inner = fixed[plan.box.relative_to(plan.padded)]
    if options.skip_blank_blocks and not has_signal(
        inner, threshold=options.signal_threshold, min_fraction=options.min_signal_fraction
    ):
        return _failed(BlockRegStatus.NO_SIGNAL, "no signal")
    moving_geometry = reader_geometry(moving_reader_ctor)
    pad = options.moving_pad_voxels
    if pad is None:
        pad = max(4, *(p - b for p, b in zip(plan.padded.shape, plan.box.shape)))
    mbox, inside = moving_region(
        fixed_geometry,
        plan.padded,
        moving_geometry,
        _map_points(initial_transform),
        per_axis=options.points_per_axis,
        pad_voxels=pad,
    )
    if mbox is None:
        return _failed(
            BlockRegStatus.OUT_OF_BOUNDS,
            f"only {inside:.0%} of the block maps inside the moving image",
        )
    if options.moving_mask is not None and not _mask_covers(
        options.moving_mask, moving_geometry, mbox
    ):
        return _failed(BlockRegStatus.NO_SIGNAL, "outside the moving mask")
    moving_reader = moving_reader_ctor()
    moving = read_region(moving_reader, mbox)
    if not np.all(np.isfinite(fixed)) or not np.all(np.isfinite(moving)):
        fixed = np.nan_to_num(fixed.astype(np.float32, copy=False))
        moving = np.nan_to_num(moving.astype(np.float32, copy=False))
    fixed_image = image_from_array(
        fixed.astype(np.float32, copy=False), fixed_geometry, plan.padded, requested=plan.box
    )
    moving_image = image_from_array(moving.astype(np.float32, copy=False), moving_geometry, mbox)
    initial = _method_initial(method, initial_transform, fixed_geometry, plan.padded)
    return _PreparedBlock(fixed_image, moving_image, initial)


def register_block(
    plan: BlockPlan,
    fixed_reader_ctor: ConstructReaderMethod,
    moving_reader_ctor: ConstructReaderMethod,
    block_registration_method: BlockPairRegistrationMethod,
    initial_transform: Any,
    options: BlockOptions,
    method_kwargs: dict[str, Any],
) -> LocatedBlockResult:
    """Register one fixed block; every failure but an unreadable input becomes a status.

    Input errors in :data:`STOP_RUN_ERRORS` are raised, so they stop the run
    instead of leaving a hole that the reduction would fill from the
    neighbouring blocks: a :class:`~ngff_dreg.errors.StoreChangedError` (an
    input array replaced, or a chunk deleted, since the run was planned), a
    :class:`~ngff_dreg.errors.StoreReadError` (a chunk still unreadable
    after the retries, or corrupt: :class:`~ngff_dreg.errors.CorruptChunkError`)
    and any other :class:`~ngff_dreg.errors.StoreAccessError` or
    :class:`~ngff_dreg.errors.InvalidMetadataError` met opening the inputs.
    Other failures preparing the block, and every exception of the block
    method itself, give a failed block (``FAILURE``, ``METHOD_ERROR``).

    Reads only the padded fixed block and the moving region it maps to. With
    ``options.skip_blank_blocks``, a block with no signal is skipped before the
    moving image is read. The method is called with keywords only
    (``fixed_subimage``, ``moving_subimage``, ``initial_transform``,
    ``block_info``, then ``method_kwargs``), exactly as itk-dreg calls it.
    """
    from ngff_dreg.worker import prepare_worker

    t0 = time.perf_counter()
    name = f"block {plan.info.chunk_index}"
    method = block_registration_method
    modules = method.itk_modules if isinstance(method, DeclaresItkModules) else None
    prepare_worker(options.itk_threads, modules=modules)

    def located(result: BlockPairRegistrationResult) -> LocatedBlockResult:
        worker_logger.debug("%s: %s in %.2fs", name, result.status.name, time.perf_counter() - t0)
        return LocatedBlockResult(result=result, fixed_info=plan.info)

    try:
        prepared = _prepare_block(
            plan, fixed_reader_ctor, moving_reader_ctor, method, initial_transform, options
        )
    except STOP_RUN_ERRORS as exc:
        # The data changed, or cannot be read: a failed block here would be
        # filled in from its neighbours, a wrong field that looks complete.
        worker_logger.error("%s: cannot read its input, stopping the run: %s", name, exc)
        raise
    except Exception as exc:  # a set-up failure of this block: report, do not stop the run
        worker_logger.warning("%s: could not prepare block: %s", name, exc)
        return located(_failed(BlockRegStatus.FAILURE, f"{type(exc).__name__}: {exc}"))
    if isinstance(prepared, BlockPairRegistrationResult):
        return located(prepared)
    try:
        # Keywords, as itk-dreg calls it: methods may declare ``__call__(self, **kwargs)``.
        result = method(
            fixed_subimage=prepared.fixed_image,
            moving_subimage=prepared.moving_image,
            initial_transform=prepared.initial,
            block_info=plan.info,
            **method_kwargs,
        )
    except Exception as exc:
        worker_logger.warning(
            "%s: block method %s raised %s: %s",
            name,
            type(method).__name__,
            type(exc).__name__,
            exc,
        )
        logger.debug("%s traceback:\n%s", name, traceback.format_exc())
        return located(_failed(BlockRegStatus.METHOD_ERROR, f"{type(exc).__name__}: {exc}"))
    if not isinstance(result, BlockPairRegistrationResult):
        result = _coerce_result(result)
    return located(_portable(result))


def _portable(result: BlockPairRegistrationResult) -> BlockPairRegistrationResult:
    """Domains that survive pickling (see :func:`~ngff_dreg.itk_bridge.portable_domain`)."""
    result.transform_domain = portable_domain(result.transform_domain)
    result.inv_transform_domain = portable_domain(result.inv_transform_domain)
    return result


def _coerce_result(result: Any) -> BlockPairRegistrationResult:
    """Accept a result record from itk-dreg (same fields, other class)."""
    try:
        return BlockPairRegistrationResult(
            transform=result.transform,
            transform_domain=result.transform_domain,
            inv_transform=getattr(result, "inv_transform", None),
            inv_transform_domain=getattr(result, "inv_transform_domain", None),
            status=BlockRegStatus(int(result.status)),
            metric=getattr(result, "metric", None),
        )
    except Exception as exc:
        return BlockPairRegistrationResult.failed(
            BlockRegStatus.METHOD_ERROR, f"unusable result {type(result).__name__}: {exc}"
        )


def _status_grid(
    grid_shape: tuple[int, ...], *results: LocatedBlockResult
) -> npt.NDArray[np.int16]:
    return status_grid(((r.fixed_info.chunk_index, r.result.status) for r in results), grid_shape)


def _compose(
    transforms: RegistrationTransformResult, status: npt.NDArray[np.int16]
) -> RegistrationResult:
    return RegistrationResult(transforms=transforms, status=status)


def _coarsen_for_graph_size(
    shape: Sequence[int], block: tuple[int, ...], chunk: tuple[int, ...] | None
) -> tuple[int, ...]:
    n = int(np.prod([int(np.ceil(s / b)) for s, b in zip(shape, block)]))
    if n <= MAX_BLOCKS:
        return block
    factor = (n / MAX_BLOCKS) ** (1.0 / len(block))
    coarser = tuple(int(np.ceil(b * factor)) for b in block)
    coarser = align_block_shape(coarser, chunk, shape)
    logger.warning(
        "block size %s gives %d blocks (more than %d): coarsened to %s to keep the graph small",
        block,
        n,
        MAX_BLOCKS,
        coarser,
    )
    return coarser


def block_grid(
    fixed_reader_ctor: Any,
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_chunk_size: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(block shape, dask-style chunks)`` of a stage's block grid, as asked (never coarsened).

    The block shape is the requested one rounded up to whole storage chunks;
    no block is planned. Raises for images of unsupported or mismatched
    dimensionality and for a bad block size.
    """
    if fixed_geometry.ndim != moving_geometry.ndim:
        raise IncompatibleImagesError(
            f"fixed image is {fixed_geometry.ndim}-D but moving image is "
            f"{moving_geometry.ndim}-D; both need the same spatial dimensionality"
        )
    if fixed_geometry.ndim not in (2, 3):
        raise IncompatibleImagesError(
            f"{fixed_geometry.ndim}-D images are not supported (2-D or 3-D)"
        )
    try:
        block = align_block_shape(fixed_chunk_size, _chunk_shape(fixed_reader_ctor),
                                  fixed_geometry.shape)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from exc
    return block, grid_chunks(fixed_geometry.shape, block)


def _block_grid(
    fixed_reader_ctor: Any,
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_chunk_size: Sequence[int] | None,
    overlap_factors: Sequence[float] | float | None,
    grid_slab: tuple[int, int] | Box | None = None,
) -> tuple[tuple[int, ...], list[BlockPlan], tuple[tuple[int, ...], ...]]:
    """``(block shape, block plans, dask-style chunks)`` of a stage; shapes are checked.

    The whole grid is coarsened when it has more than :data:`MAX_BLOCKS`
    blocks; a ``grid_slab`` (layers ``first:stop`` along axis 0, or a box of
    block indices) is planned alone, at the block size asked for.
    """
    block, _ = block_grid(fixed_reader_ctor, fixed_geometry, moving_geometry, fixed_chunk_size)
    if grid_slab is None:
        block = _coarsen_for_graph_size(fixed_geometry.shape, block,
                                        _chunk_shape(fixed_reader_ctor))
    try:
        plans, chunks = plan_blocks(fixed_geometry.shape, block, overlap_factors,
                                    grid_slab=grid_slab)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from exc
    logger.info(
        "planned %d blocks (grid %s%s, block %s, overlap %s)",
        len(plans),
        tuple(len(c) for c in chunks),
        "" if grid_slab is None else f", part {grid_slab}",
        block,
        overlap_factors,
    )
    return block, plans, chunks


def _block_tasks(
    plans: list[BlockPlan],
    shared: dict[str, Any],
    options: BlockOptions,
    kwargs: dict[str, Any],
    token: str,
) -> list[Delayed]:
    """One :func:`register_block` task per block, named after its grid index.

    With ``options.machines`` (more than one) or ``options.workers``, each
    task prefers one worker (:func:`preferred_workers`); any other may still
    take it.
    """
    if not plans:
        return []
    places = preferred_workers([p.info.chunk_index for p in plans], options)
    # every input but the plan in one task: each block task then has one
    # dependency (3.6x faster to build on its own, measured on 2028 blocks)
    inputs = dask.delayed(dict, pure=True)(
        **shared, options=options, method_kwargs=kwargs, dask_key_name=f"block-inputs-{token}")
    # one graph layer: dask culls a graph layer by layer, each against every key
    layer = Layer(f"register-blocks-{token}-{'-'.join(map(str, plans[0].info.chunk_index))}")
    preferred: dict[str, str] = {}
    for plan, place in zip(plans, places):
        key = f"register-block-{'-'.join(map(str, plan.info.chunk_index))}-{token}"
        layer.add(key, _t_register_block, plan, inputs)
        if place is not None:
            preferred[key] = place
    # loose: a worker that dies, or a busy machine, never strands a block
    hint = ({"workers": PreferredWorker(preferred), "allow_other_workers": True}
            if preferred else None)
    return layer.build(hint)


class PreferredWorker:
    """The ``workers`` annotation of a layer of block tasks: each key's preferred worker."""

    def __init__(self, places: dict[str, str]) -> None:
        self.places = places

    def __call__(self, key: Any) -> list[str] | None:
        place = self.places.get(str(key))
        return None if place is None else [place]


def _t_register_block(plan: BlockPlan, inputs: dict[str, Any]) -> LocatedBlockResult:
    """:func:`register_block` of a plan with the inputs every block shares, as one dict."""
    return register_block(plan, **inputs)


def block_placement(indices: Sequence[tuple[int, ...]], n_workers: int) -> list[int]:
    """The worker (``0..n_workers-1``) of each block: contiguous slabs of the block grid.

    Blocks are ranked with the grid's longest axis varying slowest, and the
    ranking is cut into ``n_workers`` runs of (nearly) equal length, so each
    worker gets a slab (or a run of rows) and shares halo chunks with at most
    two other workers.
    """
    return slab_order(indices, n_workers)


def preferred_workers(
    indices: Sequence[tuple[int, ...]], options: BlockOptions
) -> list[str | None]:
    """The worker each block's task prefers (``None``: none).

    Several machines: one contiguous group of blocks per machine, a slab per
    worker inside it (:func:`~ngff_dreg.locality.place_blocks`). Otherwise a
    slab per worker (:func:`block_placement`), as on one machine.
    """
    if len(options.machines) > 1:
        return place_blocks(indices, options.machines)
    if not options.workers:
        return [None] * len(indices)
    return [options.workers[p] for p in block_placement(indices, len(options.workers))]


def _reduction(
    reduce_method: ReduceResultsMethod,
    block_results: list[Delayed],
    plans: list[BlockPlan],
    fixed_geometry: ImageGeometry,
    fixed_reader_ctor: Any,
    initial_transform: Any,
    shared: dict[str, Any],
    token: str,
    kwargs: dict[str, Any],
) -> Delayed:
    """The reduce node: a reducer's own graph, or one itk-dreg style call on every result."""
    if isinstance(reduce_method, SupportsBuildGraph):
        graph: Delayed = reduce_method.build_graph(
            block_results=block_results,
            block_boxes=[p.padded for p in plans],
            fixed_geometry=fixed_geometry,
            initial_transform=initial_transform,
            fixed_reader_ctor=fixed_reader_ctor,
            **kwargs,
        )
        return graph
    call: Delayed = dask.delayed(reduce_method, pure=True)(
        block_results=block_results,
        fixed_reader_ctor=shared["fixed_reader_ctor"],
        initial_transform=shared["initial_transform"],
        dask_key_name=f"reduce-{token}",
        **kwargs,
    )
    return call


def _options(block_options: BlockOptions | None, skip_blank_blocks: bool | None) -> BlockOptions:
    options = block_options or BlockOptions()
    if skip_blank_blocks is not None:
        options = replace(options, skip_blank_blocks=bool(skip_blank_blocks))
    return options


def _shared_inputs(**inputs: Any) -> dict[str, Delayed]:
    """Each input once in the graph, shared by every block task (and the reduction)."""
    return {name: dask.delayed(value, pure=True) for name, value in inputs.items()}


def register_images(
    fixed_reader_ctor: ConstructReaderMethod,
    moving_reader_ctor: ConstructReaderMethod,
    block_registration_method: BlockPairRegistrationMethod,
    reduce_method: ReduceResultsMethod,
    initial_transform: Any,
    fixed_chunk_size: Sequence[int] | None = None,
    overlap_factors: Sequence[float] | float | None = None,
    *,
    block_options: BlockOptions | None = None,
    skip_blank_blocks: bool | None = None,
    grid_slab: tuple[int, int] | Box | None = None,
    **kwargs: Any,
) -> RegistrationSchedule:
    """Plan block-wise registration of a moving image onto a fixed image.

    The itk-dreg entry point, on ``dask.distributed``. Nothing is read or
    computed here: the returned schedule's ``registration_result.compute()``
    runs the tasks on the active client (or dask's default scheduler).

    Parameters
    ----------
    fixed_reader_ctor, moving_reader_ctor:
        Reader constructors (e.g. :class:`ngff_dreg.OMEZarrReaderConstructor`
        or any itk-dreg ``ConstructReaderMethod``).
    block_registration_method:
        Called once per block, on a worker.
    reduce_method:
        Turns the block results into one transform. A method with a
        ``build_graph`` method (like :class:`ReduceToDisplacementField`) is
        given the delayed block results and their boxes, so it can reduce chunk
        by chunk; any other is called once with all results (itk-dreg style).
    initial_transform:
        Fixed→moving transform from earlier stages: an ``itk.Transform``, an
        :class:`~ngff_dreg.transforms.AffineTransform` or a
        :class:`~ngff_dreg.transforms.TransformChain`.
    fixed_chunk_size:
        Requested block shape (NumPy order), rounded up to a multiple of the
        fixed level's storage chunk (a log line says so). Default 128.
    overlap_factors:
        Total overlap as a fraction of the block length per axis, split evenly
        over both sides; cropped at the image edge.
    block_options:
        Engine settings (signal threshold, padding, ITK threads, masks).
    skip_blank_blocks:
        Skip blocks without signal instead of calling the block method on
        them (``NO_SIGNAL``). ``None``: as ``block_options`` says, which by
        default is ``False``: like itk-dreg, the method is called on every
        block that maps into the moving image. Not passed to the methods.
    grid_slab:
        ``(first, stop)``: plan and register only the layers ``first:stop``
        of the block grid along its axis 0; or a :class:`~ngff_dreg.geometry.Box`
        of block indices: only those blocks. Either at the block size asked for (a
        grid of more than :data:`MAX_BLOCKS` blocks is coarsened only when
        planned whole); the reduction sees only those blocks. ``None``
        (default): the whole grid. Not passed to the methods.
    **kwargs:
        Passed to the block method and the reduce method, as in itk-dreg.

    Returns
    -------
    RegistrationSchedule
        ``registration_result`` (delayed :class:`RegistrationResult`),
        ``fixed_da`` (the block grid as a metadata-only dask array), and the
        block plans.

    """
    planned = plan_block_tasks(
        fixed_reader_ctor, moving_reader_ctor, block_registration_method, initial_transform,
        fixed_chunk_size, overlap_factors, block_options=block_options,
        skip_blank_blocks=skip_blank_blocks, grid_slab=grid_slab, **kwargs)
    plans, block_results, token = planned.plans, planned.block_results, planned.token
    assert planned.fixed_geometry is not None
    reduced = _reduction(reduce_method, block_results, plans, planned.fixed_geometry,
                         fixed_reader_ctor, initial_transform, planned.shared, token, kwargs)
    status = dask.delayed(_status_grid, pure=True)(
        planned.grid_shape, *block_results, dask_key_name=f"block-status-{token}"
    )
    result = dask.delayed(_compose, pure=True)(
        reduced, status, dask_key_name=f"registration-result-{token}"
    )
    return RegistrationSchedule(
        registration_result=result,
        fixed_da=da.empty(planned.fixed_geometry.shape, chunks=planned.chunks, dtype=np.float32),
        blocks=plans,
        block_results=block_results,
        fixed_geometry=planned.fixed_geometry,
        moving_geometry=planned.moving_geometry,
    )


@dataclass
class BlockTasks:
    """The planned block tasks of a stage (or of one slab of its grid), without a reduction.

    Attributes
    ----------
    block:
        The block shape (NumPy order).
    chunks:
        Dask-style chunks of the whole block grid.
    plans, block_results:
        The planned blocks and their delayed :func:`register_block` tasks.
    token:
        Names the stage's tasks: the same for every slab of one stage.
    shared:
        The inputs every block task shares (delayed once).
    fixed_geometry, moving_geometry:
        The registered levels' geometries.

    """

    block: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    plans: list[BlockPlan]
    block_results: list[Delayed]
    token: str
    shared: dict[str, Any]
    fixed_geometry: ImageGeometry
    moving_geometry: ImageGeometry

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Blocks along each axis of the whole grid."""
        return tuple(len(c) for c in self.chunks)


def plan_block_tasks(
    fixed_reader_ctor: ConstructReaderMethod,
    moving_reader_ctor: ConstructReaderMethod,
    block_registration_method: BlockPairRegistrationMethod,
    initial_transform: Any,
    fixed_chunk_size: Sequence[int] | None = None,
    overlap_factors: Sequence[float] | float | None = None,
    *,
    block_options: BlockOptions | None = None,
    skip_blank_blocks: bool | None = None,
    grid_slab: tuple[int, int] | Box | None = None,
    **kwargs: Any,
) -> BlockTasks:
    """Plan the block tasks of :func:`register_images` (see it for the parameters).

    ``grid_slab=(first, stop)`` plans only the layers ``first:stop`` of the
    block grid along axis 0, and a :class:`~ngff_dreg.geometry.Box` of block
    indices only those blocks, at the block size asked for (never coarsened);
    the tasks' keys are those the whole grid's tasks would have.
    """
    register_module_reducers()
    options = _options(block_options, skip_blank_blocks)
    fixed_geometry = reader_geometry(fixed_reader_ctor)
    moving_geometry = reader_geometry(moving_reader_ctor)
    block, plans, chunks = _block_grid(
        fixed_reader_ctor, fixed_geometry, moving_geometry, fixed_chunk_size, overlap_factors,
        grid_slab,
    )
    token = tokenize(
        fixed_reader_ctor,
        moving_reader_ctor,
        block_registration_method,
        initial_transform,
        block,
        overlap_factors,
        options,
        kwargs,
    )
    shared = _shared_inputs(
        fixed_reader_ctor=fixed_reader_ctor,
        moving_reader_ctor=moving_reader_ctor,
        block_registration_method=block_registration_method,
        initial_transform=initial_transform,
    )
    return BlockTasks(block, chunks, plans, _block_tasks(plans, shared, options, kwargs, token),
                      token, shared, fixed_geometry, moving_geometry)
