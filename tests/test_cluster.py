"""The client context and progress bars (the LocalCluster itself: tests/test_worker.py)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from ngff_dreg.cluster import client_context, progress_bar
from ngff_dreg.errors import ScheduleError


@pytest.mark.parametrize("spec", ["local:0", "local:-2", "local:many"])
def test_bad_local_specs(spec: str) -> None:
    with ExitStack() as stack, pytest.raises(ScheduleError, match="local:N"):
        client_context(spec, stack)


def test_a_client_is_used_as_is() -> None:
    sentinel = object()
    with ExitStack() as stack:
        assert client_context(sentinel, stack) is sentinel


def test_progress_bars() -> None:
    quiet = progress_bar(False, 3, "stages")
    quiet.update(1)
    quiet.close()
    bar = progress_bar(True, 2, "blocks", unit="block")
    bar.update(2)
    bar.close()
