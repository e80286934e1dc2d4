"""ngff-dreg: distributed coarse-to-fine registration of OME-Zarr images."""

from ngff_dreg.errors import (
    IncompatibleImagesError,
    IncompleteOutputError,
    InvalidInputDataError,
    InvalidMetadataError,
    LevelNotFoundError,
    NgffDregError,
    OutputExistsError,
    PathEscapeError,
    RegistrationFailedError,
    ScheduleError,
    StoreAccessError,
    StoreNotFoundError,
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

__all__ = [
    "BlockInfo",
    "BlockPairRegistrationMethod",
    "BlockPairRegistrationResult",
    "BlockRegStatus",
    "Box",
    "ConstructReaderMethod",
    "ImageGeometry",
    "IncompatibleImagesError",
    "IncompleteOutputError",
    "InvalidInputDataError",
    "InvalidMetadataError",
    "LevelNotFoundError",
    "LocatedBlockResult",
    "NgffDregError",
    "OutputExistsError",
    "PathEscapeError",
    "ReduceResultsMethod",
    "RegistrationFailedError",
    "RegistrationResult",
    "RegistrationTransformResult",
    "ScheduleError",
    "StoreAccessError",
    "StoreNotFoundError",
    "UnsupportedVersionError",
    "__version__",
]
