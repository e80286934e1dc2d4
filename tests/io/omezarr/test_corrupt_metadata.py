"""Corrupt metadata: opening a store and reading a block raise ngff-dreg errors only.

A small valid store (Zarr v3 / NGFF 0.5 and 0.6, Zarr v2 / NGFF 0.4) is copied
and one of its metadata files is mutated (a key deleted, a value replaced by
a wrong type, NaN, a negative or huge number, a path leaving the store, or
the file truncated, made invalid JSON or removed). Opening it and reading one
block must then either work or raise an
:class:`~ngff_dreg.errors.NgffDregError` whose message names the store.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngff_dreg.errors import NgffDregError
from ngff_dreg.geometry import Box
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor

VERSIONS = ("0.4", "0.5", "0.6")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One valid two-level 3-D store per NGFF version."""
    import numpy as np

    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    root = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(12, 12, 12)).astype(np.uint16)
    geom = ImageGeometry(shape=data.shape, spacing=(1.0, 2.0, 3.0), origin=(0.0, 1.0, 2.0),
                         unit="micrometer")
    out = {}
    for v in VERSIONS:
        url = root / f"img{v}.zarr"
        write_multiscale(str(url), data, geom, version=v, chunks=8, n_levels=2)
        out[v] = url
    return out


def _metadata_files(store: Path) -> list[str]:
    names = ("zarr.json", ".zattrs", ".zarray", ".zgroup")
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.name in names)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON document (the document itself excluded)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


_NAN = object()
VALUES = st.one_of(
    st.sampled_from([_NAN, None, True, -1, 0, 2**63, 10**30, -(10**12), 1e300, 0.5, "",
                     "x", "../x", "/etc", "s3://other/x", "a/../../b", [], {}, [1, "x"],
                     [-4, 8], [0, 0, 0], {"name": 1}, "float128", "gzip", "0.7"]),
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.text(max_size=5),
)
OPS = st.sampled_from(["delete", "replace", "replace", "replace", "truncate", "garbage",
                       "remove"])


def _mutate(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    node = doc
    for p in path[:-1]:
        node = node[p]
    if op == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def _write(target: Path, doc: Any) -> None:
    text = json.dumps(doc, default=lambda o: "__NAN__")
    target.write_text(text.replace('"__NAN__"', "NaN"))


def _open_and_read(url: str) -> None:
    image = open_multiscale(url)
    for level in range(len(image.levels)):
        reader = OMEZarrReaderConstructor(url, level=level)()
        shape = reader.shape
        reader.read_box(Box((0,) * len(shape), tuple(min(s, 5) for s in shape)))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_metadata_raises_only_ngff_dreg_errors(
    stores: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    version = data.draw(st.sampled_from(VERSIONS), label="version")
    src = stores[version]
    name = data.draw(st.sampled_from(_metadata_files(src)), label="file")
    op = data.draw(OPS, label="op")
    dst = Path(tempfile.mkdtemp(dir=tmp_path)) / "img.zarr"
    shutil.copytree(src, dst)
    try:
        _mutate_file(dst / name, op, data)
        _open_and_read(str(dst))
    except NgffDregError as exc:
        assert str(dst) in str(exc), str(exc)
    finally:
        shutil.rmtree(dst.parent, ignore_errors=True)


def _mutate_file(target: Path, op: str, data: st.DataObject) -> None:
    if op == "truncate":
        text = target.read_text()
        target.write_text(text[: data.draw(st.integers(0, max(0, len(text) - 1)))])
    elif op == "garbage":
        target.write_bytes(data.draw(st.binary(max_size=20)))
    elif op == "remove":
        target.unlink()
    else:
        doc = json.loads(target.read_text())
        paths = _paths(doc)
        if not paths:  # an empty document: give it a wrong top-level type instead
            target.write_text(json.dumps(data.draw(VALUES, label="document"),
                                         default=lambda o: None))
            return
        path = data.draw(st.sampled_from(paths), label="key")
        value = data.draw(VALUES, label="value")
        _write(target, _mutate(doc, path, op, value))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_unmutated_stores_open_and_read(stores: dict[str, Path], version: str) -> None:
    _open_and_read(str(stores[version]))
