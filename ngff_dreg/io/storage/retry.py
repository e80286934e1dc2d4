"""Retry transient storage failures with exponential backoff.

s3fs already retries a request a few times within about two seconds (HTTP 503
``SlowDown``, dropped connections, truncated bodies). Object stores under load
can stay unhappy for longer than that, and a dask task that fails on a read
fails the whole stage. :func:`retry_transient` adds a second, slower layer
around a complete read: it re-runs the operation when it raised a
:class:`~ngff_dreg.errors.StoreAccessError` (but never for
:class:`~ngff_dreg.errors.StoreNotFoundError` or any other error, which a retry
cannot fix), sleeping ``base * 2**k`` seconds (with jitter, capped) between
attempts. When every attempt fails, the last error is raised with the number
of attempts added to its message (and its attributes kept), so the user sees
which object could not be read and that retrying did not help.

The policy is set without code changes by settings (:mod:`ngff_dreg.config`),
read at each read, in the process doing it (a run's client's values are
applied on its workers)::

    ngff-dreg.io.read-attempts   total attempts (default 4; 1 disables retrying)
    ngff-dreg.io.read-backoff    first backoff in seconds (default 0.5)
    ngff-dreg.io.read-max-wait   cap on one backoff in seconds (default 8)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ngff_dreg import config
from ngff_dreg.errors import CorruptChunkError, StoreAccessError, StoreNotFoundError

__all__ = ["RetryPolicy", "retry_transient", "is_transient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes
    ----------
    attempts:
        Total number of attempts (at least 1).
    backoff:
        Sleep before the second attempt, in seconds; doubled for each next one.
    max_wait:
        Upper bound of a single sleep, in seconds.
    jitter:
        Random fraction added to each sleep (spreads out retrying workers).

    """

    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.backoff < 0 or self.max_wait < 0 or self.jitter < 0:
            raise ValueError("RetryPolicy times must be non-negative")

    @classmethod
    def from_config(cls) -> RetryPolicy:
        """The policy set by the ``ngff-dreg.io.read-*`` settings in force (default jitter)."""
        return cls(
            attempts=config.read_attempts(),
            backoff=config.read_backoff(),
            max_wait=config.read_max_wait(),
        )

    def wait(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_wait, self.backoff * 2 ** (attempt - 1))
        return float(base * (1.0 + self.jitter * random.random()))


def is_transient(exc: BaseException) -> bool:
    """True for storage errors a later attempt may not hit (network, throttling).

    A missing object (:class:`~ngff_dreg.errors.StoreNotFoundError`) and a
    chunk that cannot be decoded (:class:`~ngff_dreg.errors.CorruptChunkError`:
    the same bytes fail the same way) are not.
    """
    return isinstance(exc, StoreAccessError) and not isinstance(
        exc, (StoreNotFoundError, CorruptChunkError)
    )


def retry_transient(
    func: Callable[[], T],
    what: str,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``func``, retrying transient storage failures with backoff.

    Parameters
    ----------
    func:
        The operation; it should raise ngff-dreg store errors (wrap raw store
        calls in :func:`ngff_dreg.io.storage.store_errors.map_store_errors`).
    what:
        What is being read, for log messages (already redacted).
    policy:
        Defaults to :meth:`RetryPolicy.from_config`.
    sleep:
        Injected for tests.

    Returns
    -------
    The value of ``func``.

    Raises
    ------
    StoreAccessError
        The last transient error when every attempt failed; its message ends
        with ``"(gave up after N attempts)"``.
    Exception
        Any non-transient error, at once.

    """
    pol = policy or RetryPolicy.from_config()
    for attempt in range(1, pol.attempts + 1):
        try:
            return func()
        except StoreAccessError as exc:
            if not is_transient(exc):
                raise
            if attempt == pol.attempts:
                if pol.attempts > 1:
                    final = type(exc)(f"{exc} (gave up after {pol.attempts} attempts)")
                    final.__dict__.update(vars(exc))  # keep e.g. StoreReadError.key
                    raise final from exc
                raise
            delay = pol.wait(attempt)
            logger.warning(
                "%s failed (attempt %d of %d), retrying in %.1fs: %s",
                what,
                attempt,
                pol.attempts,
                delay,
                exc,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
