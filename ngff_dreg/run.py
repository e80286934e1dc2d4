"""One registration run: what it reads (checked before anything is written) and what it has done.

:func:`open_inputs` opens the two pyramids, resolves the schedule's levels,
checks the data and converts the initial transform, once, into
:class:`RunInputs`. A :class:`Run` is then handed from stage runner to stage
runner (:mod:`ngff_dreg.global_stage`, :mod:`ngff_dreg.block_stage`): the
transform composed so far, the stage reports, the checkpoint manifest and the
dask client.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg import config
from ngff_dreg.cluster import (
    share_chunk_exchange,
    share_host_cache,
    unshare_chunk_exchange,
    unshare_host_cache,
    worker_addresses,
    worker_machines,
)
from ngff_dreg.engine import BlockOptions
from ngff_dreg.errors import IncompatibleImagesError, RegistrationFailedError, ScheduleError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import ItkTransformLike, RegistrationResult, RegistrationTransformResult
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.output_state import (
    Checkpoints,
    OutputClaim,
    StageReport,
    fingerprint,
    jsonable,
    set_status,
)
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.omezarr.shards import ShardSpec, resolve_shards
from ngff_dreg.io.storage.chunk_cache import cache_enabled, close_host_cache, open_host_cache
from ngff_dreg.io.storage.lease import OutputLease
from ngff_dreg.io.storage.store_stats import IOLedger, reset_counts
from ngff_dreg.io.storage.urls import location_key
from ngff_dreg.reduce.reducer import FIELD_CHUNK
from ngff_dreg.schedule import (
    BlockStage,
    Schedule,
    check_schedule_levels,
    default_global_level,
    matching_level,
    resolve_level,
)
from ngff_dreg.transforms import AffineTransform, TransformChain
from ngff_dreg.validate import check_level_data, check_overlap

__all__ = ["Run", "RunInputs", "RunOptions", "as_initial_transform", "check_output_shards",
           "open_inputs", "open_masks"]

logger = logging.getLogger(__name__)

StorageOptions = dict[str, Any] | None


@dataclass(frozen=True)
class RunOptions:
    """Every keyword of :func:`ngff_dreg.register` (the URLs aside).

    Attributes
    ----------
    schedule:
        A :class:`~ngff_dreg.schedule.Schedule`, a path to a TOML/YAML
        schedule, or ``None`` for :meth:`Schedule.default` adapted to the
        fixed pyramid.
    client:
        A ``dask.distributed.Client``, a scheduler address
        (``"tcp://host:8786"``), ``"local:N"``, or ``None`` to start a
        process-based LocalCluster sized to the machine.
    storage_options:
        fsspec options for every URL; the specific ``*_storage_options``
        override them per URL. Never logged.
    fixed_storage_options, moving_storage_options, output_storage_options:
        See ``storage_options``.
    initial_transform:
        Skip the automatic start: an ``itk`` linear transform, an
        ``(ndim+1)²`` matrix, an :class:`~ngff_dreg.transforms.AffineTransform`,
        a :class:`~ngff_dreg.transforms.TransformChain`, or the URL of an NGFF
        transform scene.
    resample:
        Also write the moving image resampled into fixed space at
        ``output/moving_resampled``: every channel and time point (or those
        of ``resample_channels``/``resample_times``), on a pyramid that
        follows the fixed image's.
    resample_channels, resample_times:
        With ``resample``: the channels (indices or labels) and time points
        to write, in order (default: all).
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
        Shorthand: the channel / time point of both images, unless
        ``fixed_channel``/``moving_channel`` or ``fixed_time``/``moving_time``
        say otherwise.
    fixed_channel, moving_channel:
        The channel of each image to register: an index (negative counts from
        the end) or a label from the image's ``omero`` metadata. Fixed and
        moving rounds often hold the reference stain in different channels.
    fixed_time, moving_time:
        The time point of each image to register (an index).
    on_stage_done:
        Optional callback ``f(stage_report)`` after each stage (tests use it
        to interrupt a run).
    into_fixed:
        Also write the transform into the fixed image's own group, as an NGFF
        0.6 transform from its intrinsic coordinate system to a new one named
        after the moving image (or this string). Checked before the run starts.
        See :func:`ngff_dreg.io.omezarr.image_transform_writer.write_transform_into_image`.
    upgrade_fixed:
        With ``into_fixed``, allow rewriting a 0.5 fixed image's metadata as
        0.6 (arrays untouched; the old metadata is kept).
    output_shards:
        Write the output's fields (forward, inverse, every pyramid level, the
        Jacobian map) and the resampled image sharded (Zarr v3
        ``sharding_indexed``): the spatial shard shape in NumPy order (field
        nodes / image voxels), one edge for every axis, or ``"auto"`` (4
        chunks per axis). Each edge must be a whole number of chunks (field
        chunks are 64 nodes, resampled chunks 64 voxels in 3D, 256 in 2D).
        One task writes each shard whole, so a task holds one shard (e.g.
        256³ x 3 float32 = 201 MB for a field shard of 4³ chunks). ``None``
        (default): one object per chunk. Checkpoints are never sharded.

    """

    schedule: Schedule | str | None = None
    client: Any = None
    storage_options: Mapping[str, Any] | None = None
    fixed_storage_options: Mapping[str, Any] | None = None
    moving_storage_options: Mapping[str, Any] | None = None
    output_storage_options: Mapping[str, Any] | None = None
    initial_transform: Any = None
    resample: bool = False
    resample_channels: tuple[int | str, ...] | None = None
    resample_times: tuple[int | str, ...] | None = None
    overwrite: bool = False
    progress: bool = True
    signal_threshold: float | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None
    channel: int | str = 0
    time_index: int | str = 0
    fixed_channel: int | str | None = None
    moving_channel: int | str | None = None
    fixed_time: int | str | None = None
    moving_time: int | str | None = None
    on_stage_done: Callable[[StageReport], Any] | None = None
    into_fixed: bool | str = False
    upgrade_fixed: bool = False
    output_shards: ShardSpec = None

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> RunOptions:
        """The options named in ``namespace`` (``register``'s ``locals()``)."""
        return cls(**{f.name: namespace[f.name] for f in fields(cls)})

    def selection(self, which: str) -> tuple[int | str, int | str]:
        """``(channel, time)`` selected in the ``"fixed"`` or ``"moving"`` image."""
        ch = self.fixed_channel if which == "fixed" else self.moving_channel
        tm = self.fixed_time if which == "fixed" else self.moving_time
        return (self.channel if ch is None else ch, self.time_index if tm is None else tm)

    def storage(self, specific: Mapping[str, Any] | None) -> StorageOptions:
        """``storage_options`` overridden by one URL's own options (``None`` if empty)."""
        return {**dict(self.storage_options or {}), **dict(specific or {})} or None


@dataclass
class RunInputs:
    """What a run reads, opened and checked.

    Attributes
    ----------
    fixed, moving, output:
        The URLs.
    options:
        The run's options.
    f_opts, m_opts, o_opts:
        Storage options of each URL.
    fixed_geoms, moving_geoms:
        Geometry of every pyramid level (the moving one in the fixed unit).
    unit:
        The unit both pyramids are read in.
    schedule:
        The schedule, loaded or defaulted.
    g_level, gm_level:
        Fixed and moving levels of the global stage (and of every stage's NCC).
    g_fixed, g_moving:
        Reader constructors of those levels (their metadata read once).
    initial:
        The initial transform, converted once (``None``: none given).
    into_name:
        Coordinate-system name for ``into_fixed`` (``None``: not requested).
    cache_token:
        Names this run's entries in each process's chunk cache
        (:mod:`ngff_dreg.io.storage.chunk_cache`): metadata is read once per process
        and chunks shared by blocks are fetched once per worker.

    """

    fixed: str
    moving: str
    output: str
    options: RunOptions
    f_opts: StorageOptions
    m_opts: StorageOptions
    o_opts: StorageOptions
    fixed_geoms: list[ImageGeometry]
    moving_geoms: list[ImageGeometry]
    unit: str | None
    schedule: Schedule
    g_level: int = 0
    gm_level: int = 0
    g_fixed: OMEZarrReaderConstructor | None = None
    g_moving: OMEZarrReaderConstructor | None = None
    initial: Any = None
    into_name: str | None = None
    cache_token: str | None = None

    @property
    def ndim(self) -> int:
        """Spatial dimensions."""
        return self.fixed_geoms[0].ndim

    def reader(self, which: str, level: int) -> OMEZarrReaderConstructor:
        """Reader constructor of one level of the fixed or the moving image."""
        url, opts = (self.fixed, self.f_opts) if which == "fixed" else (self.moving, self.m_opts)
        channel, time_point = self.options.selection(which)
        return OMEZarrReaderConstructor(
            url, level=level, storage_options=opts, channel=channel, time=time_point,
            unit=self.unit, cache=self.cache_token,
        )

    def global_readers(self) -> tuple[OMEZarrReaderConstructor, OMEZarrReaderConstructor]:
        """Fixed and moving readers of the global level (the NCC is scored there)."""
        if self.g_fixed is None or self.g_moving is None:
            self.g_fixed = self.reader("fixed", self.g_level)
            self.g_moving = self.reader("moving", self.gm_level)
        return self.g_fixed, self.g_moving

    def levels(self, stage: BlockStage) -> tuple[int, int]:
        """Fixed and moving level of a block stage."""
        f_level = resolve_level(self.fixed_geoms, stage.level, what=f"fixed image {self.fixed}")
        return f_level, matching_level(self.moving_geoms, self.fixed_geoms[f_level].spacing)

    def fingerprint(self) -> str:
        """The run's identity: a rerun with the same one resumes."""
        o = self.options
        return fingerprint(
            {
                "fixed": self.fixed,
                "moving": self.moving,
                "schedule": self.schedule.to_dict(),
                "channel": [o.selection("fixed")[0], o.selection("moving")[0]],
                "time": [o.selection("fixed")[1], o.selection("moving")[1]],
                "initial": repr(self.initial),
                "threshold": o.signal_threshold,
                "masks": [o.fixed_mask, o.moving_mask],
                # the layout of what is written (absent when unsharded, as before)
                **({"shards": o.output_shards} if o.output_shards is not None else {}),
            }
        )


def _scene_initial(ref: tuple[str, str, str], storage_options: Mapping[str, Any] | None,
                   grid: ImageGeometry | None) -> AffineTransform | TransformChain:
    """The map of ``SCENE:SOURCE:TARGET``: exact if linear, else sampled on ``grid``."""
    from ngff_dreg.io.omezarr.scene_reader import SceneMap
    from ngff_dreg.ngff.transforms import reverse_axes
    from ngff_dreg.transforms import DisplacementField

    scene = SceneMap(*ref, storage_options=storage_options)
    h = scene.check()._map().homogeneous()
    if h is not None:
        return AffineTransform.from_homogeneous(reverse_axes(np.asarray(h)))
    if grid is None:
        raise ScheduleError(f"{ref[0]}: the map from {ref[1]!r} to {ref[2]!r} is not linear; "
                            "it needs the fixed image's grid to be sampled on")
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
    pts = grid.array_index_to_physical(idx.reshape(-1, grid.ndim).astype(np.float64))
    disp = scene.transform_points(pts) - pts
    data = disp[:, ::-1].T.reshape((grid.ndim, *grid.shape))
    return TransformChain(AffineTransform.identity(grid.ndim), DisplacementField(grid, data=data))


def as_initial_transform(
    initial: Any, ndim: int, storage_options: Mapping[str, Any] | None,
    grid: ImageGeometry | None = None,
) -> AffineTransform | TransformChain | None:
    """A user's initial transform as an :class:`AffineTransform` or :class:`TransformChain`.

    A string is an ngff-dreg output scene, or ``SCENE:SOURCE:TARGET``: the map
    between two coordinate systems of any RFC-5 scene, kept exact when it is
    linear and otherwise sampled as a displacement field on ``grid`` (a
    level of the fixed image).
    """
    if initial is None:
        return None
    if isinstance(initial, (AffineTransform, TransformChain)):
        return initial
    if isinstance(initial, str):
        from ngff_dreg.io.omezarr.scene_reader import parse_scene_reference
        from ngff_dreg.io.omezarr.transform_reader import read_transform

        ref = parse_scene_reference(initial)
        if ref is not None:
            return _scene_initial(ref, storage_options, grid)
        return read_transform(initial, storage_options)
    if isinstance(initial, ItkTransformLike):
        return AffineTransform.from_itk(initial)
    arr = np.asarray(initial, dtype=np.float64)
    if arr.shape == (ndim + 1, ndim + 1):
        return AffineTransform.from_homogeneous(arr)
    if arr.shape == (ndim, ndim + 1):
        return AffineTransform.from_arrays(arr[:, :ndim], arr[:, ndim])
    raise ScheduleError(f"initial transform matrix must be {ndim + 1}x{ndim + 1}, got {arr.shape}")


def _same_location(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same location or one is inside the other."""
    na, nb = location_key(a), location_key(b)
    return na == nb or na.startswith(nb + "/") or nb.startswith(na + "/")


def _into_name(fixed: str, moving: str, output: str, options: RunOptions) -> str | None:
    """The coordinate-system name for ``into_fixed``, checked before the run starts."""
    if not options.into_fixed:
        return None
    from ngff_dreg.io.omezarr.image_transform_writer import check_into_image, default_system_name

    into = options.into_fixed
    name = into if isinstance(into, str) else default_system_name(moving)
    check_into_image(fixed, name, storage_options=options.storage(options.fixed_storage_options),
                     overwrite=options.overwrite, upgrade=options.upgrade_fixed,
                     scene_url=output)
    return name


def _pyramids(
    fixed: str, moving: str, f_opts: StorageOptions, m_opts: StorageOptions, token: str | None
) -> tuple[list[ImageGeometry], list[ImageGeometry], str | None]:
    """Level geometries of both images, the moving one in the fixed image's unit."""
    fms = open_multiscale(fixed, f_opts, cache=token)
    mms = open_multiscale(moving, m_opts, cache=token)
    if fms.ndim != mms.ndim:
        raise IncompatibleImagesError(
            f"fixed image {fixed} is {fms.ndim}-D but moving image {moving} is {mms.ndim}-D"
        )
    unit = fms.levels[0].geometry.unit or mms.levels[0].geometry.unit
    moving_ms = open_multiscale(moving, m_opts, unit=unit, cache=token) if unit else mms
    return [lvl.geometry for lvl in fms.levels], [lvl.geometry for lvl in moving_ms.levels], unit


def open_inputs(fixed: str, moving: str, output: str, options: RunOptions) -> RunInputs:
    """Open and check everything a run reads; nothing is written.

    Raises
    ------
    IncompatibleImagesError
        The output is (inside) an input, the images differ in dimension or do
        not overlap.
    ScheduleError, LevelNotFoundError
        The schedule has no block stage or names a missing level.
    InvalidInputDataError
        A global-level image is empty, mostly NaN or constant.

    """
    f_opts = options.storage(options.fixed_storage_options)
    m_opts = options.storage(options.moving_storage_options)
    o_opts = options.storage(options.output_storage_options)
    for url in (fixed, moving):
        if _same_location(url, output):
            raise IncompatibleImagesError(
                f"output {output} is (inside) input {url}: write the transform somewhere else"
            )
    into_name = _into_name(fixed, moving, output, options)
    reset_counts()  # this run's I/O is counted from here (ngff_dreg.io.storage.store_stats)
    token = uuid.uuid4().hex if cache_enabled() else None
    if token is not None:  # the client's reads while opening are shared with the workers
        open_host_cache(token)
    try:
        fixed_geoms, moving_geoms, unit = _pyramids(fixed, moving, f_opts, m_opts, token)
        schedule = options.schedule
        if isinstance(schedule, str):
            schedule = Schedule.load(schedule)
        schedule = schedule or Schedule.default(fixed_geoms)
        if not schedule.stages:
            raise ScheduleError("the schedule has no block stage")
        check_overlap(fixed, moving, fixed_geoms[-1], moving_geoms[-1], options.initial_transform)
        check_schedule_levels(schedule, fixed_geoms, fixed)  # before anything is written
        check_output_shards(options, fixed_geoms[0])
        inputs = RunInputs(fixed, moving, output, options, f_opts, m_opts, o_opts, fixed_geoms,
                           moving_geoms, unit, schedule, into_name=into_name, cache_token=token)
        gs = schedule.global_stage
        inputs.g_level = (
            resolve_level(fixed_geoms, gs.level, what=f"fixed image {fixed}")
            if gs is not None and gs.level is not None
            else default_global_level(fixed_geoms, 48)
        )
        inputs.gm_level = matching_level(moving_geoms, fixed_geoms[inputs.g_level].spacing)
        for name, url, c in zip(("fixed", "moving"), (fixed, moving), inputs.global_readers()):
            check_level_data(name, url, int(c.level), c().read_box(Box.full(c.geometry.shape)))
        # a non-linear scene map is sampled on the finest fixed level of <= 2**21 voxels
        grid = next((g for g in fixed_geoms if int(np.prod(g.shape)) <= 2**21),
                    fixed_geoms[-1])
        inputs.initial = as_initial_transform(options.initial_transform, inputs.ndim, f_opts,
                                              grid)
    except BaseException:
        if token is not None:  # the run never starts: nothing will close it
            close_host_cache(token)
        raise
    return inputs


def check_output_shards(options: RunOptions, fixed: ImageGeometry) -> None:
    """Refuse an ``output_shards`` the field or resampled chunks cannot fill, before any write.

    Raises
    ------
    InvalidInputDataError
        Malformed, or an edge that is not a whole number of field chunks (64
        nodes) or, with ``resample``, of resampled-image chunks; the message
        names ``output_shards``.

    """
    if options.output_shards is None:
        return
    from ngff_dreg.apply import output_chunks

    chunk_sets = [(FIELD_CHUNK,) * fixed.ndim]
    if options.resample:
        chunk_sets.append(output_chunks(fixed, None))
    for chunks in chunk_sets:
        resolve_shards(options.output_shards, chunks, fixed.shape, option="output_shards")


MaskLevels = dict[str, tuple[str, StorageOptions, list[ImageGeometry]]]


def open_masks(inputs: RunInputs) -> MaskLevels:
    """Level geometries of the fixed and moving masks that were given."""
    o = inputs.options
    return {
        name: (url, opts, [lvl.geometry for lvl in open_multiscale(
            url, opts, unit=inputs.unit, cache=inputs.cache_token).levels])
        for name, url, opts in (("fixed", o.fixed_mask, inputs.f_opts),
                                ("moving", o.moving_mask, inputs.m_opts))
        if url is not None
    }


@dataclass
class Run:
    """A registration run in progress, handed from stage runner to stage runner.

    Attributes
    ----------
    inputs:
        What the run reads.
    client:
        The dask client the stages run on.
    claim:
        The output's state before the run, and the manifest being updated.
    masks:
        :func:`open_masks` of the run.
    similarity:
        What block stages with ``similarity="auto"`` fit, as the global stage
        chose it (``None``: no choice made).
    current:
        The fixed→moving transform composed so far (``None`` before any).
    final:
        The last block stage's forward and inverse transforms.
    last_status:
        The last block stage's status grid.
    reports, timings:
        One :class:`StageReport` per stage, wall times by stage key.
    lease:
        The run's lease on its output (:mod:`ngff_dreg.io.storage.lease`), if any.
    io:
        Store I/O counted per stage (:class:`~ngff_dreg.io.storage.store_stats.IOLedger`):
        ``"open"`` (the inputs opened and checked), then one entry per stage key.

    """

    inputs: RunInputs
    client: Any
    claim: OutputClaim
    masks: MaskLevels = field(default_factory=dict)
    current: Any = None
    similarity: str | None = None
    final: RegistrationTransformResult | None = None
    last_status: npt.NDArray[np.integer[Any]] = field(
        default_factory=lambda: np.zeros((0,), dtype=np.int16)
    )
    reports: list[StageReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"global": 0.0})
    io: IOLedger = field(default_factory=IOLedger)
    lease: OutputLease | None = None
    checkpoints: Checkpoints = field(init=False, repr=False)
    _host_tokens: list[str] = field(default_factory=list, init=False, repr=False)
    _exchange: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.checkpoints = Checkpoints(self.inputs.output, self.inputs.o_opts)
        if self.current is None:
            self.current = self.inputs.initial
        # The client's reads so far (opening and checking the inputs); workers
        # start from zero.
        self.io.collect("open", self.client)
        if self.inputs.cache_token is not None:
            self.share_chunks(self.inputs.cache_token)

    def share_chunks(self, token: str) -> None:
        """Open the host chunk cache of ``token`` here and on every worker.

        The workers of one machine then fetch each chunk read under ``token``
        once between them (:class:`~ngff_dreg.io.storage.chunk_cache.HostCache`);
        workers that join the cluster later open it when they start
        (:class:`~ngff_dreg.cluster.HostCachePlugin`). :meth:`close_host_cache`
        removes it at the end of the run.
        """
        self._host_tokens.append(token)
        self._host_cache(open_host_cache, token)
        share_host_cache(self.client, token)  # workers that join later open it too

    def _host_cache(self, action: Any, token: str) -> None:
        """Open (or close) the host chunk cache of ``token`` here and on every worker."""
        action(token)
        if hasattr(self.client, "run"):
            try:
                self.client.run(action, token)
            except Exception as exc:  # a dying cluster must not fail the run
                logger.warning("host chunk cache: %s on the workers failed: %s",
                               getattr(action, "__name__", action), exc)

    def close_host_cache(self) -> None:
        """Remove the run's host chunk caches (every machine of the cluster)."""
        while self._host_tokens:  # (the exchange forgets each token's pieces here too)
            token = self._host_tokens.pop()
            unshare_host_cache(self.client, token)
            self._host_cache(close_host_cache, token)
        if self._exchange:
            unshare_chunk_exchange(self.client)
            self._exchange = False

    @property
    def done(self) -> dict[str, Any]:
        """Manifest entries of the finished stages, by key."""
        stages: dict[str, Any] = self.claim.manifest["stages"]
        return stages

    def check_lease(self) -> None:
        """Raise :class:`~ngff_dreg.errors.OutputInUseError` if the run lost its output's lease."""
        if self.lease is not None:
            self.lease.check()

    def record(self, key: str, entry: Mapping[str, Any], report: StageReport) -> None:
        """Keep a finished stage's report and checkpoint it in the manifest.

        The store I/O of the stage (every process) is collected now and added
        to the report's figures as ``io``.
        """
        io = self.io.collect(key, self.client).summary()
        report.report["io"] = io
        entry = dict(entry)
        nested = entry.get("report")
        target = nested.get("report") if key == "global" and isinstance(nested, dict) else nested
        if isinstance(target, dict):
            target["io"] = io
        self.reports.append(report)
        self.done[key] = entry
        slabs = self.claim.manifest.get("slabs")
        if isinstance(slabs, dict):  # the stage's slabs are in its entry now
            slabs.pop(key, None)
        self.check_lease()  # a run that lost its output writes nothing more
        self.checkpoints.write(self.claim.manifest)

    def finished_slabs(self, key: str, layout: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        """The recorded forward slabs of unfinished stage ``key`` cut as ``layout`` says.

        Slabs recorded under another layout (another slab size) are not
        reused: an empty dict.
        """
        slabs = self.claim.manifest.get("slabs", {})
        record = slabs.get(key) if isinstance(slabs, Mapping) else None
        if not isinstance(record, Mapping) or record.get("layout") != jsonable(layout):
            return {}
        return {int(i): dict(entry) for i, entry in record.get("done", {}).items()}

    def record_slab(self, key: str, layout: Mapping[str, Any], index: int,
                    entry: Mapping[str, Any]) -> None:
        """Checkpoint forward slab ``index`` of stage ``key`` (its field units are written).

        The manifest keeps the slab's small figures (status grid, counts,
        field figures) under ``slabs/<key>`` until the stage is recorded
        (:meth:`record`), which replaces them.
        """
        slabs = self.claim.manifest.setdefault("slabs", {})
        record = slabs.get(key)
        if not isinstance(record, dict) or record.get("layout") != jsonable(layout):
            record = slabs[key] = {"layout": jsonable(layout), "done": {}}
        record["done"][str(index)] = dict(entry)
        self.check_lease()  # a run that lost its output writes nothing more
        self.checkpoints.write(self.claim.manifest)

    def stage_done(self, report: StageReport) -> None:
        """Tell the caller a stage finished (``on_stage_done``)."""
        if self.inputs.options.on_stage_done:
            self.inputs.options.on_stage_done(report)

    def complete_finished_output(self) -> None:
        """Mark complete again a same-run output whose every stage is finished.

        Only the resample was interrupted then (it marks the finished scene
        incomplete while it writes).
        """
        chosen = self.similarity or (self.done.get("global") or {}).get("similarity")
        kept = self.inputs.schedule.running_stages(chosen)
        last_key = f"stage_{kept[-1]}" if kept else None
        if self.claim.same_run and last_key in self.done and self.claim.state == "incomplete":
            self.check_lease()
            set_status(self.inputs.output, self.inputs.o_opts, "complete")

    def block_options(self, f_level: int, m_level: int) -> BlockOptions:
        """Engine settings of a block stage: blank blocks skipped, the signal threshold, masks."""
        masks: dict[str, Any] = {}
        for name, (url, opts, geoms) in self.masks.items():
            levels = self.inputs.fixed_geoms if name == "fixed" else self.inputs.moving_geoms
            spacing = levels[f_level if name == "fixed" else m_level].spacing
            masks[f"{name}_mask"] = OMEZarrReaderConstructor(
                url, level=matching_level(geoms, spacing), storage_options=opts,
                unit=self.inputs.unit, cache=self.inputs.cache_token,
            )
        return BlockOptions(
            skip_blank_blocks=True,
            signal_threshold=self.inputs.options.signal_threshold,
            workers=worker_addresses(self.client),
            machines=self.place_by_machine(),
            **masks,
        )

    def place_by_machine(self) -> tuple[tuple[str, ...], ...]:
        """The cluster's workers by machine, for a block stage's placement (empty: off).

        Also installs (several machines) or removes (one) the chunk exchange
        between machines on the workers, as ``cluster.chunk-exchange`` says.
        """
        locality, exchange = config.locality(), config.chunk_exchange()
        machines = worker_machines(self.client) if locality or exchange else ()
        if exchange and len(machines) > 1:
            self._exchange = share_chunk_exchange(self.client, machines)
        elif self._exchange:  # the cluster shrank to one machine
            unshare_chunk_exchange(self.client)
            self._exchange = False
        return machines if locality else ()

    def result(self, t_start: float) -> RegistrationResult:
        """The run's :class:`RegistrationResult` (total wall time from ``t_start``)."""
        self.timings["total"] = time.perf_counter() - t_start
        if self.final is None:
            raise RegistrationFailedError("the run produced no transform")
        rest = self.io.collect("finish")  # the client may be closed: this process only
        if not rest.images:
            self.io.stages.pop()
        return RegistrationResult(transforms=self.final, status=self.last_status,
                                  levels=self.reports, timings=self.timings,
                                  io=self.io.summary())
