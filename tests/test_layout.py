"""The architecture's rules, checked (docs/architecture.md): one import name, layering, no cycles, small modules.

Imports are read with ``ast`` (function-level imports included), so a rule broken inside a function body
fails here as well as one at the top of a module.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "client", "privacy", "models", "simulations")
# What each package may import of dpfl (itself always): privacy and models sit at the bottom.
MAY_IMPORT = {
    "models": set(),
    "privacy": set(),
    "client": {"models", "privacy"},
    "server": {"models", "privacy"},
    "simulations": {"server", "client", "privacy", "models"},
}
MAX_LINES = 600
SKIP_DIRS = {".git", "build", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _python_files(under: Path = ROOT) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(ROOT).parts))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["dpfl", *parts])


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in _python_files(ROOT / pkg)}


def _imports(path: Path, *, skip_type_checking: bool = False) -> list[tuple[int, str]]:
    """(line, imported name) for every absolute import in the file; ``from a import b`` yields a and a.b."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; use the dpfl. name"
            module = node.module or ""
            out.append((node.lineno, module))
            out.extend((node.lineno, f"{module}.{a.name}") for a in node.names)
    return out


def test_no_bare_import_of_a_dpfl_package_anywhere() -> None:
    """From the checkout root a bare ``server`` and ``dpfl.server`` would load one file as two modules."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _python_files()
           for line, name in _imports(p) if name.split(".")[0] in PACKAGES]
    assert not bad, "\n".join(bad)


def test_module_path_strings_use_the_dpfl_name() -> None:
    """Entry points, Flower components and worker imports name modules in strings: those moved too."""
    names = "(?:server|client|privacy|models|simulations)"
    patterns = [re.compile(rf"""["']{names}(?:\.[a-z_]+)*:[a-z_]+["']"""),  # module:attribute
                re.compile(rf"""["']-m["'],\s*["']{names}\."""),  # python -m module
                re.compile(rf"""import_module\(\s*["']{names}\.""")]
    bad = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in [*_python_files(), ROOT / "pyproject.toml"]
           for n, line in enumerate(path.read_text().splitlines(), start=1) if any(p.search(line) for p in patterns)]
    assert not bad, "\n".join(bad)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    refs = [*project["project"]["scripts"].values(), *project["tool"]["flwr"]["app"]["components"].values()]
    assert all(r.startswith("dpfl.") for r in refs), refs


def test_each_package_imports_only_what_the_layering_allows() -> None:
    bad = []
    for module, path in _package_modules().items():
        pkg = module.split(".")[1]
        for line, name in _imports(path):
            parts = name.split(".")
            inside = parts[0] == "dpfl" and len(parts) > 1 and parts[1] in PACKAGES
            if inside and parts[1] != pkg and parts[1] not in MAY_IMPORT[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {name}")
    assert not bad, "\n".join(bad)


def _import_graph() -> dict[str, set[str]]:
    mods = _package_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for _, name in _imports(path, skip_type_checking=True):
            parts = name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in mods),
                          None)
            if target is None or target == module:
                continue
            if (module + ".").startswith(target + ".") and mods[target].name == "__init__.py":
                continue  # a module importing its own package's re-exports
            graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_function_level_imports_included() -> None:
    assert _cycles(_import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_the_size_limit_and_each_says_its_job() -> None:
    big, silent = [], []
    for path in _package_modules().values():
        text = path.read_text()
        if text.count("\n") + 1 > MAX_LINES:
            big.append(f"{path.relative_to(ROOT)} ({text.count(chr(10)) + 1} lines)")
        doc = ast.get_docstring(ast.parse(text))
        if text.strip() and not (doc and doc.strip().splitlines()[0].strip()):
            silent.append(str(path.relative_to(ROOT)))
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    assert not silent, f"modules without a first docstring line saying their job: {silent}"


def test_pyproject_lists_every_package_folder() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {_module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")
               if not SKIP_DIRS & set(p.relative_to(ROOT).parts)}
    assert listed == folders | {"dpfl"}


def test_the_installed_distribution_has_one_top_level_name() -> None:
    top_level = importlib.metadata.distribution("dpfl").read_text("top_level.txt")
    if top_level is None:
        pytest.skip("this install has no top_level.txt")
    assert top_level.split() == ["dpfl"]


USER_SCRIPT = """
from dpfl.simulations.config import resolve
from dpfl.simulations.engines.simulate import simulate

import client, models, privacy, server  # the user's own modules, found first on sys.path

assert models.MINE and client.MINE and server.MINE and privacy.MINE
outcome = simulate(resolve({"dataset": "digits", "model": "logreg", "num-clients": 2, "num-server-rounds": 1,
                            "batch-size": 32, "target-epsilon": 0.0, "noise-multiplier": 1.0, "workers": 1,
                            "run-dir": "runs", "run-name": "mine"}))
print("accuracy", outcome.result.final_accuracy)
"""


def test_a_users_own_models_py_does_not_shadow_dpfl(tmp_path: Path) -> None:
    """A notebook folder with its own models.py, client.py, server.py and privacy.py imports dpfl and trains."""
    for name in ("models", "client", "server", "privacy"):
        (tmp_path / f"{name}.py").write_text("MINE = True\n")
    (tmp_path / "train.py").write_text(USER_SCRIPT)
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "accuracy" in proc.stdout
    assert (tmp_path / "runs" / "mine" / "summary.json").is_file()
