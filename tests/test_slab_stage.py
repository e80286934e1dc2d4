"""A block stage in slabs (ngff_dreg.slab_stage) against the same stage in one graph."""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ngff_dreg import block_stage, config, engine, slab_stage
from ngff_dreg import run as run_module
from ngff_dreg.demo import make_demo
from ngff_dreg.errors import ConfigError
from ngff_dreg.io.omezarr.field_writer import FORWARD_NAME, INVERSE_NAME, TRANSFORMS_GROUP
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.pipeline import register
from ngff_dreg.reduce import ReduceToDisplacementField
from ngff_dreg.run import Run
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule
from ngff_dreg.slab_stage import SlabbedStage

#: blocks per grid layer below (a 512² level in 64² blocks: an 8 x 8 grid)
LAYER = 8


class Interrupt(Exception):
    pass


def _schedule() -> Schedule:
    # a field node every 2 voxels: 4 x 4 field units of 64² nodes, written by
    # slabs 3, 5 and 7 of 8 when each slab is one grid layer
    return Schedule(GlobalStage(level=1), [
        BlockStage(level=0, block_size=64, overlap=0.5, method_options={"mesh_size": 3},
                   field_spacing_factor=2)])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: Any) -> Any:
    d = tmp_path_factory.mktemp("slab_pair")
    return make_demo(d, synthetic=True, ndim=2, size=512, max_displacement_voxels=3.0, chunks=32)


class _Graphs:
    """The number of tasks of each graph the client computes, their keys, and in how many
    graphs each block task is."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.block_counts: list[int] = []  # block tasks in each graph
        self.keys: set[str] = set()
        self.blocks: Counter[str] = Counter()
        compute = client.compute

        def counted(collections: Any, *args: Any, **kwargs: Any) -> Any:
            items = collections if isinstance(collections, (list, tuple)) else [collections]
            keys = {str(k) for c in items if hasattr(c, "__dask_graph__")
                    for k in c.__dask_graph__()}
            self.sizes.append(len(keys))
            self.block_counts.append(sum(1 for k in keys if k.startswith("register-block-")))
            self.keys.update(keys)
            self.blocks.update(k for k in keys if k.startswith("register-block-"))
            return compute(collections, *args, **kwargs)

        monkeypatch.setattr(client, "compute", counted)

    def registered_layers(self) -> set[int]:
        """The grid layers of the block tasks computed."""
        return {int(k.split("-")[2]) for k in self.blocks}

    def registered_in(self, layers: set[int]) -> int:
        """How many block tasks of grid layers ``layers`` were computed."""
        return sum(1 for k in self.blocks if int(k.split("-")[2]) in layers)


def _scheduler_samples(dask_scheduler: Any) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("sample-")]


def _sample_layers(client: Any, expected: set[int]) -> set[int]:
    """The grid layers of the block samples the cluster holds, once they are ``expected``
    (waiting a few seconds for releases to arrive)."""
    deadline = time.monotonic() + 10
    while True:
        layers = {int(k.rsplit("-", 1)[1]) // LAYER
                  for k in client.run_on_scheduler(_scheduler_samples)}
        if layers == expected or time.monotonic() > deadline:
            return layers
        time.sleep(0.1)


def _released(client: Any) -> bool:
    """Whether the cluster has forgotten every block sample (within a few seconds)."""
    return not _sample_layers(client, set())


def _no_kept_files(out: Path) -> None:
    """No pickle anywhere in the output, nothing where the kept samples used to go."""
    assert not list(out.rglob("*.pkl"))
    assert not (out / "checkpoints" / "slabs").exists()


def _watch_slabs(monkeypatch: pytest.MonkeyPatch, out: Path, layouts: list[Any]) -> None:
    """Check the output after each recorded slab; collect the stage's slab layouts."""
    record, layout = Run.record_slab, slab_stage.slab_layout

    def recorded(self: Run, *args: Any, **kwargs: Any) -> None:
        record(self, *args, **kwargs)
        _no_kept_files(out)

    def laid_out(*args: Any, **kwargs: Any) -> Any:
        layouts.append(layout(*args, **kwargs))
        return layouts[-1]

    monkeypatch.setattr(Run, "record_slab", recorded)
    monkeypatch.setattr(slab_stage, "slab_layout", laid_out)


def _run(pair: Any, out: str, client: Any, **kwargs: Any) -> Any:
    return register(pair.fixed, pair.moving, out, schedule=_schedule(), client=client,
                    progress=False, **kwargs)


def _fields(out: str) -> dict[str, np.ndarray]:
    root = zarr.open_group(out, mode="r")
    return {name: np.asarray(root[f"{TRANSFORMS_GROUP}/{name}/s0"][...])
            for name in (FORWARD_NAME, INVERSE_NAME)} | {
        "jacobian": np.asarray(root["quality/jacobian"][...])}


@pytest.fixture(scope="module")
def reference(pair: Any, tmp_path_factory: Any, dask_client: Any) -> Any:
    out = str(tmp_path_factory.mktemp("slab_ref") / "out.zarr")
    with pytest.MonkeyPatch.context() as mp:
        graphs = _Graphs(dask_client, mp)
        result = _run(pair, out, dask_client)
    assert result.status.shape == (LAYER, LAYER)
    return out, result, graphs


def _figures(result: Any) -> dict[str, Any]:
    report = dict(result.levels[-1].report)
    report.pop("io", None)
    return report


def _same_figures(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float):
            assert np.isclose(value, b[key], rtol=1e-6, atol=1e-9), (key, value, b[key])
        else:
            assert value == b[key], key


def _interrupted(pair: Any, out: str, client: Any, monkeypatch: pytest.MonkeyPatch,
                 stop_at: int) -> None:
    """Run into ``out`` and stop it right after slab record ``stop_at`` is written."""
    record = Run.record_slab

    def record_then_stop(self: Run, key: str, layout: Any, index: int, entry: Any) -> None:
        record(self, key, layout, index, entry)
        if index == stop_at:
            raise Interrupt

    with monkeypatch.context() as mp:
        mp.setattr(Run, "record_slab", record_then_stop)
        with pytest.raises(Interrupt):
            _run(pair, out, client)
    assert output_status(out) == "incomplete"


def _same_as_reference(result: Any, out: str, reference: Any) -> None:
    """The run's status grid, report figures and fields are the one-graph run's."""
    ref_out, ref, _ = reference
    np.testing.assert_array_equal(result.status, ref.status)
    _same_figures(_figures(result), _figures(ref))
    for name, data in _fields(out).items():
        np.testing.assert_allclose(data, _fields(ref_out)[name], rtol=0, atol=1e-6,
                                   err_msg=name)


def test_a_stage_in_slabs_writes_the_same_fields_with_smaller_graphs(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ref_graphs = reference[2]
    ngff_config({"stage.slab-blocks": LAYER})  # one grid layer per slab
    # the whole grid would be coarsened at this size; a stage in slabs never is
    monkeypatch.setattr(engine, "MAX_BLOCKS", LAYER)
    forwards: list[int] = []
    layouts: list[Any] = []
    held: list[set[int]] = []  # the layers whose samples the cluster holds before each slab
    original = SlabbedStage._forward

    def forward(self: SlabbedStage, *args: Any, **kwargs: Any) -> Any:
        s = args[2]
        forwards.append(s)
        # just the earlier layers a slab from this one on needs (slab s is layer s)
        wanted = {piece[0] for t in range(s, LAYER) for piece in layouts[0].held[t]
                  if piece[0] < s}
        held.append(_sample_layers(dask_client, wanted))
        assert held[-1] == wanted, (s, held[-1], wanted)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SlabbedStage, "_forward", forward)
    graphs = _Graphs(dask_client, monkeypatch)
    out = str(tmp_path / "slabs.zarr")
    _watch_slabs(monkeypatch, tmp_path / "slabs.zarr", layouts)
    with caplog.at_level(logging.INFO, logger="ngff_dreg"):
        result = _run(pair, out, dask_client)
    assert forwards == list(range(LAYER))
    assert not [r for r in caplog.records if "coarsened" in r.getMessage()]
    assert output_status(out) == "complete"
    _same_as_reference(result, out, reference)
    assert max(graphs.sizes) < max(ref_graphs.sizes)
    assert graphs.registered_layers() == set(range(LAYER))
    # every block registered once: later slabs get the kept samples as futures
    assert len(graphs.blocks) == LAYER * LAYER and set(graphs.blocks.values()) == {1}
    assert len(layouts) == 1 and any(layouts[0].kept)
    assert any(held)
    assert not [r for r in caplog.records if "again" in r.getMessage()]
    _no_kept_files(tmp_path / "slabs.zarr")
    assert _released(dask_client)  # and the kept samples' futures are released


def test_an_interrupted_stage_resumes_after_its_last_finished_slab(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ngff_config({"stage.slab-blocks": 2 * LAYER})  # two grid layers per slab
    out = str(tmp_path / "resume.zarr")
    _interrupted(pair, out, dask_client, monkeypatch, 0)
    _no_kept_files(tmp_path / "resume.zarr")
    graphs = _Graphs(dask_client, monkeypatch)
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "resume.zarr", layouts)
    result = _run(pair, out, dask_client)
    assert output_status(out) == "complete"
    _no_kept_files(tmp_path / "resume.zarr")
    # slab 0 (layers 0, 1) is not registered again, but for the layers of it
    # slab 1 needs (their samples went with the interrupted run), once
    (layout,) = layouts
    assert layout.slabs.axis == 0  # pieces are layers
    held = {piece[0] for piece in layout.held[1]}
    assert held and held <= {0, 1}
    assert graphs.registered_layers() == set(range(2, LAYER)) | held
    assert graphs.registered_in(held) == LAYER * len(held)
    assert set(graphs.blocks.values()) == {1}
    assert _released(dask_client)
    _same_as_reference(result, out, reference)


def test_a_grid_layer_too_large_for_a_slab_runs_in_rows_with_the_same_fields(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ngff_config({"stage.slab-blocks": 3})  # under a layer's 8: rows 0-2, 3-5, 6-7 of each
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "rows.zarr", layouts)
    graphs = _Graphs(dask_client, monkeypatch)
    out = str(tmp_path / "rows.zarr")
    result = _run(pair, out, dask_client)
    (layout,) = layouts
    assert layout.slabs.axis == 1 and len(layout.slabs) == 3 * LAYER
    assert output_status(out) == "complete"
    # no graph holds more than a slab's blocks; every block registered once
    assert max(graphs.block_counts) <= 3
    assert len(graphs.blocks) == LAYER * LAYER and set(graphs.blocks.values()) == {1}
    assert any(layout.kept) and _released(dask_client)
    _no_kept_files(tmp_path / "rows.zarr")
    _same_as_reference(result, out, reference)


def test_a_stage_in_rows_resumes_registering_only_the_pieces_it_reaches_back_into(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ngff_config({"stage.slab-blocks": 4})  # rows 0-3 and 4-7 of each layer: 16 slabs
    out = str(tmp_path / "resume_rows.zarr")
    stop_after = 6  # layer 3, rows 0-3
    _interrupted(pair, out, dask_client, monkeypatch, stop_after)
    graphs = _Graphs(dask_client, monkeypatch)
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "resume_rows.zarr", layouts)
    result = _run(pair, out, dask_client)
    (layout,) = layouts
    slabs = layout.slabs
    assert slabs.axis == 1 and len(slabs) == 2 * LAYER
    # the blocks of the slabs not finished, and the earlier pieces (single blocks
    # here) that those slabs need and whose samples went with the interrupted run
    again = {p for t in range(stop_after + 1, len(slabs)) for p in layout.held[t]
             if slabs.slab_of(p) <= stop_after}
    assert again and all(len(p) == 2 for p in again)
    expected = {(layer, row) for t in range(stop_after + 1, len(slabs))
                for layer, row in itertools.product(range(LAYER), range(LAYER))
                if slabs.slab_of((layer, row)) == t} | again
    registered = {(int(k.split("-")[2]), int(k.split("-")[3])) for k in graphs.blocks}
    assert registered == expected
    assert set(graphs.blocks.values()) == {1}
    assert output_status(out) == "complete" and _released(dask_client)
    _same_as_reference(result, out, reference)


def test_a_stage_interrupted_while_inverting_resumes_at_its_first_slab_not_inverted(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ngff_config({"stage.slab-blocks": 2 * LAYER})  # 4 slabs: inverse slabs recorded as 4..7
    out = str(tmp_path / "resume_inverse.zarr")
    _interrupted(pair, out, dask_client, monkeypatch, 4 + 2)  # the third inverse slab
    graphs = _Graphs(dask_client, monkeypatch)
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "resume_inverse.zarr", layouts)
    result = _run(pair, out, dask_client)
    (layout,) = layouts
    assert not graphs.blocks  # every forward slab was recorded
    inverted = {int(k.rsplit("-", 1)[1]) for k in graphs.keys if k.startswith("invert-")}
    assert inverted == set(layout.units[3])  # only the slab not inverted before
    assert inverted
    assert output_status(out) == "complete"
    _same_as_reference(result, out, reference)


def test_a_bad_slab_size_is_refused_naming_the_key(pair: Any, tmp_path: Any,
                                                   dask_client: Any, ngff_config: Any) -> None:
    ngff_config({"stage.slab-blocks": 0})
    with pytest.raises(ConfigError, match=r"ngff-dreg\.stage\.slab-blocks"):
        config.slab_blocks()
    with pytest.raises(ConfigError, match=r"ngff-dreg\.stage\.slab-blocks"):
        _run(pair, str(tmp_path / "bad.zarr"), dask_client)


@pytest.mark.parametrize("max_blocks", [1, 3, 7, 12, 16])
def test_each_unit_is_written_once_by_the_first_slab_all_its_blocks_are_in(
        max_blocks: int) -> None:
    from ngff_dreg.blocks import GridSlabs, plan_blocks
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.reduce import ReduceToDisplacementField
    from ngff_dreg.reduce.graph import reduction_plan
    from ngff_dreg.slab_stage import slab_layout

    fixed = ImageGeometry(shape=(200, 90, 70), spacing=(1.0, 1.0, 2.0), origin=(0.0,) * 3)
    plans, chunks = plan_blocks(fixed.shape, (24, 40, 32), 0.5)
    grid = [len(c) for c in chunks]
    assert grid == [8, 2, 2]
    plan = reduction_plan(ReduceToDisplacementField(field_spacing_factor=2, field_chunk=16),
                          None, fixed, None, "test")
    slabs = GridSlabs(grid, max_blocks)
    # layers of 4 blocks: whole layers from 4 blocks a slab, rows of 2 below, single blocks
    assert slabs.axis == (0 if max_blocks >= 4 else 1 if max_blocks >= 2 else 2)
    layout = slab_layout(plan, chunks, 0.5, slabs)
    assert sorted(c for units in layout.units for c in units) == list(range(len(plan.units)))
    assert sum(1 for units in layout.units if units) > 1
    for s, units in enumerate(layout.units):
        for c in units:
            reaching = [p.info.chunk_index for p in plans
                        if any(not plan.reach_box(p.padded).intersect(ch).is_empty
                               for ch in plan.units[c].chunks)]
            last = max(slabs.slab_of(i) for i in reaching)
            assert last <= s  # every block reaching it is done by then
            assert last == s  # and not one slab earlier
            earlier = {i[:slabs.axis + 1] for i in reaching if slabs.slab_of(i) < s}
            assert earlier <= set(layout.held[s])
            assert all(piece in layout.kept[slabs.slab_of(piece)] for piece in earlier)
    # nothing kept that no later slab holds
    for t, kept in enumerate(layout.kept):
        for piece in kept:
            assert slabs.slab_of(piece) == t
            assert any(piece in held for held in layout.held[t + 1:])
            assert layout.until[piece] == max(u for u, held in enumerate(layout.held)
                                              if piece in held)


# ------------------------------------------------------------------ 3D
#: field chunk edge of the 3D runs (the default 64 would make one unit of their field)
CHUNK_3D = 16


@pytest.fixture(scope="module")
def pair_3d(tmp_path_factory: Any) -> Any:
    d = tmp_path_factory.mktemp("slab_pair3d")
    return make_demo(d, synthetic=True, ndim=3, size=64, max_displacement_voxels=2.0, chunks=16)


def _run_3d(pair: Any, out: str, client: Any, monkeypatch: pytest.MonkeyPatch,
            **kwargs: Any) -> Any:
    """A 64³ pair in a 4³ grid of 16³ blocks; a field node per voxel in 16³ chunks."""
    monkeypatch.setattr(block_stage, "ReduceToDisplacementField",
                        functools.partial(ReduceToDisplacementField, field_chunk=CHUNK_3D))
    monkeypatch.setattr(run_module, "FIELD_CHUNK", CHUNK_3D)  # what output_shards must fill
    schedule = Schedule(GlobalStage(level=1), [
        BlockStage(level=0, block_size=16, overlap=0.5, method="affine", field_spacing_factor=1)])
    return register(pair.fixed, pair.moving, out, schedule=schedule, client=client,
                    progress=False, **kwargs)


# shards of 1 x 2 x 2 field chunks: shard rows as thin as the chunk rows; slabs of
# one grid layer (16 blocks: 4 slabs) or of two rows of one layer (8 blocks: 8 slabs)
@pytest.mark.parametrize(("shards", "per_slab"),
                         [(None, 16), ((16, 32, 32), 16), ((16, 32, 32), 8)])
def test_a_3d_stage_in_slabs_writes_the_same_fields_as_in_one_graph(
        pair_3d: Any, shards: tuple[int, ...] | None, per_slab: int, tmp_path: Any,
        dask_client: Any, ngff_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {} if shards is None else {"output_shards": shards}
    ref_out = str(tmp_path / "one.zarr")
    ref = _run_3d(pair_3d, ref_out, dask_client, monkeypatch, **kwargs)
    assert ref.status.shape == (4, 4, 4)
    ngff_config({"stage.slab-blocks": per_slab})
    out = str(tmp_path / "slabs.zarr")
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "slabs.zarr", layouts)
    graphs = _Graphs(dask_client, monkeypatch)
    result = _run_3d(pair_3d, out, dask_client, monkeypatch, **kwargs)
    (layout,) = layouts
    assert len(layout.slabs) == 64 // per_slab
    assert layout.slabs.axis == (0 if per_slab == 16 else 1)
    assert sum(1 for units in layout.units if units) >= 2
    assert output_status(out) == "complete"
    _no_kept_files(tmp_path / "slabs.zarr")
    assert max(graphs.block_counts) <= per_slab
    assert len(graphs.blocks) == 4 ** 3 and set(graphs.blocks.values()) == {1}
    np.testing.assert_array_equal(result.status, ref.status)
    _same_figures(_figures(result), _figures(ref))
    root = zarr.open_group(out, mode="r")
    field = root[f"{TRANSFORMS_GROUP}/{FORWARD_NAME}/s0"]
    assert field.shape == (3, 64, 64, 64) and field.chunks == (3, 16, 16, 16)
    expected = None if shards is None else (3, *shards)
    assert (None if field.shards is None else tuple(field.shards)) == expected
    units = int(np.prod([64 // e for e in shards or (CHUNK_3D,) * 3]))
    assert sorted(c for u in layout.units for c in u) == list(range(units))
    for name, data in _fields(out).items():
        np.testing.assert_allclose(data, _fields(ref_out)[name], rtol=0, atol=1e-6,
                                   err_msg=name)
