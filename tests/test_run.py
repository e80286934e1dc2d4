"""A run's options and inputs: storage options, the initial transform converted once."""

from __future__ import annotations

from dataclasses import fields

import itk
import numpy as np
import pytest

from ngff_dreg.errors import ScheduleError
from ngff_dreg.run import RunOptions, as_initial_transform
from ngff_dreg.transforms import AffineTransform, TransformChain


def test_options_mirror_register_keywords() -> None:
    import inspect

    from ngff_dreg.pipeline import register

    keywords = [p.name for p in inspect.signature(register).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == [f.name for f in fields(RunOptions)]
    for f in fields(RunOptions):
        assert inspect.signature(register).parameters[f.name].default == f.default


def test_storage_options_per_url() -> None:
    opts = RunOptions(storage_options={"anon": True, "a": 1}, fixed_storage_options={"a": 2})
    assert opts.storage(opts.fixed_storage_options) == {"anon": True, "a": 2}
    assert opts.storage(None) == {"anon": True, "a": 1}
    assert RunOptions().storage(None) is None


def test_initial_transform_forms() -> None:
    h = np.eye(4)
    h[:3, 3] = [1.0, 2.0, 3.0]
    a = as_initial_transform(h, 3, None)
    assert isinstance(a, AffineTransform) and a.t.tolist() == [1.0, 2.0, 3.0]
    assert as_initial_transform(h[:3], 3, None) == a
    tx = itk.TranslationTransform[itk.D, 3].New()
    tx.SetOffset([1.0, 2.0, 3.0])
    assert as_initial_transform(tx, 3, None) == a
    chain = TransformChain.identity(3)
    assert as_initial_transform(chain, 3, None) is chain
    assert as_initial_transform(None, 3, None) is None
    with pytest.raises(ScheduleError, match="4x4"):
        as_initial_transform(np.eye(2), 3, None)
