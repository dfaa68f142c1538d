"""The architecture rules, enforced: import-linter contracts (pyproject.toml), short functions,
no private names imported across modules, and a README module map that matches the code."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tilesegd"
MAX_FUNCTION_LINES = 80  # code lines, docstring excluded


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def lint_imports() -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter")
    r = lint_imports()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", r.stdout), r.stdout[-500:]


def test_the_import_graph_sees_imports_inside_functions() -> None:
    """The contracts would be toothless if lazy (function-level) imports were invisible:
    ``api.run`` imports ``local`` and ``distributed`` only inside the function."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("tilesegd")
    assert graph.direct_import_exists(importer="tilesegd.api", imported="tilesegd.batch.local")
    assert graph.direct_import_exists(
        importer="tilesegd.api", imported="tilesegd.batch.distributed"
    )


def layers() -> list[str]:
    """The layers contract's package names, top-down (pyproject.toml)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split('type = "layers"')[1].split("[[")[0]
    return re.findall(r'^\s+"(\w+)",?$', block.split("layers = [")[1].split("]")[0], re.M)


def test_every_package_and_module_sits_in_a_layer() -> None:
    """A new top-level module or package must be placed in the layers contract."""
    top = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    outside = {"__init__", "__main__", "demo", "version"}
    assert top - set(layers()) - outside == set(), "add new packages to the layers contract"
    assert set(layers()) - top == set(), "the layers contract names a package that is gone"


def test_tests_mirror_the_packages() -> None:
    """Every test folder is a package of the library (tests/<package>/test_*.py)."""
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name[0] not in "._"}
    assert folders - set(layers()) == set()


def function_lengths(path: Path) -> list[tuple[int, str]]:
    """(code lines, qualified name) of every function, docstring excluded."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            first = body[0]
            has_doc = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            doc = (first.end_lineno - first.lineno + 1) if has_doc else 0
            out.append((node.end_lineno - node.lineno + 1 - doc, f"{path.name}:{node.name}"))
    return out


def test_no_function_is_longer_than_80_lines() -> None:
    long = [(n, f) for p in modules() for n, f in function_lengths(p) if n > MAX_FUNCTION_LINES]
    assert long == [], f"split these functions: {sorted(long, reverse=True)}"


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tilesegd"):
                for alias in node.names:
                    name = alias.name
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                        bad.append(f"{path.relative_to(ROOT)}: {node.module}.{name}")
    assert bad == [], "give these a public name in their home module: " + ", ".join(bad)


def readme_map() -> set[str]:
    """The files the README's module map names, as paths inside ``tilesegd/`` (its tree is
    indented two spaces per level; a name ending in ``/`` opens a package)."""
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("## Development")[1].split("```")[1]
    named, folders = set(), []
    for line in tree.splitlines():
        m = re.match(r"^( +)(\S+)(\s|$)", line)
        if not m or not (m.group(2).endswith(".py") or m.group(2).endswith("/")):
            continue
        depth = len(m.group(1)) // 2 - 1
        folders = folders[:depth]
        if m.group(2).endswith("/"):
            folders.append(m.group(2).rstrip("/"))
        else:
            named.add("/".join([*folders, m.group(2)]))
    return named


def test_the_readme_module_map_is_the_package_tree() -> None:
    """Every module is in the README's development section at its place in the tree, and
    every entry there exists."""
    named = readme_map()
    files = {p.relative_to(PACKAGE).as_posix() for p in modules()}
    files -= {f for f in files if f.endswith("/__init__.py") or f == "__main__.py"}
    assert files - named == set(), "modules missing from the README map"
    assert named - files == set(), "README map names modules that do not exist"
