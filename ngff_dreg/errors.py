"""Exception types raised by ngff-dreg.

Every error caused by the user's input derives from :class:`NgffDregError`.
Specific errors also subclass the builtin exception a caller would naturally
catch (``FileNotFoundError``, ``ValueError``, ``PermissionError``...), following
zarr-python's habit.
"""

from __future__ import annotations

__all__ = [
    "NgffDregError",
    "InvalidMetadataError",
    "UnsupportedVersionError",
    "LevelNotFoundError",
    "StoreAccessError",
    "StoreNotFoundError",
    "StoreChangedError",
    "PathEscapeError",
    "IncompatibleImagesError",
    "InvalidInputDataError",
    "SelectionNotFoundError",
    "OutputExistsError",
    "IncompleteOutputError",
    "ScheduleError",
    "RegistrationFailedError",
    "UnsupportedFormatError",
]


class NgffDregError(Exception):
    """Root of every error ngff-dreg raises for the user's input or environment."""


class InvalidMetadataError(NgffDregError, ValueError):
    """OME-Zarr metadata is missing, malformed or inconsistent.

    The message names the URL and the metadata key at fault.
    """


class UnsupportedVersionError(InvalidMetadataError):
    """The NGFF version of a dataset is not one ngff-dreg reads."""


class LevelNotFoundError(NgffDregError, IndexError):
    """A requested pyramid level does not exist, or its array is missing."""


class StoreAccessError(NgffDregError, OSError):
    """A store could not be reached or read (network, permissions, credentials)."""


class StoreNotFoundError(StoreAccessError, FileNotFoundError):
    """No Zarr group or array exists at the given URL."""


class StoreChangedError(NgffDregError, RuntimeError):
    """The data changed between planning a run and reading it (an array replaced)."""


class PathEscapeError(InvalidMetadataError):
    """A path inside NGFF metadata points outside its store (``../``, absolute)."""


class IncompatibleImagesError(NgffDregError, ValueError):
    """Fixed and moving images cannot be registered together as given."""


class InvalidInputDataError(NgffDregError, ValueError):
    """Voxel data cannot be registered (empty, constant, NaN, unsupported dtype)."""


class SelectionNotFoundError(InvalidInputDataError, LookupError):
    """A requested channel or time point does not exist in an image.

    The message names the image and lists what it holds (channel labels).
    """


class OutputExistsError(NgffDregError, FileExistsError):
    """The output exists already and ``overwrite`` was not requested."""


class IncompleteOutputError(NgffDregError, RuntimeError):
    """An output store was left incomplete by an interrupted run."""


class ScheduleError(NgffDregError, ValueError):
    """A registration schedule is invalid for the given images."""


class RegistrationFailedError(NgffDregError, RuntimeError):
    """Registration could not produce a transform (e.g. every block failed)."""


class UnsupportedFormatError(NgffDregError, ValueError):
    """A file format or destination ngff-dreg cannot write (e.g. an unknown extension)."""
