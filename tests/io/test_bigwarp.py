"""BigWarp's displacement-field container: the layout its Java readers expect, and the map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ngff_dreg.errors import OutputExistsError, UnsupportedFormatError
from ngff_dreg.io.bigwarp import FORWARD_DATASET, write_bigwarp_field

#: Compressor ids n5-zarr's ``ZarrCompressor`` registry reads (ZarrCompressor.java).
N5_ZARR_COMPRESSORS = {"raw", "zstd", "blosc", "zlib", "gzip", "bz2"}


def _field(shape_zyx: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(*shape_zyx, len(shape_zyx)))


def test_the_layout_is_what_n5_displacement_field_reads(tmp_path):
    vectors = _field((5, 6, 7))
    dest = write_bigwarp_field(tmp_path / "f.zarr", vectors, (0.5, 0.7, 0.9), (1.0, 2.0, 3.0),
                               np.hstack([np.eye(3), [[1.0], [2.0], [3.0]]]), chunk=4)
    assert json.loads((dest / ".zgroup").read_text()) == {"zarr_format": 2}
    assert not (dest / "zarr.json").exists()  # N5Factory would try Zarr v3 first
    meta = json.loads((dest / FORWARD_DATASET / ".zarray").read_text())
    assert FORWARD_DATASET == "dfield"  # N5DisplacementField.FORWARD_ATTR, opened by default
    assert meta["zarr_format"] == 2 and meta["order"] == "C"
    assert meta["shape"] == [5, 6, 7, 3]  # imglib2: [3, 7, 6, 5], the vector axis first
    assert meta["chunks"] == [4, 4, 4, 3]  # a block holds whole vectors
    assert meta["dtype"] == "<f4"  # FloatType, as BigWarp opens the field
    assert meta["compressor"]["id"] in N5_ZARR_COMPRESSORS
    assert meta["dimension_separator"] in (".", "/")
    attrs = json.loads((dest / FORWARD_DATASET / ".zattrs").read_text())
    assert attrs["spacing"] == [0.5, 0.7, 0.9] and attrs["offset"] == [1.0, 2.0, 3.0]
    assert len(attrs["affine"]) == 12  # AffineTransform(3).set(row-packed 3x4)
    n_chunks = len([p for p in (dest / FORWARD_DATASET).iterdir() if not p.name.startswith(".")])
    assert n_chunks == 2 * 2 * 2  # every block written, none left to a fill value


def test_zero_blocks_are_written_too(tmp_path):
    dest = write_bigwarp_field(tmp_path / "z.zarr", np.zeros((4, 4, 2)), (1.0, 1.0), (0.0, 0.0),
                               chunk=2)
    assert len([p for p in (dest / FORWARD_DATASET).iterdir()
                if not p.name.startswith(".")]) == 4


@pytest.mark.parametrize("ndim", [2, 3])
def test_bigwarps_reading_gives_back_the_field_and_affine(tmp_path, bigwarp_map, ndim):
    shape = (9, 10, 11)[-ndim:]
    vectors = _field(shape, seed=ndim)
    spacing, offset = (0.5, 0.7, 0.9)[:ndim], (1.0, -2.0, 3.0)[:ndim]
    a = np.hstack([np.eye(ndim) * 1.1, np.arange(1.0, ndim + 1.0)[:, None]])
    dest = write_bigwarp_field(tmp_path / "f.zarr", vectors, spacing, offset, a)
    idx_zyx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    idx_zyx = idx_zyx.reshape(-1, ndim)
    pts = idx_zyx[:, ::-1] * np.asarray(spacing) + np.asarray(offset)  # the nodes, x first
    want = (pts + vectors.reshape(-1, ndim)) @ a[:, :-1].T + a[:, -1]
    np.testing.assert_allclose(bigwarp_map(dest, pts), want, atol=1e-5)


def test_bad_destinations_are_refused(tmp_path):
    v, s, o = _field((3, 3, 3)), (1.0,) * 3, (0.0,) * 3
    with pytest.raises(UnsupportedFormatError, match=r"\.zarr"):
        write_bigwarp_field(tmp_path / "f.n5", v, s, o)
    with pytest.raises(UnsupportedFormatError, match="shape"):
        write_bigwarp_field(tmp_path / "f.zarr", v[..., :2], s, o)
    dest = write_bigwarp_field(tmp_path / "f.zarr", v, s, o)
    with pytest.raises(OutputExistsError, match="exists"):
        write_bigwarp_field(dest, v, s, o)
    write_bigwarp_field(dest, v * 2, s, o, overwrite=True)
    other = tmp_path / "notes.zarr"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a Zarr container"):
        write_bigwarp_field(other, v, s, o, overwrite=True)
    assert (other / "keep.txt").exists()
    assert not (Path(tmp_path) / "f.n5").exists()
