"""The Schedule dataclass: TOML/YAML/JSON round trips, level specs, defaults, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ngff_dreg.errors import LevelNotFoundError, ScheduleError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.methods import (
    BSplineGaussNewton,
    ItkBSplineRegistration,
    ItkLinearRegistration,
    method_names,
)
from ngff_dreg.schedule import (
    CONTROL_FRACTIONS,
    MAX_FINEST_STRIDE,
    METHODS,
    MIN_REFINE_CELL_VOXELS,
    REFINE_MIN_GAIN,
    REFINE_SPACING,
    BlockStage,
    GlobalStage,
    Schedule,
    check_schedule_levels,
    default_global_level,
    matching_level,
    resolve_level,
)


def _pyramid(shape: tuple[int, ...] = (160, 192, 176), spacing: float = 1.0,
             levels: int = 4) -> list[ImageGeometry]:
    """Level geometries of a 2x pyramid (spacing in micrometres)."""
    out = []
    for k in range(levels):
        f = 2**k
        out.append(ImageGeometry(tuple(max(1, s // f) for s in shape), (spacing * f,) * 3,
                                 (0.0,) * 3, unit="micrometer"))
    return out


def _schedule() -> Schedule:
    return Schedule(
        GlobalStage(level="8um", kinds=("rigid", "affine"), metric="correlation", iterations=50),
        [
            BlockStage(level=2, block_size=(32, 48, 64), overlap=0.25, method="affine",
                       method_options={"iterations": 10}, field_spacing_factor=2.0),
            BlockStage(level="1um", block_size=64, overlap=0.5, method="bspline",
                       method_options={"mesh_size": [3, 4, 5], "bending": 0.1}),
            BlockStage(level=0, method_options={"min_gain": 0.05},
                       when_similarity="intensity"),
        ],
    )


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml", ".json"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    sched = _schedule()
    path = tmp_path / f"schedule{suffix}"
    sched.save(path)
    again = Schedule.load(path)
    assert again == sched
    assert again.to_dict() == sched.to_dict()
    assert again.stages[0].block_size == (32, 48, 64)  # tuples survive the file format
    assert again.global_stage is not None and again.global_stage.kinds == ("rigid", "affine")
    assert [st.when_similarity for st in again.stages][-2:] == [None, "intensity"]


def test_no_global_stage_round_trips(tmp_path: Path) -> None:
    sched = Schedule(None, [BlockStage(level=0)])
    assert "global" not in sched.to_dict()
    sched.save(tmp_path / "s.toml")
    assert Schedule.load(tmp_path / "s.toml").global_stage is None
    assert Schedule.from_dict({"global": False, "stages": []}).global_stage is None


def test_written_files_read_by_hand(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        '[global]\nlevel = "4um"\n\n[[stages]]\nlevel = 1\nblock_size = 48\n'
        'method = "translation"\n'
    )
    sched = Schedule.load(tmp_path / "s.toml")
    assert sched.global_stage == GlobalStage(level="4um")
    assert sched.stages == [BlockStage(level=1, block_size=48, method="translation")]
    (tmp_path / "s.yaml").write_text("stages:\n  - level: 0um\n    overlap: 0.0\n")
    assert Schedule.load(tmp_path / "s.yaml").stages[0].overlap == 0.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("[[stages]]\nblock = 3\n", "unknown key"),
        ("[[stages]]\nmethod = 'magic'\n", "magic"),
        ("[[stages]]\noverlap = 2.5\n", "overlap"),
        ("[global]\ninitializer = 'guess'\n", "initializer"),
        ("[global]\nkinds = ['bspline']\n", "kind"),
        ("stages = 3\n", "invalid schedule"),
        ("not toml at all [", "cannot parse"),
    ],
)
def test_bad_files_raise_schedule_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScheduleError, match=match):
        Schedule.load(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="cannot read"):
        Schedule.load(tmp_path / "missing.toml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ScheduleError, match="mapping"):
        Schedule.load(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "spec, expected",
    [(0, 0), (3, 3), ("2", 2), (" 1 ", 1), ("4um", 2), ("4.0", 2), (4.0, 2), ("4.0 um", 2),
     ("0.004mm", 2), ("4000nm", 2), ("1µm", 0), ("7.5", 3), (100.0, 3), (0.1, 0)],
)
def test_level_specs(spec: object, expected: int) -> None:
    levels = _pyramid()  # spacings 1, 2, 4, 8 µm
    assert resolve_level(levels, spec) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (4, LevelNotFoundError, "no level 4"),
        ("9", LevelNotFoundError, "no level 9"),
        (True, ScheduleError, "not valid"),
        ("fast", ScheduleError, "neither an index nor a spacing"),
        ("4parsec", ScheduleError, "unknown unit suffix"),
        ("-2um", ScheduleError, "positive"),
        (0.0, ScheduleError, "positive"),
    ],
)
def test_bad_level_specs(spec: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_level(_pyramid(), spec, what="fixed image x")  # type: ignore[arg-type]


def test_matching_level_prefers_the_finest_level_not_coarser_than_needed() -> None:
    moving = _pyramid(spacing=1.5)  # 1.5, 3, 6, 12 µm
    assert matching_level(moving, (2.0, 2.0, 2.0)) == 0  # 1.5 <= 2 beats 3 > 2.1
    assert matching_level(moving, (3.0, 3.0, 3.0)) == 1
    assert matching_level(moving, (100.0,)) == 3
    assert matching_level(moving, (0.1,)) == 0


def test_default_schedule_adapts_to_the_pyramid() -> None:
    levels = _pyramid(levels=4)
    sched = Schedule.default(levels)
    assert sched.global_stage is not None
    g = sched.global_stage.level
    assert g == default_global_level(levels, 48) == 1  # level 2 has an axis under 48
    assert sched.global_stage.method == "gauss-newton"
    # control points at fixed fractions of the largest extent (191 µm)
    # the last stage is the gated refinement (run_with the intensity model only)
    assert [s.when_similarity for s in sched.stages] == [None, None, "intensity"]
    cps = [s.method_options["control_point_spacing"] for s in sched.stages]
    assert cps == pytest.approx([f * 191.0 for f in CONTROL_FRACTIONS]
                                + [CONTROL_FRACTIONS[-1] * 191.0 * REFINE_SPACING])
    assert [s.level for s in sched.stages] == [0, 0, 0]  # 13 µm cells: 8 voxels need level 0
    deep = Schedule.default(_pyramid(shape=(400, 400, 400), levels=4))
    assert deep.global_stage is not None and deep.global_stage.level == 3
    assert [s.level for s in deep.stages] == [1, 0, 0]
    assert all(s.method == "bspline" for s in deep.stages)
    assert isinstance(deep.stages[0].make_method(), BSplineGaussNewton)
    # the finest stage's field keeps a fifth of its control spacing, and the
    # refinement the same field spacing
    last = deep.stages[-2]
    assert last.field_spacing_factor == round(last.method_options["control_point_spacing"] / 5)
    assert deep.stages[-1].field_spacing_factor == last.field_spacing_factor
    fast = Schedule.default(_pyramid(shape=(400, 400, 400), levels=4), fast=True)
    assert [s.level for s in fast.stages] == [1, 0]  # no refinement stage
    for f, d in zip(fast.stages, deep.stages):
        assert len(f.method_options["shrink_factors"]) == 1
        assert f.method_options["shrink_factors"][0] > d.method_options["shrink_factors"][-1]
        assert f.method_options["iterations"] < d.method_options["iterations"]
    tiny = Schedule.default(_pyramid(shape=(20, 20, 20), levels=1))
    assert tiny.global_stage is not None and tiny.global_stage.level == 0
    # its refinement cell (0.6 voxel) would be under MIN_REFINE_CELL_VOXELS
    assert [s.level for s in tiny.stages] == [0, 0]


def test_the_refinement_stage_is_gated_and_runs_with_the_intensity_model_only() -> None:
    levels = _pyramid(shape=(400, 400, 400), levels=4)
    auto = Schedule.default(levels)
    refine, before = auto.stages[-1], auto.stages[-2]
    opts = refine.method_options
    assert refine.level == before.level
    assert opts["min_gain"] == REFINE_MIN_GAIN > 0
    assert opts["control_point_spacing"] == pytest.approx(
        REFINE_SPACING * before.method_options["control_point_spacing"], rel=1e-4)
    # as many samples per control cell as the default's stages
    stride = opts["shrink_factors"][-1]
    cps_vox = opts["control_point_spacing"] / levels[refine.level].spacing[0]
    assert cps_vox / stride == pytest.approx(4.5, rel=0.4)
    # auto: runs when the global stage chose the intensity model, not with MIND
    assert refine.when_similarity == "intensity"
    assert refine.runs_with("intensity") and not refine.runs_with("mind")
    assert not refine.runs_with(None)  # no global stage: auto fits MIND
    assert all(s.runs_with("mind") for s in auto.stages[:-1])
    assert Schedule.default(levels, similarity="intensity").stages[-1].runs_with(None)
    # an explicit MIND schedule has no such stage
    assert [s.when_similarity for s in Schedule.default(levels, similarity="mind").stages] \
        == [None, None]
    with pytest.raises(ScheduleError, match="when_similarity"):
        BlockStage(when_similarity="auto")
    # thick slices: a refinement cell under MIN_REFINE_CELL_VOXELS along z
    iso = _pyramid(shape=(200, 240, 220), spacing=1.0, levels=4)
    thick = [ImageGeometry((g.shape[0] // 4, *g.shape[1:]),  # z (last in spacing) 4x
                           (*g.spacing[:2], 4.0 * g.spacing[2]), g.origin) for g in iso]
    cps = Schedule.default(iso).stages[-1].method_options["control_point_spacing"]
    assert cps / 4.0 < MIN_REFINE_CELL_VOXELS <= cps / 1.0
    assert Schedule.default(iso).stages[-1].when_similarity == "intensity"
    assert all(st.when_similarity is None for st in Schedule.default(thick).stages)


def test_a_stage_left_out_by_the_similarity_hands_the_output_to_the_one_before() -> None:
    from ngff_dreg.pipeline import block_runners

    sched = Schedule.default(_pyramid(shape=(400, 400, 400), levels=4))
    mind = block_runners(sched, "mind")
    assert [(r.index, r.is_last) for r in mind] == [(0, False), (1, True)]
    intensity = block_runners(sched, "intensity")
    assert [(r.index, r.is_last) for r in intensity] == [(0, False), (1, False), (2, True)]


def test_default_schedule_follows_the_anatomy_not_the_sampling() -> None:
    """The same object sampled twice as finely gets the same physical schedule.

    The first stage runs on the level of the same spacing; the last runs on
    level 0 of each (where the accuracy is measured), with the same physical
    control spacing and the same physical sample stride.
    """
    coarse = Schedule.default(_pyramid(shape=(200, 240, 220), spacing=1.0, levels=4))
    fine = Schedule.default(_pyramid(shape=(400, 480, 440), spacing=0.5, levels=5))
    coarse_levels = _pyramid(shape=(200, 240, 220), spacing=1.0, levels=4)
    fine_levels = _pyramid(shape=(400, 480, 440), spacing=0.5, levels=5)
    for a, b in zip(coarse.stages, fine.stages):
        assert a.method_options["control_point_spacing"] == pytest.approx(
            b.method_options["control_point_spacing"], rel=0.01)
    first_c, first_f = coarse.stages[0], fine.stages[0]
    assert coarse_levels[first_c.level].spacing == fine_levels[first_f.level].spacing
    # the last stage, and the refinement after it (whose stride of under 2
    # voxels on the coarser image rounds to 2: 2 mm against 1.5 mm)
    for k, rel in ((-2, 0.25), (-1, 0.35)):
        last_c, last_f = coarse.stages[k], fine.stages[k]
        assert last_c.level == last_f.level == 0
        stride_c = last_c.method_options["shrink_factors"][-1] * coarse_levels[0].spacing[0]
        stride_f = last_f.method_options["shrink_factors"][-1] * fine_levels[0].spacing[0]
        assert stride_c == pytest.approx(stride_f, rel=rel)


def test_a_very_large_image_keeps_its_last_stage_off_level_0_and_its_blocks_small() -> None:
    """Level 0 while its sample stride is at most MAX_FINEST_STRIDE voxels; beyond that the
    coarsest level that still skips that many, so the blocks stay 128 voxels and few enough
    for the engine not to coarsen them (memory set by the block, not the image)."""
    from ngff_dreg.engine import MAX_BLOCKS

    mid = Schedule.default(_pyramid(shape=(1024, 1024, 1024), levels=5))
    assert mid.stages[-1].level == 0
    assert mid.stages[-1].method_options["shrink_factors"][-1] <= MAX_FINEST_STRIDE
    shape = (10000, 16000, 16000)
    levels = _pyramid(shape=shape, levels=8)
    *_, last, refine = Schedule.default(levels).stages
    assert refine.level == last.level and refine.block_size == last.block_size
    stride = last.method_options["shrink_factors"][-1]
    assert last.level == 3 and MAX_FINEST_STRIDE <= stride < 2 * MAX_FINEST_STRIDE
    assert last.block_size == 128
    geom = levels[last.level]
    n_blocks = 1
    for n in geom.shape:
        n_blocks *= -(-n // last.block_size)
    assert n_blocks <= MAX_BLOCKS
    # the same physical sample stride as level 0 would have had
    cps = last.method_options["control_point_spacing"]
    assert stride * geom.spacing[0] == pytest.approx(cps / 4.5, rel=0.05)


def test_stage_methods_come_from_the_registry() -> None:
    assert METHODS == method_names() == ("translation", "rigid", "affine", "bspline",
                                         "bspline-lbfgs", "elastix")
    rigid = BlockStage(method="rigid", method_options={"iterations": 7}).make_method()
    assert isinstance(rigid, ItkLinearRegistration) and rigid.kind == "rigid"
    assert rigid.iterations == 7
    assert isinstance(BlockStage().make_method(), BSplineGaussNewton)
    assert isinstance(BlockStage(method="bspline-lbfgs").make_method(), ItkBSplineRegistration)
    with pytest.raises(ScheduleError, match="bad options for method 'bspline'"):
        BlockStage(method_options={"no_such_option": 1}).make_method()


def test_block_stage_checks_its_fields() -> None:
    assert BlockStage(block_size=[16, 32, 64]).block_size == (16, 32, 64)
    with pytest.raises(ScheduleError, match="field_spacing_factor"):
        BlockStage(field_spacing_factor=0)
    with pytest.raises(ScheduleError, match="overlap"):
        BlockStage(overlap=-0.1)


def test_schedule_levels_are_checked_before_a_run() -> None:
    levels = _pyramid()
    assert check_schedule_levels(_schedule(), levels, "fixed.zarr") == [2, 0, 0]
    bad = Schedule(None, [BlockStage(level=7)])
    with pytest.raises(LevelNotFoundError, match=r"fixed image fixed\.zarr"):
        check_schedule_levels(bad, levels, "fixed.zarr")


def test_the_default_schedule_chooses_its_similarity_and_can_be_told() -> None:
    from ngff_dreg.schedule import DEFAULT_SIMILARITY, MIND_BENDING

    levels = [ImageGeometry((96, 96, 96), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
              ImageGeometry((48, 48, 48), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5))]
    auto = Schedule.default(levels)
    assert DEFAULT_SIMILARITY == "auto"
    assert auto.global_stage is not None
    assert auto.global_stage.similarity == "auto" and auto.global_stage.initializer == "multi"
    assert {st.method_options["similarity"] for st in auto.stages} == {"auto"}
    plain = Schedule.default(levels, similarity="intensity")
    assert plain.global_stage is not None and plain.global_stage.initializer == "moments"
    assert {st.method_options["similarity"] for st in plain.stages} == {"intensity"}
    for st in Schedule.default(levels, similarity="mind").stages:
        assert st.make_method().similarity == "mind"  # type: ignore[attr-defined]
    # MIND fits weigh the bending more, the coarse stage most (MIND_BENDING)
    assert [st.method_options["mind_bending"] for st in auto.stages[:2]] == list(MIND_BENDING)
    assert min(MIND_BENDING) > auto.stages[0].method_options["bending"]
    assert MIND_BENDING[0] >= MIND_BENDING[1]
    with pytest.raises(ScheduleError, match="similarity"):
        Schedule.default(levels, similarity="mutual-information")
    with pytest.raises(ScheduleError, match="similarity"):
        GlobalStage(similarity="mi")
    with pytest.raises(ScheduleError, match="initializer"):
        GlobalStage(initializer="guess")
    bad = BlockStage(method="bspline", method_options={"similarity": "mi"})
    with pytest.raises(ScheduleError, match="similarity"):
        bad.make_method()


def test_destripe_setting_is_checked_and_round_trips(tmp_path) -> None:
    from ngff_dreg.errors import ScheduleError
    from ngff_dreg.methods import BSplineGaussNewton
    from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule

    with pytest.raises(ScheduleError, match="destripe"):
        GlobalStage(destripe="maybe")
    with pytest.raises(ValueError, match="destripe"):
        BSplineGaussNewton(destripe="maybe")
    stage = BlockStage(level=0, block_size=64, method="bspline",
                       method_options={"destripe": "off"})
    sched = Schedule(global_stage=GlobalStage(destripe="off"), stages=[stage])
    path = tmp_path / "s.toml"
    sched.save(path)
    back = Schedule.load(path)
    assert back.global_stage is not None and back.global_stage.destripe == "off"
    method = back.stages[0].make_method()
    assert isinstance(method, BSplineGaussNewton) and method.destripe == "off"
    assert GlobalStage().destripe == "auto" and BSplineGaussNewton().destripe == "auto"
