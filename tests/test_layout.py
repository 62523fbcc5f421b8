"""The code's shape: imports go one way and form no cycle, modules stay small, rich and torch
stay where they belong, and only the round-state module knows how round records are stored.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dgaal_core", "export", "cli")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (each ``from X import y`` also as ``X.y`` when that
    is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_not_even_a_lazy_or_type_only_one() -> None:
    assert _cycles() == []


def test_imports_go_one_way_cli_export_core() -> None:
    for name, deps in GRAPH.items():
        if name.startswith("dgaal_core"):
            assert not {d for d in deps if d.startswith(("export", "cli"))}, name
        if name.startswith("export"):
            assert not {d for d in deps if d.startswith("cli")}, name


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_draws_nothing(name: str) -> None:
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
    used = _third_party(path)
    if not name.startswith("cli"):  # the core reports progress through callbacks
        assert "rich" not in used and "typer" not in used, name
    if name.startswith("dgaal_core"):
        assert "onnxruntime" not in used, name


def test_only_the_round_state_module_knows_the_stored_round_fields() -> None:
    """Phases and record fields are read through dgaal_core.loop.state, never by string."""
    needles = (
        '"pending_round"', '"awaiting_labels"', '"phase"', '["selected"]', '.get("selected"',
        '["oracle_queries"]', '.get("oracle_queries"', '["accuracy"]', '.get("accuracy"',
    )  # fmt: skip
    for name, path in MODULES.items():
        if name == "dgaal_core.loop.state":
            continue
        text = path.read_text()
        assert not [n for n in needles if n in text], name
