"""ngff-dreg: distributed coarse-to-fine registration of OME-Zarr images."""

from ngff_dreg._pickling import register_module_reducers
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

# Let user methods that use ``itk`` (defined in ``__main__`` or a notebook)
# travel between processes: on the client and on every worker that imports us.
register_module_reducers()

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
