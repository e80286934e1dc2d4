"""ngff-dreg: distributed coarse-to-fine registration of OME-Zarr images.

The package follows the data: **read** (:mod:`~ngff_dreg.ngff`,
:mod:`~ngff_dreg.io`), **plan** (:mod:`~ngff_dreg.schedule`,
:mod:`~ngff_dreg.blocks`), **register blocks** (:mod:`~ngff_dreg.methods`,
:mod:`~ngff_dreg.engine`), **reduce** (:mod:`~ngff_dreg.reduce`), **write**
(:mod:`~ngff_dreg.io`), driven coarse to fine by :func:`register`
(:mod:`~ngff_dreg.pipeline`). The plug-in contract is
:mod:`~ngff_dreg.interfaces`.

This module only re-exports. The contract (plug-in ABCs, records, errors,
geometry) is imported eagerly; everything that pulls in zarr, dask or ITK is
re-exported lazily, so ``import ngff_dreg`` stays cheap.
"""

import importlib
from typing import Any

from ngff_dreg._pickling import register_module_reducers
from ngff_dreg.errors import (
    ConfigError,
    CorruptChunkError,
    IncompatibleImagesError,
    IncompleteOutputError,
    InvalidInputDataError,
    InvalidMetadataError,
    LevelNotFoundError,
    NgffDregError,
    OutputExistsError,
    OutputInUseError,
    PathEscapeError,
    RegistrationFailedError,
    ScheduleError,
    StoreAccessError,
    StoreChangedError,
    StoreNotFoundError,
    StoreReadError,
    UnsupportedFormatError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
    ConstructReaderMethod,
    LocatedBlockResult,
    ReduceResultsMethod,
    RegistrationResult,
    RegistrationTransformResult,
)

__version__ = "0.1.0.dev0"

_LAZY = {
    "register": "ngff_dreg.pipeline",
    "RunOptions": "ngff_dreg.run",
    "StageReport": "ngff_dreg.io.omezarr.output_state",
    "register_images": "ngff_dreg.engine",
    "output_status": "ngff_dreg.io.omezarr.output_state",
    "RegistrationSchedule": "ngff_dreg.engine",
    "BlockOptions": "ngff_dreg.engine",
    "Schedule": "ngff_dreg.schedule",
    "GlobalStage": "ngff_dreg.schedule",
    "BlockStage": "ngff_dreg.schedule",
    "OMEZarrReaderConstructor": "ngff_dreg.io.omezarr.reader",
    "ArrayReaderConstructor": "ngff_dreg.io.omezarr.memory",
    "open_multiscale": "ngff_dreg.io.omezarr.multiscale",
    "write_multiscale": "ngff_dreg.io.omezarr.image_writer",
    "to_dask": "ngff_dreg.io.omezarr.arrays",
    "to_xarray": "ngff_dreg.io.omezarr.arrays",
    "ReduceToDisplacementField": "ngff_dreg.reduce",
    "read_transform": "ngff_dreg.io.omezarr.transform_reader",
    "to_itk_transform": "ngff_dreg.io.omezarr.transform_reader",
    "export_itk": "ngff_dreg.io.omezarr.transform_reader",
    "export_transform": "ngff_dreg.export",
    "write_field_scene": "ngff_dreg.io.omezarr.field_writer",
    "apply_transform": "ngff_dreg.apply",
    "transform_points": "ngff_dreg.points",
    "AffineTransform": "ngff_dreg.transforms",
    "DisplacementField": "ngff_dreg.transforms",
    "TransformChain": "ngff_dreg.transforms",
    "ItkBSplineRegistration": "ngff_dreg.methods",
    "BSplineGaussNewton": "ngff_dreg.methods",
    "ItkLinearRegistration": "ngff_dreg.methods",
    "PhaseCorrelationTranslation": "ngff_dreg.methods",
    "ElastixBlockRegistration": "ngff_dreg.methods",
    "ItkWorkerPlugin": "ngff_dreg.worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ngff_dreg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

# Let user methods that use ``itk`` (defined in ``__main__`` or a notebook)
# travel between processes: on the client and on every worker that imports us.
register_module_reducers()

__all__ = [
    *sorted(_LAZY),
    "BlockInfo",
    "BlockPairRegistrationMethod",
    "BlockPairRegistrationResult",
    "BlockRegStatus",
    "Box",
    "ConfigError",
    "ConstructReaderMethod",
    "CorruptChunkError",
    "ImageGeometry",
    "IncompatibleImagesError",
    "IncompleteOutputError",
    "InvalidInputDataError",
    "InvalidMetadataError",
    "LevelNotFoundError",
    "LocatedBlockResult",
    "NgffDregError",
    "OutputExistsError",
    "OutputInUseError",
    "PathEscapeError",
    "ReduceResultsMethod",
    "RegistrationFailedError",
    "RegistrationResult",
    "RegistrationTransformResult",
    "ScheduleError",
    "StoreAccessError",
    "StoreChangedError",
    "StoreNotFoundError",
    "StoreReadError",
    "UnsupportedFormatError",
    "UnsupportedVersionError",
    "__version__",
]
