"""Make user methods that use ``itk`` travel to dask worker processes.

A class defined in a script's or notebook's ``__main__`` is pickled *by value*
by cloudpickle, together with the globals its code uses. When that includes
``itk``, whose module object is ITK's ``LazyITKModule`` (a ``ModuleType``
subclass that cloudpickle's module rule does not match), pickling fails with
"can't pickle 'swigvarlink' object". Registering a reducer that pickles such
module objects *by reference* (re-imported on the worker) fixes this for every
pickler that consults ``copyreg`` — cloudpickle and dask.distributed included.
"""

from __future__ import annotations

import copyreg
import importlib
import sys
import types
from typing import Any

__all__ = ["register_module_reducers"]

_REGISTERED: set[type] = set()


def _import_module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _reduce_module(module: types.ModuleType) -> tuple[Any, tuple[str]]:
    return _import_module, (module.__name__,)


def register_module_reducers() -> None:
    """Pickle ``ModuleType`` subclasses (e.g. ITK's lazy module) by reference."""
    candidates = [m for m in list(sys.modules.values()) if m is not None]
    try:
        import itk

        candidates.append(itk)
    except ImportError:  # pragma: no cover - itk is a core dependency
        pass
    for module in candidates:
        t = type(module)
        if t is types.ModuleType or t in _REGISTERED or not issubclass(t, types.ModuleType):
            continue
        copyreg.pickle(t, _reduce_module)
        _REGISTERED.add(t)
