"""The one registry of block methods (schedule names, make_method, CLI help)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ngff_dreg import methods
from ngff_dreg.interfaces import BlockPairRegistrationMethod


def test_registry_builds_every_method() -> None:
    assert methods.method_names() == ("translation", "rigid", "affine", "bspline",
                                      "bspline-lbfgs", "elastix")
    for name, spec in methods.METHODS.items():
        assert spec.name == name and spec.summary
        cls = spec.cls()
        assert issubclass(cls, BlockPairRegistrationMethod)
    affine = methods.make_method("affine", {"iterations": 3})
    assert isinstance(affine, methods.ItkLinearRegistration)
    assert (affine.kind, affine.iterations) == ("affine", 3)
    assert isinstance(methods.make_method("translation"), methods.PhaseCorrelationTranslation)
    with pytest.raises(KeyError):
        methods.make_method("magic")
    with pytest.raises(TypeError):
        methods.make_method("bspline", {"not_an_option": 1})
    with pytest.raises(AttributeError, match="no attribute"):
        _ = methods.NoSuchMethod  # type: ignore[attr-defined]


def test_reading_the_registry_imports_no_method_module() -> None:
    code = (
        "import sys, ngff_dreg.methods as m; m.method_names(); "
        "print(any(k.startswith('ngff_dreg.methods.') for k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_lists_the_registered_methods() -> None:
    from click.testing import CliRunner

    from ngff_dreg.cli import app

    res = CliRunner().invoke(app, ["register", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    # click may wrap the help after a hyphen ("bspline-" / "lbfgs")
    text = " ".join(res.output.split()).replace("- ", "-")
    assert "translation, rigid, affine, bspline, bspline-lbfgs or elastix" in text
