"""The planning-time inventory of which chunk objects of a level exist."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ngff_dreg.errors import ConfigError
from ngff_dreg.io.storage import chunk_inventory
from ngff_dreg.io.storage.chunk_inventory import (
    ChunkInventory,
    KeyScheme,
    build_inventory,
    inventory_wanted,
    key_scheme,
    storage_grid,
)
from ngff_dreg.io.storage.store_stats import take_counts
from ngff_dreg.io.storage.stores import open_group

# (zarr format, chunk key encoding, shards): every key spelling zarr writes.
LAYOUTS = {
    "v2-dot": (2, {"name": "v2", "separator": "."}, None),
    "v2-slash": (2, {"name": "v2", "separator": "/"}, None),
    "v3-default": (3, {"name": "default", "separator": "/"}, None),
    "v3-default-dot": (3, {"name": "default", "separator": "."}, None),
    "v3-v2-encoding": (3, {"name": "v2", "separator": "."}, None),
    "v3-sharded": (3, {"name": "default", "separator": "/"}, (4, 4, 8)),
}


def _array(root: Path, layout: str, shape: tuple[int, ...] = (10, 8, 16)) -> tuple[Any, set]:
    """A level array ``lvl`` in group ``root``; a few chunks written, the rest never."""
    fmt, encoding, shards = LAYOUTS[layout]
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w", zarr_format=fmt)
    arr = group.create_array("lvl", shape=shape, chunks=(2, 4, 4), shards=shards,
                             dtype="uint16", chunk_key_encoding=encoding, fill_value=0)
    arr[0:2, 0:4, 0:4] = 1      # first object
    arr[8:10, 4:8, 12:16] = 2   # last object
    arr[4:6, 0:4, 4:8] = 3
    on_disk = {str(p.relative_to(root)).replace(os.sep, "/")
               for p in root.rglob("*") if p.is_file()}
    return arr, on_disk


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_inventory_matches_the_objects_zarr_wrote(tmp_path: Path, layout: str) -> None:
    _, on_disk = _array(tmp_path, layout)
    arr = open_group(str(tmp_path))["lvl"]           # opened as the reader opens it
    take_counts()
    inv = build_inventory(arr, str(tmp_path / "lvl"))
    assert inv is not None
    assert inv.grid == storage_grid(arr)
    for coords in itertools.product(*(range(g) for g in inv.grid)):
        key = f"lvl/{arr.metadata.encode_chunk_key(coords)}"   # zarr's own spelling
        assert inv.existed(key) == (key in on_disk), key
    chunks = {k for k in on_disk if not k.endswith((".zarray", ".zattrs", "zarr.json",
                                                    ".zgroup"))}
    assert inv.present == len(chunks) >= 2
    assert not inv.existed("lvl/zarr.json") and not inv.existed("lvl/.zarray")
    counts = take_counts()[1][str(tmp_path)]
    assert counts.list_calls == 1 and counts.listed_keys == len(
        [k for k in on_disk if k.startswith("lvl/")])


def test_sharded_inventory_is_over_the_shard_grid(tmp_path: Path) -> None:
    _array(tmp_path, "v3-sharded")
    arr = open_group(str(tmp_path))["lvl"]
    assert storage_grid(arr) == (3, 2, 2)            # shards, not the (5, 2, 4) chunks
    inv = build_inventory(arr, str(tmp_path))
    assert inv is not None and inv.size == 12


def test_key_scheme_decodes_only_real_chunk_keys() -> None:
    scheme = KeyScheme("c/", "/", 3)
    assert scheme.decode("c/1/2/3") == (1, 2, 3)
    assert scheme.encode((1, 2, 3)) == "c/1/2/3"
    for bad in ("zarr.json", "c/1/2", "c/1/2/3/4", "c/01/2/3", "c/-1/2/3", "1/2/3", "c/a/2/3"):
        assert scheme.decode(bad) is None, bad
    inv = ChunkInventory("0", scheme, (2, 2, 2), b"\xff", 8)
    assert inv.existed("0/c/1/1/1")
    assert not inv.existed("0/c/2/0/0")              # off the grid
    assert not inv.existed("1/c/0/0/0")              # another array
    assert not inv.existed("00/c/0/0/0")


def test_key_scheme_follows_zarrs_encoding(tmp_path: Path) -> None:
    for layout, expected in [("v2-dot", KeyScheme("", ".", 3)),
                             ("v3-default", KeyScheme("c/", "/", 3)),
                             ("v3-default-dot", KeyScheme("c.", ".", 3))]:
        arr, _ = _array(tmp_path / layout, layout)
        assert key_scheme(arr) == expected


def test_a_million_chunk_level_costs_125_kb(tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    big = group.create_array("0", shape=(10_000, 10_000, 10_000), chunks=(100, 100, 100),
                             dtype="uint8", fill_value=0)
    big[0:100, 0:100, 0:100] = 1
    big[9_900:, 9_900:, 9_900:] = 1
    arr = open_group(str(tmp_path))["0"]
    inv = build_inventory(arr, str(tmp_path))
    assert inv is not None and inv.size == 10**6 and inv.present == 2
    assert inv.nbytes == 125_000
    assert len(pickle.dumps(inv)) < 126_000
    assert inv.existed("0/c/99/99/99") and inv.existed("0/c/0/0/0")
    assert not inv.existed("0/c/0/0/1")
    assert "bits" not in repr(inv)                   # never printed


def test_an_empty_array_has_an_empty_inventory(tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    group.create_array("0", shape=(0, 48, 48), chunks=(1, 48, 48), dtype="float32")
    inv = build_inventory(open_group(str(tmp_path))["0"], str(tmp_path))
    assert inv is not None and inv.size == 0 and inv.present == 0
    assert not inv.existed("0/c/0/0/0")


def test_too_large_a_grid_is_not_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    _array(tmp_path, "v3-default")
    arr = open_group(str(tmp_path))["lvl"]
    monkeypatch.setattr(chunk_inventory, "MAX_GRID_CHUNKS", 10)
    take_counts()
    with caplog.at_level(logging.WARNING):
        assert build_inventory(arr, str(tmp_path)) is None
    assert "not listed" in caplog.text
    counts = take_counts()[1].get(str(tmp_path))
    assert counts is None or counts.list_calls == 0


def test_a_store_that_refuses_listing_gets_no_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ngff_config: Any,
) -> None:
    _array(tmp_path, "v3-default")
    arr = open_group(str(tmp_path))["lvl"]
    calls = []

    def refuse(store: Any, prefix: str) -> list[str]:
        calls.append(prefix)
        raise PermissionError("AccessDenied: s3:ListBucket")

    monkeypatch.setattr(chunk_inventory, "_list_keys", refuse)
    ngff_config({"io.read-attempts": 2, "io.read-backoff": 0})
    with caplog.at_level(logging.WARNING):
        assert build_inventory(arr, str(tmp_path / "lvl")) is None
    assert calls == ["lvl", "lvl"]                  # retried once, like a read
    assert "cannot list the chunks" in caplog.text and "ListBucket" in caplog.text


def test_memo_lists_a_level_once_per_run(tmp_path: Path) -> None:
    _array(tmp_path, "v3-default")
    arr = open_group(str(tmp_path))["lvl"]
    take_counts()
    key = ("token-memo-test", str(tmp_path), "lvl")
    first = build_inventory(arr, str(tmp_path), memo=key)
    again = build_inventory(arr, str(tmp_path), memo=key)
    assert first is again
    assert take_counts()[1][str(tmp_path)].list_calls == 1


@pytest.mark.parametrize(("setting", "url", "wanted"), [
    (None, "/data/a.zarr", True),
    (None, "s3://bucket/a.zarr", True),
    (None, "https://host/a.zarr", False),
    ("auto", "http://host/a.zarr", False),
    (True, "https://host/a.zarr", True),
    (False, "s3://bucket/a.zarr", False),
    ("off", "/data/a.zarr", False),
])
def test_inventory_wanted_by_the_setting(ngff_config: Any, setting: str | bool | None,
                                         url: str, wanted: bool) -> None:
    if setting is not None:
        ngff_config({"io.chunk-inventory": setting})
    assert inventory_wanted(url) is wanted


def test_a_bad_inventory_setting_is_an_error_naming_it(ngff_config: Any) -> None:
    ngff_config({"io.chunk-inventory": "bogus"})
    with pytest.raises(ConfigError, match=r"ngff-dreg\.io\.chunk-inventory='bogus'"):
        inventory_wanted("/data/a.zarr")


def test_packing_sets_exactly_the_listed_bits() -> None:
    scheme = KeyScheme("c/", "/", 2)
    rng = np.random.default_rng(0)
    grid = (37, 29)
    truth = rng.random(grid) < 0.3
    keys = [f"p/{scheme.encode(c)}" for c in zip(*np.nonzero(truth))]
    keys += ["p/zarr.json", "p/c/99/0", "q/c/0/0"]   # not chunks of this grid
    inv = chunk_inventory._pack("p", scheme, grid, keys * 2)   # duplicates are harmless
    assert inv.present == int(truth.sum())
    got = np.unpackbits(np.frombuffer(inv.bits, np.uint8))[: truth.size].reshape(grid)
    np.testing.assert_array_equal(got.astype(bool), truth)
