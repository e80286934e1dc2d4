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
    "StoreReadError",
    "CorruptChunkError",
    "StoreChangedError",
    "PathEscapeError",
    "IncompatibleImagesError",
    "InvalidInputDataError",
    "SelectionNotFoundError",
    "OutputExistsError",
    "IncompleteOutputError",
    "OutputInUseError",
    "ScheduleError",
    "RegistrationFailedError",
    "UnsupportedFormatError",
    "ConfigError",
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


class StoreReadError(StoreAccessError):
    """An object of an input store could not be read, even after retrying.

    Raised for a chunk (or shard) of a level array whose read kept failing
    (HTTP 5xx, a dropped connection, a permission error...). The message
    names the object's URL (redacted), the level array, the chunk key and
    the underlying error's type and message. A registration stops on it: a
    block that cannot be read is never filled in from its neighbours.

    Attributes
    ----------
    url:
        The URL of the image (multiscale group) read, redacted.
    key:
        The object's key below ``url`` (e.g. ``"0/c/1/0/2"``).
    level:
        The path of the level array the object belongs to, if known.

    """

    def __init__(
        self, message: str, *, url: str | None = None, key: str | None = None,
        level: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.key = key
        self.level = level


class StoreChangedError(NgffDregError, RuntimeError):
    """The data changed between planning a run and reading it (an array replaced)."""


class PathEscapeError(InvalidMetadataError):
    """A path inside NGFF metadata points outside its store (``../``, absolute)."""


class IncompatibleImagesError(NgffDregError, ValueError):
    """Fixed and moving images cannot be registered together as given."""


class InvalidInputDataError(NgffDregError, ValueError):
    """Voxel data cannot be registered (empty, constant, NaN, unsupported dtype)."""


class CorruptChunkError(StoreReadError, InvalidInputDataError):
    """A chunk of an input array was read but cannot be decoded (corrupt or truncated bytes).

    Not retried: the same bytes decode the same way. The message names the
    chunk's key and the codec's error.
    """


class SelectionNotFoundError(InvalidInputDataError, LookupError):
    """A requested channel or time point does not exist in an image.

    The message names the image and lists what it holds (channel labels).
    """


class OutputExistsError(NgffDregError, FileExistsError):
    """The output exists already and ``overwrite`` was not requested."""


class IncompleteOutputError(NgffDregError, RuntimeError):
    """An output store was left incomplete by an interrupted run."""


class OutputInUseError(NgffDregError, RuntimeError):
    """Another live run holds the output (its lease has a fresh heartbeat).

    The message names the holder: its host, process id and start time, and
    where its lease is.

    Attributes
    ----------
    host, pid, started:
        The holder's host name, process id and start time (ISO 8601, UTC).

    """

    def __init__(self, message: str, *, host: str = "?", pid: int = -1, started: str = "?") -> None:
        super().__init__(message)
        self.host = host
        self.pid = pid
        self.started = started


class ScheduleError(NgffDregError, ValueError):
    """A registration schedule is invalid for the given images."""


class RegistrationFailedError(NgffDregError, RuntimeError):
    """Registration could not produce a transform (e.g. every block failed)."""


class UnsupportedFormatError(NgffDregError, ValueError):
    """A file format or destination ngff-dreg cannot write (e.g. an unknown extension)."""


class ConfigError(NgffDregError, ValueError):
    """A setting has a value ngff-dreg cannot use.

    Settings are dask configuration keys under ``ngff-dreg`` (see
    :mod:`ngff_dreg.config`), or the deprecated ``NGFF_DREG_*`` environment
    variables. The message names the key (or variable) and the value.
    """
