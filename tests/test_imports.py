"""The package's shape: imports point one way (collector never imports analysis), no module
imports itself through others, and everything is installed under the
one name `flagscope` (CONVENTIONS.md; issue 8)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Repository folder → installed package (pyproject.toml [tool.setuptools.package-dir]).
FOLDERS = {"collector": "flagscope.collector", "analysis": "flagscope.analysis"}
PACKAGE_ROOT = ROOT / "analysis" / "_root"  # installed as `flagscope` itself


def module_name(path: Path) -> str:
    if path.parent == PACKAGE_ROOT:
        return "flagscope" if path.stem == "__init__" else f"flagscope.{path.stem}"
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """Modules `path` imports anywhere (also inside functions and TYPE_CHECKING blocks:
    a dependency is one wherever it is written)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    return {name: {m for m in imported(path, known) if m in known} for name, path in files.items()}


def test_collector_never_imports_analysis():
    edges = graph()
    collector = [name for name in edges if name.startswith("flagscope.collector")]
    assert len(collector) > 5
    assert {
        n: sorted(m for m in edges[n] if m.startswith("flagscope.analysis"))
        for n in collector
        if any(m.startswith("flagscope.analysis") for m in edges[n])
    } == {}


def test_nothing_imports_the_repository_folders_by_their_own_names():
    """`import collector` would load a second copy of a module from the checkout."""
    bare = {}
    for folder in ("collector", "analysis", "tests", "bench", "sample_data"):
        for path in (ROOT / folder).rglob("*.py"):
            roots = {m.split(".")[0] for m in imported(path, set())}
            if roots & {"collector", "analysis"}:
                bare[str(path.relative_to(ROOT))] = sorted(roots & {"collector", "analysis"})
    assert bare == {}


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p) for folder in FOLDERS for p in (ROOT / folder).rglob("__init__.py")}
    assert set(config["packages"]) == packages
    assert config["package-dir"]["flagscope"] == PACKAGE_ROOT.relative_to(ROOT).as_posix()


def test_no_module_imports_itself_through_others():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_renderers_read_the_result_never_the_orchestration():
    edges = graph()
    renderers = [n for n in edges if n.startswith("flagscope.analysis.render.")]
    assert len(renderers) >= 5
    orchestration = {
        "flagscope.analysis.diff",
        "flagscope.analysis.cohorts",
        "flagscope.analysis.report_archive",
        "flagscope.collector.lake",
    }
    assert {
        n: sorted(edges[n] & orchestration) for n in renderers if edges[n] & orchestration
    } == {}


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_analysis_reads_the_lake_contract_not_the_otlp_code():
    """Only the CLI (which starts `serve` and `requeue`) reaches into the collector."""
    edges = graph()
    contract = (
        "flagscope.collector.lake",
        "flagscope.collector.errors",
        "flagscope.collector.config",
    )
    reaching = {
        n: sorted(
            m for m in targets if within(m, "flagscope.collector") and not within(m, *contract)
        )
        for n, targets in edges.items()
        if within(n, "flagscope.analysis") and n != "flagscope.analysis.cli"
    }
    assert {n: m for n, m in reaching.items() if m} == {}
    lake = [n for n in edges if within(n, "flagscope.collector.lake")]
    assert len(lake) >= 5
    otlp = {
        n: sorted(
            m
            for m in edges[n]
            if within(m, "flagscope.collector")
            and not within(m, *contract, "flagscope.collector.failpoints")
        )
        for n in lake
    }
    assert {n: m for n, m in otlp.items() if m} == {}


def test_the_readme_map_lists_every_module():
    """README "Working on flagscope" is the map of the tree; it must not drift from it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Working on flagscope") :]
    block = section.split("Every module, by where it lives", 1)[1].split("```")[1]
    listed, folders = set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folders[depth:] = [name] if name.endswith("/") else []
        if name.endswith(".py"):
            listed.add("".join(folders[:depth]) + name)
    actual = {
        p.relative_to(ROOT).as_posix()
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE_ROOT
    }
    assert listed == actual
