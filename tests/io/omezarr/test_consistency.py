"""A level array replaced between planning and reading is a clear error, not a wrong field."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ngff_dreg.errors import StoreChangedError
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor


def _write(url: Path, shape: tuple[int, ...], dtype: Any, chunks: int = 8) -> np.ndarray:
    data = (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)
    geom = ImageGeometry(shape=shape, spacing=(1.0,) * 3, origin=(0.0,) * 3, unit="micrometer")
    write_multiscale(str(url), data, geom, version="0.5", chunks=chunks, n_levels=2,
                     overwrite=True)
    return data


@pytest.mark.parametrize(("shape", "dtype", "chunks", "what"), [
    ((16, 16, 20), np.uint16, 8, "shape"),
    ((16, 16, 16), np.float32, 8, "dtype"),
    ((16, 16, 16), np.uint16, 4, "chunks"),
])
def test_replaced_array_is_refused_on_the_worker(tmp_path: Path, shape: tuple[int, ...],
                                                 dtype: Any, chunks: int, what: str) -> None:
    url = tmp_path / "img.zarr"
    data = _write(url, (16, 16, 16), np.uint16)
    ctor = OMEZarrReaderConstructor(str(url), level=0)
    assert ctor.meta.info.shape == (16, 16, 16)          # planned on the client
    box = Box((0, 0, 0), (8, 8, 8))
    np.testing.assert_array_equal(ctor().read_box(box), data[:8, :8, :8])
    worker_ctor = pickle.loads(pickle.dumps(ctor))      # what a worker receives
    _write(url, shape, dtype, chunks)                   # the store changes meanwhile
    with pytest.raises(StoreChangedError, match=what) as info:
        worker_ctor().read_box(box)
    assert str(url) in str(info.value)


def test_unchanged_array_reads_after_a_pickle_round_trip(tmp_path: Path) -> None:
    url = tmp_path / "img.zarr"
    data = _write(url, (16, 16, 16), np.uint16)
    ctor = pickle.loads(pickle.dumps(OMEZarrReaderConstructor(str(url), level=0)))
    np.testing.assert_array_equal(ctor().read_box(Box((4, 4, 4), (12, 12, 12))),
                                  data[4:12, 4:12, 4:12])
