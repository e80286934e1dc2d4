"""Synthetic block results for the reduction tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationResult,
    BlockRegStatus,
    LocatedBlockResult,
)
from ngff_dreg.itk_bridge import metadata_image


def make_blocks(
    fixed: ImageGeometry,
    block: int,
    pad: int,
    transform_for: Callable[[Box, Box], Any],
    failed: Sequence[tuple[int, ...]] = (),
) -> tuple[list[LocatedBlockResult], list[Box]]:
    """Block grid over ``fixed`` with one result per block.

    ``transform_for(core, padded)`` gives each block's transform; blocks in
    ``failed`` get FAILURE.
    """
    results, boxes = [], []
    ranges = [range(0, n, block) for n in fixed.shape]
    for idx in itertools.product(*ranges):
        ci = tuple(i // block for i in idx)
        core = Box(idx, tuple(min(i + block, n) for i, n in zip(idx, fixed.shape)))
        padded = core.pad((pad,) * fixed.ndim).clip(fixed.shape)
        info = BlockInfo(ci, core.slices)
        if ci in failed:
            res = BlockPairRegistrationResult.failed(BlockRegStatus.FAILURE,
                                                     f"block {ci}: refused by the test")
        else:
            dom = metadata_image(fixed.sub(padded.slices))
            res = BlockPairRegistrationResult(
                transform_for(core, padded), dom, None, None, BlockRegStatus.SUCCESS
            )
        results.append(LocatedBlockResult(res, info))
        boxes.append(padded)
    return results, boxes


class GeometryCtor:
    """Minimal reader constructor exposing ``geometry``."""

    def __init__(self, geometry: ImageGeometry) -> None:
        self.geometry = geometry

    def __call__(self) -> Any:
        return self


@pytest.fixture
def blocks_factory() -> Callable[..., tuple[list[LocatedBlockResult], list[Box]]]:
    return make_blocks


@pytest.fixture
def ctor_factory() -> type[GeometryCtor]:
    return GeometryCtor
