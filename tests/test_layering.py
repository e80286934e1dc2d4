"""The package's layering rules, read from the source with ``ast`` (nothing is imported).

* zarr is imported only under ``ngff_dreg/io/``; itk only in ``itk_bridge``,
  ``methods/``, ``worker`` and ``_pickling``;
* the engine imports no block method; ``interfaces`` imports no implementation;
  the reduction's kernels import neither dask, the I/O layer nor ITK;
* no import cycles between ngff-dreg modules (imports inside functions
  count; ``if TYPE_CHECKING:`` blocks do not);
* no function is longer than 100 lines, and ``pipeline.register`` is at most 80;
* only ``ngff_dreg.config`` reads ngff-dreg settings from the environment:
  elsewhere an environment read names a literal variable that is not one of
  ours (``worker`` alone handles the malloc variables of the workers it
  spawns), and no code outside ``config`` spells an ``NGFF_DREG_`` name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ngff_dreg"

ITK_ALLOWED = ("ngff_dreg.itk_bridge", "ngff_dreg.methods", "ngff_dreg.worker",
               "ngff_dreg._pickling")
KERNELS = ("ngff_dreg.reduce.blend", "ngff_dreg.reduce.inverse", "ngff_dreg.reduce.quality")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` of every import, skipping ``if TYPE_CHECKING:`` blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used in ngff_dreg"
            yield node.module or "", [a.name for a in node.names]
        stack.extend(ast.iter_child_nodes(node))


def _imported_modules(name: str) -> set[str]:
    """Every module ``name`` imports (``from m import s`` is submodule ``m.s`` if it is one)."""
    tree = ast.parse(MODULES[name].read_text())
    out = set()
    for module, names in _imports(tree):
        subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
        out.update(subs)
        if not names or len(subs) < len(names):
            out.add(module)
    return out


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _internal_edges(name: str) -> set[str]:
    """ngff-dreg modules ``name`` depends on.

    Importing ``a.b.c`` also runs the packages ``a.b`` (their ``__init__``),
    except those ``name`` itself lives in: they are already being imported.
    """
    out = set()
    for target in _imported_modules(name):
        if _top(target) != "ngff_dreg":
            continue
        while target and target not in MODULES:  # "from m import name": the module m
            target = target.rpartition(".")[0]
        parts = target.split(".")
        for k in range(2, len(parts) + 1):
            dep = ".".join(parts[:k])
            if k == len(parts) or not name.startswith(dep + "."):
                out.add(dep)
    out.discard(name)
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_zarr_only_in_io(name: str) -> None:
    uses = {m for m in _imported_modules(name) if _top(m) == "zarr"}
    if not name.startswith("ngff_dreg.io."):
        assert not uses, f"{name} imports {sorted(uses)}: zarr belongs in ngff_dreg/io/"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_itk_only_in_the_bridge_methods_and_worker(name: str) -> None:
    uses = {m for m in _imported_modules(name) if _top(m) == "itk"}
    allowed = any(name == a or name.startswith(a + ".") for a in ITK_ALLOWED)
    if not allowed:
        assert not uses, f"{name} imports itk: build ITK objects through ngff_dreg.itk_bridge"


def test_contract_and_kernels_import_no_implementation() -> None:
    engine = _internal_edges("ngff_dreg.engine")
    assert not any(m.startswith("ngff_dreg.methods") for m in engine), engine
    assert not any(m.startswith("ngff_dreg.reduce") for m in engine), engine
    assert _internal_edges("ngff_dreg.interfaces") == set()
    for kernel in KERNELS:
        deps = _internal_edges(kernel) | {_top(m) for m in _imported_modules(kernel)}
        for banned in ("dask", "zarr", "itk", "ngff_dreg.io", "ngff_dreg.itk_bridge"):
            assert banned not in deps, f"{kernel} depends on {banned}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    graph = {name: _internal_edges(name) for name in MODULES}
    assert _cycles(graph) == []
    # the check finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _functions() -> Iterator[tuple[str, str, int]]:
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                yield name, node.name, node.end_lineno - node.lineno + 1


def test_functions_are_short() -> None:
    long = [(m, f, n) for m, f, n in _functions() if n > 100]
    assert long == [], long
    register = [n for m, f, n in _functions() if (m, f) == ("ngff_dreg.pipeline", "register")]
    assert register and register[0] <= 80, register


#: Modules that may read the environment with names that are not literals, and why.
ENV_MODULES = {
    "ngff_dreg.config": "the configuration module: the deprecated NGFF_DREG_* variables",
    "ngff_dreg.worker": "glibc's malloc variables (WORKER_MALLOC_ENV) of the workers it spawns",
}
OUR_PREFIXES = ("NGFF_DREG", "DASK_NGFF_DREG")


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _env_reads(tree: ast.AST) -> list[tuple[int, str | None]]:
    """Every use of the process environment: ``(line, variable name if a literal)``."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: list[tuple[int, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "getenv":
            out.append((node.lineno, _literal(node.args[0]) if node.args else None))
            continue
        if getattr(node, "attr", getattr(node, "id", None)) != "environ":
            continue
        parent = parents.get(node)
        call = parents.get(parent) if isinstance(parent, ast.Attribute) else None
        if isinstance(call, ast.Call):            # os.environ.get("X"), .setdefault, .pop
            out.append((node.lineno, _literal(call.args[0]) if call.args else None))
        elif isinstance(parent, ast.Subscript):   # os.environ["X"]
            out.append((node.lineno, _literal(parent.slice)))
        elif isinstance(parent, ast.Compare):     # "X" in os.environ
            out.append((node.lineno, _literal(parent.left)))
        else:                                     # the whole environment, passed along
            out.append((node.lineno, None))
    return out


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings: ``(line, text)``."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and _literal(
                body[0].value) is not None:
            docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if _literal(n) is not None and id(n) not in docstrings]


def _settings_read_outside_config(name: str, source: str) -> list[str]:
    """How module ``name`` reads ngff-dreg settings from the environment (none allowed)."""
    if name == "ngff_dreg.config":
        return []
    tree = ast.parse(source)
    bad = [f"{name}:{line}: reads the environment ({key or 'a computed name'})"
           for line, key in _env_reads(tree)
           if (key is None and name not in ENV_MODULES)
           or (key is not None and key.startswith(OUR_PREFIXES))]
    bad += [f"{name}:{line}: spells {text!r}" for line, text in _code_strings(tree)
            if "NGFF_DREG_" in text]
    return bad


def test_only_the_configuration_module_reads_settings_from_the_environment() -> None:
    bad = [msg for name, path in MODULES.items()
           for msg in _settings_read_outside_config(name, path.read_text())]
    assert bad == [], "read settings with ngff_dreg.config instead:\n" + "\n".join(bad)
    assert _env_reads(ast.parse(MODULES["ngff_dreg.config"].read_text()))  # it is found there
    # the check finds each way of reading one
    for snippet in ('import os\nx = os.environ.get("NGFF_DREG_CHUNK_CACHE_MB", "")',
                    'import os\nx = os.getenv("DASK_NGFF_DREG__IO__READ_ATTEMPTS")',
                    'from os import environ\nx = environ["NGFF_DREG_IO_TRACE"]',
                    'import os\nx = "NGFF_DREG_IO_TRACE" in os.environ',
                    'import os\nname = "IO_TRACE"\nx = os.environ.get(name)',
                    'import os\nx = dict(os.environ)',
                    'NAME = "NGFF_DREG_READ_BACKOFF"'):
        assert _settings_read_outside_config("ngff_dreg.some_module", snippet), snippet
    ok = 'import os\nos.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")'
    assert _settings_read_outside_config("ngff_dreg.some_module", ok) == []
