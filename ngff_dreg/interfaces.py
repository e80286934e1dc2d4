"""The itk-dreg plug-in contract: three abstract callables and their records.

A method written for itk-dreg (``ConstructReaderMethod``,
``BlockPairRegistrationMethod``, ``ReduceResultsMethod``) runs unchanged under
ngff-dreg when its base classes are swapped for these. This module holds the
contract only; it imports no implementation and does not import ``itk``.

Conventions
-----------
* Array indices, chunk indices and slices are in NumPy order (slowest first,
  e.g. ``z, y, x``). ITK objects (regions, points, spacing) are in ITK order
  (``x, y, z``).
* Every transform maps points from the **fixed** image's physical space to the
  **moving** image's physical space (ITK's resampling convention).
* A block method's ``transform`` acts on a fixed point *before* the initial
  transform: ``total(x) = initial(block(x))``. This is what "applied after the
  initial transform" means in an ``itk.CompositeTransform`` queue.

Optional hooks
--------------
Beyond the three abstract callables, the engine and the reduction use a few
capabilities when an object offers them. Each is a runtime-checkable
:class:`typing.Protocol` below, checked with ``isinstance`` (the way
zarr-python declares store capabilities), so the whole contract reads here:

* reader constructors and readers: :class:`HasGeometry`, :class:`HasChunkShape`,
  :class:`SupportsReadBox`;
* block methods: :class:`AcceptsNgffTransforms`, :class:`DeclaresItkModules`;
* reduce methods: :class:`SupportsBuildGraph` (handed a :class:`FieldWriter`);
* transforms and results: :class:`SupportsTransformPoints`,
  :class:`SupportsToItk`, :class:`HasReport`;
* ITK objects met outside :mod:`ngff_dreg.itk_bridge`:
  :class:`ItkTransformLike`, :class:`ItkImageLike`, :class:`ItkReaderLike`,
  :class:`UpdatesOutputInformation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ngff_dreg.geometry import Box, ImageGeometry

__all__ = [
    "BlockInfo",
    "BlockRegStatus",
    "BlockPairRegistrationResult",
    "LocatedBlockResult",
    "RegistrationTransformResult",
    "RegistrationResult",
    "ConstructReaderMethod",
    "BlockPairRegistrationMethod",
    "ReduceResultsMethod",
    "HasGeometry",
    "HasChunkShape",
    "SupportsReadBox",
    "AcceptsNgffTransforms",
    "DeclaresItkModules",
    "SupportsBuildGraph",
    "FieldWriter",
    "ShardedFieldWriter",
    "SupportsTransformPoints",
    "SupportsToItk",
    "HasReport",
    "ItkTransformLike",
    "ItkImageLike",
    "ItkReaderLike",
    "UpdatesOutputInformation",
]


class BlockRegStatus(IntEnum):
    """Outcome of registering one block pair.

    ``SUCCESS`` and ``FAILURE`` keep their itk-dreg values; the specific codes
    after them say *why* a block produced no transform.
    """

    SUCCESS = 0
    """Registration produced at least a forward transform."""
    FAILURE = 1
    """Unspecified failure."""
    NO_SIGNAL = 2
    """The fixed block holds no usable signal (background, constant); skipped."""
    OUT_OF_BOUNDS = 3
    """The block maps outside the moving image."""
    METHOD_ERROR = 4
    """The block method raised an exception."""
    LOW_QUALITY = 5
    """The method ran but its result failed a quality check and was discarded."""


@dataclass
class BlockInfo:
    """Position of one scheduled block (chunk) inside the fixed array.

    Attributes
    ----------
    chunk_index:
        Index of the block in the block grid, NumPy order.
    array_slice:
        Slices into the fixed array (NumPy order) covering the block, without
        overlap padding.

    """

    chunk_index: tuple[int, ...]
    array_slice: tuple[slice, ...]

    def __post_init__(self) -> None:
        self.chunk_index = tuple(int(i) for i in self.chunk_index)
        self.array_slice = tuple(self.array_slice)
        if len(self.chunk_index) != len(self.array_slice):
            raise ValueError(
                f"chunk_index {self.chunk_index} and array_slice {self.array_slice} "
                "have different dimensions"
            )

    @property
    def ndim(self) -> int:
        """Number of array dimensions."""
        return len(self.array_slice)

    @property
    def shape(self) -> tuple[int, ...]:
        """Block shape in voxels, NumPy order."""
        return tuple(int(s.stop - s.start) for s in self.array_slice)


@dataclass
class BlockPairRegistrationResult:
    """Result of registering one fixed block against the moving image.

    Attributes
    ----------
    transform:
        Forward transform (fixed→moving), applied to a fixed point *before* the
        initial transform. Required when ``status`` is SUCCESS.
    transform_domain:
        Unbuffered ``itk.Image`` whose largest region is the oriented physical
        box over which ``transform`` is valid. Required with ``transform``.
    inv_transform, inv_transform_domain:
        Optional inverse and its domain.
    status:
        A :class:`BlockRegStatus`.
    metric:
        Optional final metric value (lower is better), used as a quality weight.
    message:
        Optional human-readable note (the error text for METHOD_ERROR).
    figures:
        Optional named figures measured by the method on the block's own
        level (ngff-dreg's methods report ``ncc_before``/``ncc_after`` on
        held-out samples and the number of ``samples``); the reduction
        aggregates them into the stage's report.

    """

    transform: Any | None
    transform_domain: Any | None
    inv_transform: Any | None
    inv_transform_domain: Any | None
    status: BlockRegStatus
    metric: float | None = None
    message: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = BlockRegStatus(int(self.status))
        if self.status == BlockRegStatus.SUCCESS and self.transform is None:
            raise ValueError("a SUCCESS block result requires a transform")
        if (self.transform is None) != (self.transform_domain is None):
            raise ValueError("transform and transform_domain must be given together")
        if (self.inv_transform is None) != (self.inv_transform_domain is None):
            raise ValueError("inv_transform and inv_transform_domain must be given together")
        if self.inv_transform is not None and self.transform is None:
            raise ValueError("an inverse transform requires a forward transform")
        if self.transform_domain is not None and _domain_is_empty(self.transform_domain):
            raise ValueError("transform_domain must be a non-empty region")

    @classmethod
    def failed(
        cls, status: BlockRegStatus = BlockRegStatus.FAILURE, message: str = ""
    ) -> BlockPairRegistrationResult:
        """A result with no transform and the given failure status."""
        if status == BlockRegStatus.SUCCESS:
            raise ValueError("failed() needs a failure status")
        return cls(None, None, None, None, status, None, message)


def _domain_is_empty(domain: Any) -> bool:
    if not isinstance(domain, ItkImageLike):
        return False
    return any(int(s) == 0 for s in domain.GetLargestPossibleRegion().GetSize())


@dataclass
class LocatedBlockResult:
    """A block result together with the fixed block it came from."""

    result: BlockPairRegistrationResult
    fixed_info: BlockInfo


@dataclass
class RegistrationTransformResult:
    """Fixed→moving transform valid over the whole fixed domain, and its inverse.

    ngff-dreg's reductions return the *total* transform: the initial transform
    is already folded in.
    """

    transform: Any
    inv_transform: Any | None = None


@dataclass
class RegistrationResult:
    """Outcome of a registration.

    Attributes
    ----------
    transforms:
        The forward and inverse transforms.
    status:
        Array of :class:`BlockRegStatus` codes shaped like the block grid.
    levels:
        Per-level reports (block status, metrics, timings), filled by the
        coarse-to-fine pipeline; empty for a single ``register_images`` run.
    timings:
        Wall time of each stage in seconds.
    io:
        Store I/O of the run, filled by the pipeline:
        ``{"run": {"total": figures, "images": {url: figures}}, "stages":
        {stage: ...}}``, where figures count requests, bytes fetched, the
        distinct chunk pieces and bytes behind them, their ratio ``reread``,
        metadata requests per object and cache hits
        (:meth:`ngff_dreg.io.storage.store_stats.StoreCounts.summary`).

    """

    transforms: RegistrationTransformResult
    status: npt.NDArray[np.integer[Any]]
    levels: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)


class ConstructReaderMethod(ABC):
    """Makes a reader that behaves like ``itk.ImageFileReader``.

    The reader's output carries the image metadata (size, spacing, origin,
    direction) without voxels; voxels of a requested region are streamed on
    ``Update()``. Implementations must pickle so that workers can rebuild the
    reader themselves.
    """

    @abstractmethod
    def __call__(self, **kwargs: Any) -> Any:
        """Return a new reader."""


class BlockPairRegistrationMethod(ABC):
    """Registers one fixed block against the matching moving region.

    The engine calls it as itk-dreg does, with keywords only:
    ``method(fixed_subimage=..., moving_subimage=..., initial_transform=...,
    block_info=..., **kwargs)``, so a method may declare just
    ``__call__(self, **kwargs)``.
    """

    @abstractmethod
    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Register the block pair.

        Parameters
        ----------
        fixed_subimage:
            ``itk.Image``; its RequestedRegion is the block, its BufferedRegion
            the block plus overlap padding.
        moving_subimage:
            ``itk.Image`` covering the fixed block's physical bounds mapped
            through ``initial_transform``, plus padding.
        initial_transform:
            Fixed→moving ``itk.Transform`` from earlier stages.
        block_info:
            Where the block sits in the fixed array.

        Returns
        -------
        BlockPairRegistrationResult
            Its ``transform`` acts on fixed points before ``initial_transform``.

        """


class ReduceResultsMethod(ABC):
    """Turns the per-block results into one transform over the fixed domain."""

    @abstractmethod
    def __call__(
        self,
        block_results: Iterable[LocatedBlockResult],
        fixed_reader_ctor: ConstructReaderMethod,
        initial_transform: Any,
        **kwargs: Any,
    ) -> RegistrationTransformResult:
        """Reduce block results to a fixed→moving transform."""


# --------------------------------------------------------------------------- optional hooks
@runtime_checkable
class HasGeometry(Protocol):
    """A reader constructor (or reader) that knows its image's geometry without ITK.

    The engine reads ``geometry`` instead of building a reader and asking its
    ``GetOutput()`` (:class:`~ngff_dreg.io.omezarr.reader.OMEZarrReaderConstructor`,
    :class:`~ngff_dreg.io.omezarr.memory.ArrayReaderConstructor`).
    """

    @property
    def geometry(self) -> ImageGeometry:
        """Shape (NumPy order), spacing, origin, direction and unit of the image."""
        ...


@runtime_checkable
class HasChunkShape(Protocol):
    """A reader constructor whose image is stored in chunks.

    The engine rounds the requested block shape up to whole chunks, so every
    block read is chunk-aligned.
    """

    @property
    def chunk_shape(self) -> tuple[int, ...] | None:
        """Spatial storage chunk shape, NumPy order (``None``: not chunked)."""
        ...


@runtime_checkable
class SupportsReadBox(Protocol):
    """A reader that returns the voxels of a box as an array, without an ITK image."""

    def read_box(self, box: Box) -> npt.NDArray[Any]:
        """Voxels of ``box`` (NumPy order), native dtype."""
        ...


@runtime_checkable
class AcceptsNgffTransforms(Protocol):
    """A block method that may be handed the initial transform unconverted.

    When ``accepts_ngff_transforms`` is true and the initial transform is an
    :class:`~ngff_dreg.transforms.AffineTransform` or a
    :class:`~ngff_dreg.transforms.TransformChain`, the engine passes it as is
    instead of building an ``itk.Transform`` for every block.
    """

    @property
    def accepts_ngff_transforms(self) -> bool:
        """True when the method applies an ngff-dreg transform itself."""
        ...


@runtime_checkable
class DeclaresItkModules(Protocol):
    """A block method that names the ITK modules it uses.

    A worker then loads only those before the first block (``None``: all of
    the ITK that ngff-dreg uses).
    """

    @property
    def itk_modules(self) -> Sequence[str] | None:
        """ITK attribute names to load (``itk.<name>``), or ``None``."""
        ...


@runtime_checkable
class SupportsBuildGraph(Protocol):
    """A reduce method that builds its own dask graph from the delayed block results.

    The engine then hands it the delayed results and the blocks' padded boxes
    (known at build time), so it can reduce chunk by chunk; any other reduce
    method is called once with every result, as in itk-dreg.
    """

    def build_graph(
        self,
        block_results: Sequence[Any],
        block_boxes: Sequence[Box],
        fixed_geometry: ImageGeometry,
        initial_transform: Any,
        **kwargs: Any,
    ) -> Any:
        """A ``dask.delayed`` object resolving to a :class:`RegistrationTransformResult`."""
        ...


@runtime_checkable
class FieldWriter(Protocol):
    """Where a chunked reduction writes its forward and inverse fields.

    The reducer is handed one (:class:`~ngff_dreg.io.omezarr.field_writer.FieldSceneWriter`
    writes an NGFF 0.6 scene). It must pickle: chunk tasks call it on the
    workers. Call order: :meth:`begin`, any :meth:`write_chunk` and quality
    calls, then :meth:`finish`. A writer storing sharded arrays is a
    :class:`ShardedFieldWriter` (written one whole shard per task).
    """

    @property
    def url(self) -> str:
        """Where the fields go (for task names and messages)."""
        ...

    @property
    def forward_name(self) -> str:
        """Name of the forward (fixed→moving) field."""
        ...

    @property
    def inverse_name(self) -> str:
        """Name of the inverse (moving→fixed) field."""
        ...

    def begin(
        self, geometries: Mapping[str, ImageGeometry], *, chunks: Sequence[int] | int = 64
    ) -> None:
        """Create the field arrays (one grid per field name)."""
        ...

    def write_chunk(
        self, name: str, geometry: ImageGeometry, box: Box, data: npt.NDArray[Any]
    ) -> None:
        """Write one block of a field (NGFF layout, world-space vectors)."""
        ...

    def create_quality_array(
        self, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: str = "float32"
    ) -> None:
        """Create a quality map (e.g. the Jacobian determinant)."""
        ...

    def write_quality_chunk(self, name: str, box: Box, data: npt.NDArray[Any]) -> None:
        """Write one block of a quality map."""
        ...

    def finish(
        self,
        affine: Any,
        geometries: Mapping[str, ImageGeometry],
        *,
        n_levels: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the pyramids and the metadata, last."""
        ...

    def loader(self, name: str, geometry: ImageGeometry) -> Callable[[Box], npt.NDArray[Any]]:
        """A picklable ``loader(box)`` reading a written field back."""
        ...


@runtime_checkable
class ShardedFieldWriter(FieldWriter, Protocol):
    """A :class:`FieldWriter` whose arrays may be sharded (Zarr v3 ``sharding_indexed``).

    A shard is one stored object: writing one of its inner chunks rewrites it
    whole, so two tasks must never write into one shard. The reduction asks
    :meth:`shard_shape` for the grouping and then gives each shard to one
    task, which writes all its inner chunks with one :meth:`write_chunks` (or
    :meth:`write_quality_chunks`) call.
    """

    def shard_shape(self, shape: Sequence[int], chunks: Sequence[int] | int
                    ) -> tuple[int, ...] | None:
        """Spatial shard shape of an array of ``shape`` and ``chunks`` (``None``: unsharded)."""
        ...

    def write_chunks(self, name: str, geometry: ImageGeometry, box: Box,
                     parts: Iterable[tuple[Box, npt.NDArray[Any]]]) -> None:
        """Write the ``(chunk, vectors)`` parts tiling ``box`` (one shard) at once."""
        ...

    def write_quality_chunks(self, name: str, box: Box,
                             parts: Iterable[tuple[Box, npt.NDArray[Any]]]) -> None:
        """Write the ``(chunk, data)`` parts tiling ``box`` of a quality map at once."""
        ...


@runtime_checkable
class SupportsTransformPoints(Protocol):
    """A transform that maps arrays of physical points at once (NumPy)."""

    def transform_points(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, ndim)`` physical points (ITK order)."""
        ...


@runtime_checkable
class SupportsToItk(Protocol):
    """A transform that can build an equal ``itk.Transform``.

    :meth:`ngff_dreg.transforms.TransformChain.to_itk` also takes
    ``near_points=``, to build only the part of its field needed near them.
    """

    def to_itk(self) -> Any:
        """An equal ``itk.Transform``."""
        ...


@runtime_checkable
class HasReport(Protocol):
    """A transform result that carries figures of its own (a reduction's report)."""

    @property
    def report(self) -> Mapping[str, Any]:
        """Named figures (Jacobian minimum, inverse residual...)."""
        ...


@runtime_checkable
class ItkTransformLike(Protocol):
    """An ``itk.Transform``: maps one point at a time, the ITK way."""

    def TransformPoint(self, point: Sequence[float]) -> Any:
        """Map one physical point."""
        ...


@runtime_checkable
class ItkImageLike(Protocol):
    """An ``itk.Image`` (anything with ITK's image regions)."""

    def GetLargestPossibleRegion(self) -> Any:
        """The image's largest possible region."""
        ...


@runtime_checkable
class ItkReaderLike(Protocol):
    """An ``itk.ImageFileReader``-like reader (itk-dreg's reader type)."""

    def GetOutput(self) -> Any:
        """The output image (metadata only before ``Update()``)."""
        ...


@runtime_checkable
class UpdatesOutputInformation(Protocol):
    """An ITK process object whose output metadata is read on request."""

    def UpdateOutputInformation(self) -> None:
        """Read the output's metadata (``itk.ImageFileReader`` needs it first)."""
        ...
