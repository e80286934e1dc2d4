"""One block stage of the pipeline: register blocks, reduce them to a field, score and checkpoint.

:class:`BlockStageRunner` plans the stage with the engine
(:func:`~ngff_dreg.engine.register_images`) from the transform composed so
far, hands the reducer (:class:`~ngff_dreg.reduce.ReduceToDisplacementField`)
a :class:`~ngff_dreg.io.omezarr.field_writer.FieldSceneWriter` for the stage's scene
(under ``output/checkpoints``, or ``output`` itself for the last stage),
computes it on the run's client, scores the NCC (on the stage's level when the
method measures it, else on the global level) and
records the stage in the manifest. A stage finished by an earlier run with the
same arguments is read back instead. A stage whose block grid has more blocks
than ``ngff-dreg.stage.slab-blocks`` runs in slabs of at most that many blocks
(:class:`~ngff_dreg.slab_stage.SlabbedStage`), each recorded in the manifest
when its field units are written, so an interrupted stage resumes after its
last finished slab.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ngff_dreg import config
from ngff_dreg.cluster import compute_stage
from ngff_dreg.engine import register_images
from ngff_dreg.errors import RegistrationFailedError
from ngff_dreg.fitting.descriptors import AUTO
from ngff_dreg.geometry import one_per_axis
from ngff_dreg.global_stage import metric_name, ncc_at_level
from ngff_dreg.interfaces import (
    BlockRegStatus,
    HasReport,
    RegistrationResult,
    RegistrationTransformResult,
)
from ngff_dreg.io.omezarr.field_writer import FieldSceneWriter
from ngff_dreg.io.omezarr.image_writer import pyramid_factors
from ngff_dreg.io.omezarr.output_state import StageReport, output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.reduce import ReduceToDisplacementField
from ngff_dreg.schedule import BlockStage
from ngff_dreg.slab_stage import SlabbedStage
from ngff_dreg.transforms import AffineTransform

if TYPE_CHECKING:
    from ngff_dreg.run import Run

__all__ = ["BlockStageRunner"]


@dataclass
class _ManifestSlabs:
    """The finished slabs of stage ``key``, in the run's manifest (a :class:`SlabRecords`)."""

    run: Run
    key: str

    def finished_slabs(self, layout: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return self.run.finished_slabs(self.key, layout)

    def record_slab(self, layout: dict[str, Any], index: int, entry: dict[str, Any]) -> None:
        self.run.record_slab(self.key, layout, index, entry)

logger = logging.getLogger(__name__)


def _status_counts(status: npt.NDArray[Any]) -> str:
    vals, counts = np.unique(status, return_counts=True)
    return ", ".join(f"{BlockRegStatus(int(v)).name}={c}" for v, c in zip(vals, counts))


@dataclass
class BlockStageRunner:
    """Runs (or resumes) block stage ``index`` of a :class:`~ngff_dreg.run.Run`.

    Attributes
    ----------
    index:
        Position of the stage in the schedule.
    stage:
        The stage.
    is_last:
        The last stage writes the run's output scene itself.

    """

    index: int
    stage: BlockStage
    is_last: bool

    @property
    def key(self) -> str:
        """The stage's manifest key."""
        return f"stage_{self.index}"

    def __call__(self, run: Run) -> None:
        """Advance ``run.current`` by this stage and record its report."""
        if run.current is None:
            run.current = AffineTransform.identity(run.inputs.ndim)
        url = run.inputs.output if self.is_last else run.checkpoints.url(self.key)
        if self._resume(run, url):
            return
        t0 = time.perf_counter()
        if self.stage.method_options.get("similarity") == AUTO:
            # the global stage chose (MIND when there was none)
            self.stage = dataclasses.replace(self.stage, method_options={
                **self.stage.method_options, "similarity": self.stage.fits(run.similarity)})
        f_level, m_level = run.inputs.levels(self.stage)
        result = self._compute(run, url, f_level, m_level)
        status = np.asarray(result.status)
        n_ok = int((status == BlockRegStatus.SUCCESS).sum())
        n_refused = int((status == BlockRegStatus.LOW_QUALITY).sum())
        if n_ok == 0 and n_refused:
            # every block ran and none improved its held-out samples: the stage
            # keeps what the stages before it found (its residual field is zero)
            logger.warning(
                "stage %d (fixed level %d): no block improved on the previous transform "
                "(statuses %s); keeping it", self.index, f_level, _status_counts(status))
        elif n_ok == 0:
            raise RegistrationFailedError(
                f"stage {self.index} (fixed level {f_level}): no block registered "
                f"(statuses {_status_counts(status)}); check the images overlap or pass an "
                "initial transform"
            )
        previous, run.current = run.current, result.transforms.transform
        rep = self._report(run, result, previous, f_level, m_level, t0)
        run.last_status = status
        run.timings[self.key] = rep.seconds
        run.record(self.key, rep.to_json(), rep)
        logger.info(
            "stage %d (level %d): %d/%d blocks, %s %.3f -> %.3f in %.1fs",
            self.index, f_level, n_ok, status.size, rep.metric, rep.ncc_before or 0,
            rep.ncc_after or 0,
            rep.seconds,
        )
        if self.is_last:
            run.final = result.transforms
        run.stage_done(rep)

    def _resume(self, run: Run, url: str) -> bool:
        """Read the stage back when an earlier run finished it (and its scene is complete)."""
        entry = run.done.get(self.key)
        if entry is None or output_status(url, run.inputs.o_opts) != "complete":
            return False
        opts = run.inputs.o_opts
        run.current = read_transform(url, opts)
        rep = StageReport.from_entry(self.key, entry)
        run.reports.append(rep)
        if rep.status is not None:
            run.last_status = rep.status
        if self.is_last:
            run.final = RegistrationTransformResult(
                transform=run.current, inv_transform=read_transform(url, opts, inverse=True)
            )
        return True

    def _compute(self, run: Run, url: str, f_level: int, m_level: int) -> RegistrationResult:
        """Plan the stage with the engine and compute it on the run's client."""
        inputs, stage = run.inputs, self.stage
        writer = FieldSceneWriter(
            url, inputs.o_opts, overwrite=True, fixed_url=inputs.fixed, moving_url=inputs.moving,
            downsample_factors=tuple(pyramid_factors(inputs.fixed_geoms)),
            shards=inputs.options.output_shards if self.is_last else None,  # not checkpoints
        )
        # Only the output's transform needs its inverse; a checkpointed stage is
        # read back as the next stage's start, which is a forward map.
        reducer = ReduceToDisplacementField(
            field_spacing_factor=stage.field_spacing_factor, compute_inverse=self.is_last,
            writer=writer,
        )
        fixed_ctor, moving_ctor = inputs.reader("fixed", f_level), inputs.reader("moving", m_level)
        block_size = tuple(
            int(b) for b in one_per_axis(stage.block_size, inputs.ndim, "block_size"))
        desc = f"stage {self.index} (level {f_level})"
        slabbed = SlabbedStage(
            run.client, fixed_ctor, moving_ctor, stage.make_method(), run.current, block_size,
            stage.overlap, run.block_options(f_level, m_level), reducer, config.slab_blocks(),
            _ManifestSlabs(run, self.key), inputs.options.progress, desc)
        _, chunks, _ = slabbed.grid()
        if int(np.prod([len(c) for c in chunks])) > slabbed.slab_blocks:
            if inputs.cache_token is not None:  # the fields are read back by every worker
                run.share_chunks(writer.cache_token)
            return slabbed.run()
        planned = register_images(
            fixed_reader_ctor=fixed_ctor,
            moving_reader_ctor=moving_ctor,
            block_registration_method=slabbed.block_registration_method,
            reduce_method=reducer,
            initial_transform=run.current,
            fixed_chunk_size=block_size,
            overlap_factors=stage.overlap,
            block_options=slabbed.block_options,
        )
        if inputs.cache_token is not None:  # the fields are read back by every worker
            run.share_chunks(writer.cache_token)
        return compute_stage(run.client, planned, inputs.options.progress, desc)

    def _report(
        self,
        run: Run,
        result: RegistrationResult,
        previous: Any,
        f_level: int,
        m_level: int,
        t0: float,
    ) -> StageReport:
        """The stage's report.

        The NCC before/after is measured on the stage's own level when the
        block method reports it (held-out samples of every block, weighted by
        their number); otherwise both on the global level.
        """
        transforms = result.transforms
        figures = dict(transforms.report or {}) if isinstance(transforms, HasReport) else {}
        before, after = figures.get("ncc_before"), figures.get("ncc_after")
        metric = metric_name(str(self.stage.method_options.get("similarity", "intensity")))
        if before is None or after is None:
            metric = "NCC"  # of the intensities, on the global level
            g_fixed, g_moving = run.inputs.global_readers()
            gs = run.inputs.schedule.global_stage
            mode = gs.destripe if gs is not None else "auto"
            # both on the global level: the stage before may have measured its
            # own level (a stage whose every block was refused printed
            # "NCC 0.996 -> 0.948", level 0's figure against the global level's)
            before, after = (run.client.submit(ncc_at_level, g_fixed, g_moving, t, mode,
                                               pure=False).result()
                             for t in (previous, run.current))
        return StageReport(
            f"stage {self.index}",
            f_level,
            m_level,
            self.stage.method,
            status=np.asarray(result.status),
            ncc_before=before,
            ncc_after=after,
            metric=metric,
            seconds=time.perf_counter() - t0,
            report=figures,
        )
