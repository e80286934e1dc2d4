"""A block stage in slabs (ngff_dreg.slab_stage) against the same stage in one graph."""

from __future__ import annotations

import functools
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
        self.keys: set[str] = set()
        self.blocks: Counter[str] = Counter()
        compute = client.compute

        def counted(collections: Any, *args: Any, **kwargs: Any) -> Any:
            items = collections if isinstance(collections, (list, tuple)) else [collections]
            keys = {str(k) for c in items if hasattr(c, "__dask_graph__")
                    for k in c.__dask_graph__()}
            self.sizes.append(len(keys))
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


def test_a_stage_in_slabs_writes_the_same_fields_with_smaller_graphs(
        pair: Any, reference: Any, tmp_path: Any, dask_client: Any, ngff_config: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ref_out, ref, ref_graphs = reference
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
        wanted = {layer for t in range(s, LAYER) for layer in layouts[0].held[t] if layer < s}
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
    np.testing.assert_array_equal(result.status, ref.status)
    _same_figures(_figures(result), _figures(ref))
    for name, data in _fields(out).items():
        np.testing.assert_allclose(data, _fields(ref_out)[name], rtol=0, atol=1e-6,
                                   err_msg=name)
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
    ref_out, ref, _ = reference
    ngff_config({"stage.slab-blocks": 2 * LAYER})  # two grid layers per slab
    out = str(tmp_path / "resume.zarr")
    record = Run.record_slab

    def record_then_stop(self: Run, key: str, layout: Any, index: int, entry: Any) -> None:
        record(self, key, layout, index, entry)
        if index == 0:
            raise Interrupt

    with monkeypatch.context() as mp:
        mp.setattr(Run, "record_slab", record_then_stop)
        with pytest.raises(Interrupt):
            _run(pair, out, dask_client)
    assert output_status(out) == "incomplete"
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
    held = set(layout.held[1])
    assert held and held <= {0, 1}
    assert graphs.registered_layers() == set(range(2, LAYER)) | held
    assert graphs.registered_in(held) == LAYER * len(held)
    assert set(graphs.blocks.values()) == {1}
    assert _released(dask_client)
    np.testing.assert_array_equal(result.status, ref.status)
    _same_figures(_figures(result), _figures(ref))
    for name, data in _fields(out).items():
        np.testing.assert_allclose(data, _fields(ref_out)[name], rtol=0, atol=1e-6,
                                   err_msg=name)


def test_a_bad_slab_size_is_refused_naming_the_key(pair: Any, tmp_path: Any,
                                                   dask_client: Any, ngff_config: Any) -> None:
    ngff_config({"stage.slab-blocks": 0})
    with pytest.raises(ConfigError, match=r"ngff-dreg\.stage\.slab-blocks"):
        config.slab_blocks()
    with pytest.raises(ConfigError, match=r"ngff-dreg\.stage\.slab-blocks"):
        _run(pair, str(tmp_path / "bad.zarr"), dask_client)


@pytest.mark.parametrize("per_slab", [1, 2, 3])
def test_each_unit_is_written_once_by_the_first_slab_all_its_blocks_are_in(
        per_slab: int) -> None:
    from ngff_dreg.blocks import grid_slabs, plan_blocks
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.reduce import ReduceToDisplacementField
    from ngff_dreg.reduce.graph import reduction_plan
    from ngff_dreg.slab_stage import slab_layout

    fixed = ImageGeometry(shape=(200, 90, 70), spacing=(1.0, 1.0, 2.0), origin=(0.0,) * 3)
    plans, chunks = plan_blocks(fixed.shape, (24, 40, 32), 0.5)
    grid = [len(c) for c in chunks]
    plan = reduction_plan(ReduceToDisplacementField(field_spacing_factor=2, field_chunk=16),
                          None, fixed, None, "test")
    slabs = grid_slabs(grid, per_slab * grid[1] * grid[2])
    layout = slab_layout(plan, chunks, 0.5, slabs)
    assert sorted(c for units in layout.units for c in units) == list(range(len(plan.units)))
    assert sum(1 for units in layout.units if units) > 1
    slab_of = {layer: s for s, (a, b) in enumerate(slabs) for layer in range(a, b)}
    for s, units in enumerate(layout.units):
        for c in units:
            layers = {p.info.chunk_index[0] for p in plans
                      if any(not plan.reach_box(p.padded).intersect(ch).is_empty
                             for ch in plan.units[c].chunks)}
            assert max(layers) < slabs[s][1]  # every block reaching it is done by then
            assert s == 0 or max(layers) >= slabs[s][0]  # and not one slab earlier
            earlier = {layer for layer in layers if slab_of[layer] < s}
            assert earlier <= set(layout.held[s])
            assert all(layer in layout.kept[slab_of[layer]] for layer in earlier)


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


# shards of 1 x 2 x 2 field chunks: shard rows as thin as the chunk rows
@pytest.mark.parametrize("shards", [None, (16, 32, 32)])
def test_a_3d_stage_in_slabs_writes_the_same_fields_as_in_one_graph(
        pair_3d: Any, shards: tuple[int, ...] | None, tmp_path: Any, dask_client: Any,
        ngff_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {} if shards is None else {"output_shards": shards}
    ref_out = str(tmp_path / "one.zarr")
    ref = _run_3d(pair_3d, ref_out, dask_client, monkeypatch, **kwargs)
    assert ref.status.shape == (4, 4, 4)
    ngff_config({"stage.slab-blocks": 16})  # one grid layer per slab: 4 slabs
    out = str(tmp_path / "slabs.zarr")
    layouts: list[Any] = []
    _watch_slabs(monkeypatch, tmp_path / "slabs.zarr", layouts)
    graphs = _Graphs(dask_client, monkeypatch)
    result = _run_3d(pair_3d, out, dask_client, monkeypatch, **kwargs)
    (layout,) = layouts
    assert len(layout.slabs) == 4 and sum(1 for units in layout.units if units) >= 2
    assert output_status(out) == "complete"
    _no_kept_files(tmp_path / "slabs.zarr")
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
