"""Bad input: each case gives a clear ``ngff_dreg`` error and leaves no output.

Expected behaviour for the integer dtypes (registration computes in float32):
full-range ``uint16`` converts exactly and registers like the float original;
wide dtypes (``int64``...) whose contrast sits on a large offset would collapse
in float32, so they are refused with a message that says how to fix them
instead of producing a meaningless transform. A few NaN voxels are read as 0
with a warning; a mostly-NaN image is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_helpers import field_difference, small_schedule, tree_files, truth_error

from ngff_dreg.errors import (
    IncompatibleImagesError,
    InvalidInputDataError,
    LevelNotFoundError,
    NgffDregError,
    ScheduleError,
)
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.pipeline import register
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule


def _read(url: str) -> np.ndarray:
    ctor = OMEZarrReaderConstructor(url)
    return ctor().read_box(Box.full(ctor.geometry.shape))


def _write(url: str, data: np.ndarray, **geom: Any) -> str:
    nd = data.ndim
    g = ImageGeometry(
        data.shape, geom.get("spacing", (1.0,) * nd), geom.get("origin", (0.0,) * nd),
        unit="millimeter",
    )
    write_multiscale(url, data, g, n_levels=geom.get("n_levels", 3), chunks=16, overwrite=True)
    return url


def _refused(
    tmp_path: Path, fixed: str, moving: str, exc: type[Exception], match: str,
    dask_client: Any, **kwargs: Any,
) -> None:
    """``register`` raises ``exc`` matching ``match`` and writes nothing."""
    out = str(tmp_path / "out.zarr")
    kwargs.setdefault("schedule", small_schedule())
    with pytest.raises(exc, match=match) as info:
        register(fixed, moving, out, client=dask_client, progress=False, **kwargs)
    assert isinstance(info.value, NgffDregError)
    assert output_status(out) == "absent"
    assert not Path(out).exists()


def test_different_dimensionality(small_pair: Any, tmp_path: Path, dask_client: Any) -> None:
    flat = _write(str(tmp_path / "2d.zarr"), _read(small_pair.fixed)[24])
    _refused(tmp_path, flat, small_pair.moving, IncompatibleImagesError, r"2-D.*3-D", dask_client)


def test_non_overlapping_extents_hint_initial_transform(
    small_pair: Any, tmp_path: Path, dask_client: Any
) -> None:
    far = _write(str(tmp_path / "far.zarr"), _read(small_pair.moving), origin=(500.0, 0.0, 0.0))
    _refused(
        tmp_path, small_pair.fixed, far, IncompatibleImagesError,
        r"do not overlap.*initial_transform", dask_client,
    )


@pytest.mark.parametrize("kind", ["zeros", "constant", "empty"])
def test_empty_or_constant_image(
    small_pair: Any, tmp_path: Path, dask_client: Any, kind: str
) -> None:
    if kind == "empty":
        data = np.zeros((0, 48, 48), np.float32)
        match = r"empty|no voxels|shape|size"
    else:
        data = np.full((48, 48, 48), 0.0 if kind == "zeros" else 7.5, np.float32)
        match = r"constant.*nothing to register"
    bad = _write(str(tmp_path / f"{kind}.zarr"), data, n_levels=1 if kind == "empty" else 3)
    _refused(tmp_path, small_pair.fixed, bad, NgffDregError, match, dask_client)


def test_mostly_nan_image(small_pair: Any, tmp_path: Path, dask_client: Any) -> None:
    data = _read(small_pair.moving).copy()
    data[:, :, :30] = np.nan  # 62 % NaN
    bad = _write(str(tmp_path / "nan.zarr"), data)
    _refused(tmp_path, small_pair.fixed, bad, InvalidInputDataError, r"NaN", dask_client)


@pytest.mark.slow
def test_sparse_nans_are_read_as_zero_with_a_warning(
    small_pair: Any, reference_run: Any, tmp_path: Path, dask_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _read(small_pair.moving).copy()
    rng = np.random.default_rng(1)
    data[rng.random(data.shape) < 0.002] = np.nan
    moving = _write(str(tmp_path / "nans.zarr"), data)
    with caplog.at_level(logging.WARNING, logger="ngff_dreg.validate"):
        result = register(
            small_pair.fixed, moving, str(tmp_path / "out.zarr"), schedule=small_schedule(),
            client=dask_client, progress=False,
        )
    assert any("NaN" in r.getMessage() for r in caplog.records)
    tx = result.transforms.transform
    pts = small_pair.fixed_geometry.array_index_to_physical(np.indices((48, 48, 48))
                                                            .reshape(3, -1).T[::37])
    assert np.isfinite(tx.transform_points(pts)).all()  # no NaN leaks into the field
    assert result.transforms.report["jacobian_min"] > 0
    err = truth_error(tx, small_pair)
    ref_err = truth_error(reference_run[1].transforms.transform, small_pair)
    assert err < ref_err + 0.15, (err, ref_err)


@pytest.mark.slow
def test_full_range_uint16_registers_like_float(
    small_pair: Any, reference_run: Any, tmp_path: Path, dask_client: Any
) -> None:
    urls = []
    for name, url in (("fixed", small_pair.fixed), ("moving", small_pair.moving)):
        data = _read(url).astype(np.float64)
        scaled = np.round((data - data.min()) / np.ptp(data) * 65535).astype(np.uint16)
        assert scaled.min() == 0 and scaled.max() == 65535
        urls.append(_write(str(tmp_path / f"{name}16.zarr"), scaled))
    result = register(
        *urls, str(tmp_path / "out.zarr"), schedule=small_schedule(), client=dask_client,
        progress=False,
    )
    # Not bit-identical to the float run (the intensity scale changes the optimiser's
    # steps: points differ by up to ~0.8 voxel), but as accurate against the truth.
    diff = field_difference(result.transforms.transform, reference_run[1].transforms.transform,
                            small_pair)
    err = truth_error(result.transforms.transform, small_pair)
    ref_err = truth_error(reference_run[1].transforms.transform, small_pair)
    assert err < ref_err + 0.15, (err, ref_err, diff)


def test_int64_with_a_huge_offset_is_refused(
    small_pair: Any, tmp_path: Path, dask_client: Any
) -> None:
    data = np.round(_read(small_pair.moving) * 1000).astype(np.int64) + 2**40
    bad = _write(str(tmp_path / "i64.zarr"), data)
    assert np.ptp(data.astype(np.float32)) < np.ptp(data) / 100  # float32 would wipe it out
    _refused(
        tmp_path, small_pair.fixed, bad, InvalidInputDataError,
        r"int64 values .* float32 steps.*subtract the offset", dask_client,
    )


def test_int64_with_a_modest_range_is_accepted(tmp_path: Path) -> None:
    data = (np.arange(8**3).reshape(8, 8, 8) * 3 - 500).astype(np.int64)
    url = _write(str(tmp_path / "ok64.zarr"), data, n_levels=1)
    np.testing.assert_array_equal(_read(url), data)


def test_missing_level_is_found_by_the_up_front_check(small_pair: Any) -> None:
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.schedule import check_schedule_levels

    geoms = [lv.geometry for lv in open_multiscale(small_pair.fixed).levels]
    ok = Schedule(GlobalStage(level=0), [BlockStage(level=1), BlockStage(level=1.0)])
    assert check_schedule_levels(ok, geoms, small_pair.fixed) == [1, 0]
    bad = Schedule(GlobalStage(level=0), [BlockStage(level=0), BlockStage(level=7)])
    with pytest.raises(LevelNotFoundError, match=r"fixed\.ome\.zarr has no level 7"):
        check_schedule_levels(bad, geoms, small_pair.fixed)


def test_missing_schedule_level_leaves_no_output(
    small_pair: Any, tmp_path: Path, dask_client: Any
) -> None:
    sched = Schedule(GlobalStage(level=0), [BlockStage(level=7, block_size=16)])
    _refused(tmp_path, small_pair.fixed, small_pair.moving, LevelNotFoundError, r"no level 7",
             dask_client, schedule=sched)


def test_missing_level_array(small_pair: Any, tmp_path: Path, dask_client: Any) -> None:
    # A level listed in the metadata whose array is gone.
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(small_pair.moving, broken)
    shutil.rmtree(broken / "2")
    _refused(tmp_path, small_pair.fixed, str(broken), LevelNotFoundError,
             r"broken.zarr.*datasets\[2\]\.path.*no array", dask_client)


def test_too_fine_block_grid_is_coarsened_with_a_warning(
    small_pair: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ngff_dreg.engine as sch
    from ngff_dreg.methods import PhaseCorrelationTranslation
    from ngff_dreg.reduce import ReduceToDisplacementField
    from ngff_dreg.transforms import AffineTransform

    monkeypatch.setattr(sch, "MAX_BLOCKS", 10)
    with caplog.at_level(logging.WARNING, logger="ngff_dreg.engine"):
        plan = sch.register_images(
            OMEZarrReaderConstructor(small_pair.fixed),
            OMEZarrReaderConstructor(small_pair.moving),
            PhaseCorrelationTranslation(),
            ReduceToDisplacementField(),
            AffineTransform.identity(3),
            fixed_chunk_size=(4, 4, 4),  # 12³ = 1728 blocks requested
            overlap_factors=0.5,
        )
    n = len(plan.block_results)
    assert 1 <= n <= 10, n
    assert any("coarsened" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_equal_to_or_inside_an_input(
    small_pair: Any, tmp_path: Path, dask_client: Any, where: str
) -> None:
    before = tree_files(small_pair.moving)
    out = small_pair.moving if where == "same" else f"{small_pair.moving}/result"
    with pytest.raises(IncompatibleImagesError, match="write the transform somewhere else"):
        register(small_pair.fixed, small_pair.moving, out, schedule=small_schedule(),
                 client=dask_client, progress=False, overwrite=True)
    assert tree_files(small_pair.moving) == before  # the input is untouched


def test_schedule_error_is_raised_before_any_output(
    small_pair: Any, tmp_path: Path, dask_client: Any
) -> None:
    _refused(tmp_path, small_pair.fixed, small_pair.moving, ScheduleError, r"no block stage",
             dask_client, schedule=Schedule(GlobalStage(level=0), []))
