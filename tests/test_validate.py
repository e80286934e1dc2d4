"""Input checks: float32 precision, what counts as signal, level data and overlap."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ngff_dreg.errors import IncompatibleImagesError, InvalidInputDataError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.validate import (
    MIN_FLOAT32_LEVELS,
    check_float32_precision,
    check_level_data,
    check_overlap,
    has_signal,
    has_variation,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(1000, dtype=np.uint16),
        np.arange(1000, dtype=np.int64) + 10**6,  # modest offset: many float32 steps
        np.linspace(1e9, 1e9 + 1e6, 50),  # float64, wide spread
        np.full(10, 2**40, dtype=np.int64),  # constant loses nothing
        np.array([np.nan, np.inf, 3.0]),  # one finite value
        np.zeros(0, dtype=np.float64),
        np.array(["a", "b"]),  # not numeric: not this check's business
    ],
)
def test_precision_check_accepts_data_that_survives_float32(array: np.ndarray) -> None:
    check_float32_precision(array, "x")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(100, dtype=np.int64) + 10**12,
        np.linspace(1e9, 1e9 + 10.0, 50),
        np.array([2**40, 2**40 + 3], dtype=np.uint64),
    ],
)
def test_precision_check_refuses_collapsing_data(array: np.ndarray) -> None:
    with pytest.raises(InvalidInputDataError, match="float32 steps") as info:
        check_float32_precision(array, "s3://bucket/img.zarr box (0,)")
    assert "s3://bucket/img.zarr" in str(info.value)
    assert MIN_FLOAT32_LEVELS == 256


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
def test_has_signal(dtype: type) -> None:
    rng = np.random.default_rng(0)
    block = (100 * rng.random((8, 8, 8))).astype(dtype)
    assert has_signal(block)
    assert not has_signal(np.full((8, 8), 7, dtype=dtype))
    assert not has_signal(np.zeros((0, 4), dtype=dtype))
    # a threshold asks for a fraction of bright voxels
    dim = np.zeros((10, 10), dtype=dtype)
    dim[0, :3] = 50
    assert has_signal(dim)
    assert not has_signal(dim, threshold=10)  # 3 % above
    assert has_signal(dim, threshold=10, min_fraction=0.03)


def test_has_signal_reads_non_finite_values_as_zero() -> None:
    nan = np.full((4, 4), np.nan, dtype=np.float32)
    assert not has_signal(nan)
    mostly_nan = nan.copy()
    mostly_nan[0, 0] = 1.0
    assert has_signal(mostly_nan)
    assert not has_signal(np.array([np.inf, -np.inf, 0.0]))
    # the tolerance is relative to the magnitude
    assert not has_signal(np.array([1e6, 1e6 + 0.5], dtype=np.float64))
    assert has_signal(np.array([1e6, 1e6 + 0.5]), rtol=1e-12)


def test_has_variation() -> None:
    rng = np.random.default_rng(1)
    assert has_variation(rng.random(100))
    assert has_variation(rng.integers(0, 5, 50))
    assert not has_variation(np.ones(100))
    assert not has_variation(rng.random(7))  # too few values
    with_nan = rng.random(100)
    with_nan[::2] = np.nan
    assert has_variation(with_nan)
    assert not has_variation(np.full(20, np.nan))
    assert not has_variation(1e9 + 1e-6 * rng.random(100))  # spread below noise


def test_level_data_checks(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)
    good = rng.random((16, 16, 16)).astype(np.float32)
    check_level_data("fixed", "f.zarr", 1, good)
    with pytest.raises(InvalidInputDataError, match=r"f\.zarr level 1 is empty"):
        check_level_data("fixed", "f.zarr", 1, np.zeros((0, 4, 4), np.float32))
    mostly_nan = good.copy()
    mostly_nan[:, :, :10] = np.nan
    with pytest.raises(InvalidInputDataError, match="62% of voxels are NaN"):
        check_level_data("moving", "m.zarr", 0, mostly_nan)
    with pytest.raises(InvalidInputDataError, match=r"is constant \(3\.0\)"):
        check_level_data("moving", "m.zarr", 0, np.full((8, 8), 3.0))
    few_nan = good.copy()
    few_nan[0, 0, :4] = np.nan
    with caplog.at_level(logging.WARNING, logger="ngff_dreg.validate"):
        check_level_data("moving", "m.zarr", 2, few_nan)
    assert any("NaN/inf voxels read as 0" in r.getMessage() for r in caplog.records)


def test_overlap_check() -> None:
    a = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    touching = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (10.5, 0.0, 0.0))
    far = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (100.0, 0.0, 0.0))
    check_overlap("a", "b", a, touching, None)
    with pytest.raises(IncompatibleImagesError, match="do not overlap"):
        check_overlap("a.zarr", "far.zarr", a, far, None)
    check_overlap("a", "far", a, far, np.eye(4))  # an initial transform brings them together
