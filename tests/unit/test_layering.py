"""The layering the code relies on, checked rather than hoped for (issue #17, item 3).

* ``shared`` is the pure core both sides import: importing all of it loads no Flower, torch,
  Opacus, CLI, web or database framework; its source calls no file-system function and imports
  no process, socket or temp-file module.
* ``shared`` imports nothing from ``node``, ``coordinator`` or the root CLI; ``node`` and
  ``coordinator`` never import each other; the root CLI (``coordinator.cli.root``) imports
  only ``shared`` (it finds each side's commands, the node's too, through entry points at run
  time).
* The project's modules import each other without cycles.

Imports are read from the AST, *all* of them: module level, inside functions (lazy imports) and
under ``if TYPE_CHECKING``, because a lazy import is still a dependency and the usual way a
cycle or a layering breach hides. Tests and benches may import anything and are not scanned.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "node", "coordinator", "protos")
# shared/wire.py (Flower's record codec) has moved to protos/codec.py: every file of shared/ is covered.
EXCLUDED: set[str] = set()
#: The one part of ``shared`` that is not the pure core: the web pages' templates, stylesheet and
#: report page, which both web servers serve (the node's HR view, the coordinator's console), with
#: the Jinja loader that reads them from the package. Nothing on the study path imports it
#: (:func:`test_the_pure_core_does_not_import_the_web_assets`); it still imports only downwards.
WEB_ASSETS = "shared.web"


def _pure(mod: str) -> bool:
    return _top(mod) == "shared" and not (mod == WEB_ASSETS or mod.startswith(WEB_ASSETS + "."))


#: Top-level distributions that must not be loaded by importing ``shared``.
FORBIDDEN_IN_SHARED = (
    "flwr",
    "torch",
    "opacus",
    "typer",
    "rich",
    "click",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg2",
    "grpc",
    "httpx",
    "matplotlib",
    "jinja2",
    "fpdf",
    "psutil",
)
#: Calls that touch files (as ``f(...)`` or ``x.f(...)``).
IO_CALLS = {
    "open",
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "to_csv",
    "to_parquet",
    "to_json",
    "read_csv",
    "read_parquet",
    "read_json",
    "read_table",
    "mkdir",
    "makedirs",
    "unlink",
    "rmdir",
    "rmtree",
    "touch",
    "chmod",
    "iterdir",
    "glob",
    "rglob",
    "exists",
    "is_file",
    "is_dir",
    "stat",
    "savez",
    "save",
    "load",
    "loadtxt",
    "savetxt",
}
#: Stdlib modules whose only purpose is I/O or processes.
IO_MODULES = {"subprocess", "shutil", "tempfile", "socket", "sqlite3", "glob"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(*packages: str) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under ``packages`` (minus :data:`EXCLUDED`)."""
    out = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() not in EXCLUDED:
                out[_module_name(path)] = path
    return out


ALL = _sources(*PACKAGES)


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module ``name`` imports (absolute names, relative imports resolved), with line."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import submodule`` depends on the submodule; on ``pkg`` itself only for
            # names defined there (Python initialises ``pkg`` in any case, as every parent)
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in ALL]
            if len(subs) < len(node.names):
                out.append((mod, node.lineno))
            out += [(sub, node.lineno) for sub in subs]
    return out


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_importing_all_of_shared_loads_no_framework():
    """A fresh interpreter imports every module of ``shared``; none of the frameworks may load."""
    mods = sorted(m for m in ALL if _pure(m))
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))\n"
    )
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr
    loaded = set(json.loads(cp.stdout.strip().splitlines()[-1]))
    assert len(mods) > 40  # the walk found shared/ (not an empty folder)
    assert not loaded & set(FORBIDDEN_IN_SHARED), sorted(loaded & set(FORBIDDEN_IN_SHARED))
    assert not loaded & {"node", "coordinator"}


def test_shared_source_does_no_io():
    found = []
    for name, path in ALL.items():
        if not _pure(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if called in IO_CALLS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {called}()")
        for mod, line in _imports(name, path):
            if _top(mod) in IO_MODULES:
                found.append(f"{path.relative_to(ROOT)}:{line} import {mod}")
    assert not found, "I/O in shared/:\n" + "\n".join(found)


def test_the_pure_core_does_not_import_the_web_assets():
    found = [
        f"{path.relative_to(ROOT)}:{line} import {mod}"
        for name, path in ALL.items()
        if _pure(name)
        for mod, line in _imports(name, path)
        if not _pure(mod) and _top(mod) == "shared"
    ]
    assert not found, found
    assert any(not _pure(m) for m in ALL)  # the web package is there and was scanned


#: package -> project packages it must not import
FORBIDDEN_EDGES = {
    "shared": {"node", "coordinator"},
    "protos": {"node", "coordinator"},
    "node": {"coordinator"},
    "coordinator": {"node"},
}


def test_layers_import_only_downwards():
    breaches = [
        f"{path.relative_to(ROOT)}:{line} imports {mod}"
        for name, path in ALL.items()
        for mod, line in _imports(name, path)
        if _top(mod) in FORBIDDEN_EDGES[_top(name)]
    ]
    assert not breaches, "\n".join(breaches)


def test_the_root_cli_imports_only_shared():
    """``rehealth node …`` runs the root from coordinator/cli/root.py: it must pull in no other
    coordinator (or node) module, only ``shared`` and the CLI framework."""
    name = "coordinator.cli.root"
    project = [m for m, _ in _imports(name, ALL[name]) if _top(m) in PACKAGES]
    assert project and all(_top(m) == "shared" for m in project), project


def _graph() -> dict[str, set[str]]:
    return {
        name: {m for m, _ in _imports(name, path) if m in ALL and m != name} for name, path in ALL.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = iter(range(10**9))

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """Module-level graph over every import in the AST (lazy ones included); edges go to the
    module named (and to ``pkg.sub`` for ``from pkg import sub``), not to the parent packages
    that Python also initialises, so a package ``__init__`` re-exporting its submodules is not
    a cycle."""
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_the_scans_see_a_breach(tmp_path):
    """The AST readers catch what they are meant to: a lazy import, a relative import, a call."""
    src = tmp_path / "m.py"
    src.write_text(
        "def f():\n    from coordinator.files import load_spec\n"
        "    from . import sibling\n    return open('x').read()\n"
    )
    assert ("coordinator.files", 2) in _imports("shared.pkg.m", src)
    assert ("shared.pkg", 3) in _imports("shared.pkg.m", src)
