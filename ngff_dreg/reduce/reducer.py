"""The reducer: block results to one dense fixed→moving field (and inverse), chunk by chunk.

:class:`ReduceToDisplacementField` is the itk-dreg ``ReduceResultsMethod``
ngff-dreg runs after every block stage. The engine asks it for a graph
(:meth:`~ReduceToDisplacementField.build_graph`, wired in
:mod:`ngff_dreg.reduce.graph` from the NumPy kernels); called the itk-dreg way
it builds the same graph and runs it locally. It is handed the
:class:`~ngff_dreg.interfaces.FieldWriter` its fields go to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import FieldWriter, LocatedBlockResult, ReduceResultsMethod
from ngff_dreg.io.omezarr.shards import ShardSpec
from ngff_dreg.itk_bridge import reader_geometry
from ngff_dreg.reduce.blend import field_geometry_for
from ngff_dreg.reduce.graph import build_reduction_graph, padded_box
from ngff_dreg.reduce.result import BlendedTransformResult

__all__ = ["FIELD_CHUNK", "ReduceToDisplacementField"]

#: Default field chunk edge, in nodes.
FIELD_CHUNK = 64


@dataclass
class ReduceToDisplacementField(ReduceResultsMethod):
    """Reduce block results to one dense fixed→moving displacement field (+ inverse).

    Parameters
    ----------
    field_spacing_factor:
        Field grid spacing as a multiple of the fixed level spacing.
    field_spacing:
        Physical field spacing (ITK order); overrides the factor.
    writer:
        Where the fields go: any :class:`~ngff_dreg.interfaces.FieldWriter`
        (the pipeline hands each stage a
        :class:`~ngff_dreg.io.omezarr.field_writer.FieldSceneWriter`). ``None``: the
        one ``output`` names, or memory when ``output`` is ``None`` too.
    output:
        Shorthand for ``writer``: the Zarr URL of an NGFF scene group written
        by a :class:`~ngff_dreg.io.omezarr.field_writer.FieldSceneWriter` made from
        this and the ``storage_options``, ``overwrite``, ``fixed_url`` and
        ``moving_url`` fields. ``None`` (and no writer): keep the field in
        memory (small cases).
    storage_options:
        fsspec options for ``output`` (never logged).
    field_chunk:
        Field chunk shape in nodes (per axis or one value).
    use_quality:
        Weight blocks by :func:`quality_factor` of their metric.
    fill_distance:
        Reach of hole filling from a successful block, in padded-block extents
        (0.5 fills a single failed block completely from two or more
        neighbours; larger values reach across bigger holes at the price of
        more dependencies per field chunk).
    compute_inverse:
        Also compute the inverse field by fixed-point iteration.
    inverse_iterations:
        Maximum fixed-point iterations per chunk.
    overwrite:
        Replace a complete existing ``output``.
    n_levels:
        Pyramid levels of the written fields (``None``: automatic).
    scheduler:
        dask scheduler used by :meth:`__call__` (``"threads"`` or ``"synchronous"``).
    fixed_url, moving_url:
        The registered images, recorded in the scene ``output`` names.
    shards:
        Store the ``output`` fields sharded (see
        :class:`~ngff_dreg.io.omezarr.field_writer.FieldSceneWriter`): the spatial
        shard shape in field nodes, one edge, or ``"auto"`` (4 field chunks
        per axis). Each blend/invert/check task then computes and writes one
        whole shard, so its memory is one shard of float32 vectors
        (``ndim x shard nodes x 4`` bytes) plus one chunk's working set.
        ``None`` (default): one object and one task per chunk. A ``writer``
        passed in brings its own.

    Examples
    --------
    >>> reduce = ReduceToDisplacementField(field_spacing_factor=4)
    >>> result = reduce(block_results=results, fixed_reader_ctor=ctor,
    ...                 initial_transform=None)  # doctest: +SKIP
    >>> result.report["inverse_residual_p95"]  # doctest: +SKIP

    """

    field_spacing_factor: float | Sequence[float] = 4
    field_spacing: Sequence[float] | None = None
    output: str | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    field_chunk: int | Sequence[int] = FIELD_CHUNK
    use_quality: bool = False
    fill_distance: float = 0.5
    compute_inverse: bool = True
    inverse_iterations: int = 30
    overwrite: bool = False
    n_levels: int | None = None
    scheduler: str = "threads"
    fixed_url: str | None = None
    moving_url: str | None = None
    shards: ShardSpec = None
    writer: FieldWriter | None = field(default=None, repr=False)

    # -- itk-dreg entry point ------------------------------------------
    def __call__(
        self,
        block_results: Iterable[LocatedBlockResult],
        fixed_reader_ctor: Any,
        initial_transform: Any,
        **kwargs: Any,
    ) -> BlendedTransformResult:
        """Reduce in-process (the itk-dreg way), running the chunked graph locally.

        Parameters
        ----------
        block_results:
            Located block results.
        fixed_reader_ctor:
            Fixed reader constructor; its ``geometry`` attribute, or
            ``geometry_of(fixed_reader_ctor().GetOutput())``, gives the grid.
        initial_transform:
            Fixed→moving transform the block transforms act before.

        Returns
        -------
        BlendedTransformResult
            Total fixed→moving transform (initial folded in), inverse and report.

        """
        import dask

        fixed = reader_geometry(fixed_reader_ctor)
        results = list(block_results)
        boxes = [padded_box(r, fixed) for r in results]
        delayed_results = [dask.delayed(r, pure=False) for r in results]
        graph = self.build_graph(delayed_results, boxes, fixed, initial_transform)
        result: BlendedTransformResult = graph.compute(scheduler=self.scheduler)
        return result

    # -- engine entry point ----------------------------------------------
    def build_graph(
        self,
        block_results: Sequence[Any],
        block_boxes: Sequence[Box],
        fixed_geometry: ImageGeometry,
        initial_transform: Any,
        **kwargs: Any,
    ) -> Any:
        """Build the chunked reduction graph.

        Parameters
        ----------
        block_results:
            ``dask.delayed`` objects resolving to :class:`LocatedBlockResult`
            (or the results themselves).
        block_boxes:
            Padded fixed box of each block (voxel indices at the fixed level,
            NumPy order), known at build time, so each field chunk depends only
            on the blocks that can reach it.
        fixed_geometry:
            Fixed image geometry at the registered level.
        initial_transform:
            Fixed→moving transform the block transforms act before.

        Returns
        -------
        dask.delayed.Delayed
            Resolves to a :class:`BlendedTransformResult`.

        """
        if len(block_results) != len(block_boxes):
            raise ValueError("block_results and block_boxes must have the same length")
        return build_reduction_graph(self, self.field_writer(), list(block_results),
                                     list(block_boxes), fixed_geometry, initial_transform)

    def field_writer(self) -> FieldWriter | None:
        """The writer fields go to: ``writer``, or a scene writer for ``output``."""
        if self.writer is not None or self.output is None:
            return self.writer
        from ngff_dreg.io.omezarr.field_writer import FieldSceneWriter

        return FieldSceneWriter(self.output, self.storage_options, self.overwrite,
                                fixed_url=self.fixed_url, moving_url=self.moving_url,
                                shards=self.shards)

    def field_geometry(self, fixed: ImageGeometry) -> ImageGeometry:
        """The field grid for a fixed geometry."""
        return field_geometry_for(fixed, factor=self.field_spacing_factor,
                                  spacing=self.field_spacing)
