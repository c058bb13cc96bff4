"""Imports point one way: collector never imports analysis (CONVENTIONS.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def _imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported_modules(path)}


def test_collector_never_imports_analysis():
    paths = list((ROOT / "collector").rglob("*.py"))
    assert len(paths) > 5
    assert [p.name for p in paths if "analysis" in _imported_roots(p)] == []


def test_statistics_import_neither_duckdb_nor_the_cli():
    paths = list((ROOT / "analysis" / "stats").rglob("*.py"))
    assert len(paths) > 5  # the package is where this test looks
    for path in paths:
        modules = _imported_modules(path)
        assert "duckdb" not in {m.split(".")[0] for m in modules}, path
        assert not any(m.startswith("analysis.cli") for m in modules), path
