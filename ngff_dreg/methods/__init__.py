"""Block-pair registration methods (itk-dreg ``BlockPairRegistrationMethod`` plug-ins).

Every method is a small picklable dataclass with plain parameters; all ITK
objects are built inside ``__call__``. Each returns a transform that acts on
fixed points *before* the initial transform, valid over the padded fixed block.

:data:`METHODS` is the one registry of the methods a schedule names: the
schedule validates names against it, :func:`make_method` builds them and the
CLI's ``--method`` help lists them. The method classes load on first use, so
reading the registry imports no method module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ngff_dreg.interfaces import BlockPairRegistrationMethod
    from ngff_dreg.methods.bspline import ItkBSplineRegistration
    from ngff_dreg.methods.bspline_gn import BSplineGaussNewton
    from ngff_dreg.methods.elastix import ElastixBlockRegistration, ElastixNotAvailableError
    from ngff_dreg.methods.itk_linear import ItkLinearRegistration
    from ngff_dreg.methods.translation import (
        PhaseCorrelationTranslation,
        phase_correlation_shift,
    )

__all__ = [
    "METHODS",
    "BSplineGaussNewton",
    "ElastixBlockRegistration",
    "ElastixNotAvailableError",
    "ItkBSplineRegistration",
    "ItkLinearRegistration",
    "MethodSpec",
    "PhaseCorrelationTranslation",
    "make_method",
    "method_names",
    "phase_correlation_shift",
]


@dataclass(frozen=True)
class MethodSpec:
    """One registered block method.

    Attributes
    ----------
    name:
        The name a schedule (``BlockStage.method``) and ``--method`` use.
    target:
        ``"module:Class"`` of the method class.
    summary:
        One line for help texts.
    fixed_options:
        Keyword arguments the name implies (``kind="rigid"``...).

    """

    name: str
    target: str
    summary: str
    fixed_options: Mapping[str, Any] = field(default_factory=dict)

    def cls(self) -> type[BlockPairRegistrationMethod]:
        """The method class (its module is imported now)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def build(self, options: Mapping[str, Any] | None = None) -> BlockPairRegistrationMethod:
        """The method with ``options`` (raises ``TypeError`` for unknown options)."""
        return self.cls()(**self.fixed_options, **dict(options or {}))


_SPECS = (
    MethodSpec(
        "translation",
        "ngff_dreg.methods.translation:PhaseCorrelationTranslation",
        "FFT phase-correlation translation per block (fast, coarse levels)",
    ),
    MethodSpec(
        "rigid",
        "ngff_dreg.methods.itk_linear:ItkLinearRegistration",
        "ITK v4 rigid (Euler) registration per block",
        {"kind": "rigid"},
    ),
    MethodSpec(
        "affine",
        "ngff_dreg.methods.itk_linear:ItkLinearRegistration",
        "ITK v4 affine registration per block",
        {"kind": "affine"},
    ),
    MethodSpec(
        "bspline",
        "ngff_dreg.methods.bspline_gn:BSplineGaussNewton",
        "cubic B-spline per block fitted by Gauss-Newton (the default)",
    ),
    MethodSpec(
        "bspline-lbfgs",
        "ngff_dreg.methods.bspline:ItkBSplineRegistration",
        "cubic B-spline per block: L-BFGS on sampled NCC, or ITK v4 (Mattes MI)",
    ),
    MethodSpec(
        "elastix",
        "ngff_dreg.methods.elastix:ElastixBlockRegistration",
        "elastix B-spline per block (needs the itk-elastix extra)",
    ),
)

#: The registered block methods by name, in the order help texts list them.
METHODS: Mapping[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def method_names() -> tuple[str, ...]:
    """Names of the registered methods."""
    return tuple(METHODS)


def make_method(
    name: str, options: Mapping[str, Any] | None = None
) -> BlockPairRegistrationMethod:
    """Build the registered method ``name`` with ``options``.

    Raises
    ------
    KeyError
        ``name`` is not registered.
    TypeError
        ``options`` holds a keyword the method does not take.

    """
    return METHODS[name].build(options)


_LAZY = {
    "BSplineGaussNewton": "ngff_dreg.methods.bspline_gn",
    "ElastixBlockRegistration": "ngff_dreg.methods.elastix",
    "ElastixNotAvailableError": "ngff_dreg.methods.elastix",
    "ItkBSplineRegistration": "ngff_dreg.methods.bspline",
    "ItkLinearRegistration": "ngff_dreg.methods.itk_linear",
    "PhaseCorrelationTranslation": "ngff_dreg.methods.translation",
    "phase_correlation_shift": "ngff_dreg.methods.translation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ngff_dreg.methods' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
