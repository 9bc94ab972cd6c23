"""The project's shape: no import cycle in `gtp` or `app`, nothing imports the CLI, no file over
400 lines, a few modules directly in `app/` (the rest in packages whose names say what they
hold), and no reference to anything outside the repository."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def _files() -> list[Path]:
    """The repository's tracked and new (not ignored) files."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def _imports(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports anywhere in its text (lazy imports included)."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        base_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = base_package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = (base + (f".{node.module}" if node.module else "")) if node.level else node.module
                for alias in node.names:  # `from . import tome` depends on gtp.tome, not on gtp
                    deps.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """An import cycle of the graph ([] when there is none)."""
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str]:
        state[module] = 1  # on the current path
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return path + [module, dep]
            found = visit(dep, path + [module]) if dep not in state else []
            if found:
                return found
        state[module] = 2
        return []

    for module in sorted(graph):
        found = visit(module, []) if module not in state else []
        if found:
            return found
    return []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_and_nothing_imports_the_cli():
    for package in ("gtp", "app"):
        graph = _imports(package)
        assert graph and _cycle(graph) == [], f"import cycle in {package}: {' -> '.join(_cycle(graph))}"
    gtp_graph = _imports("gtp")
    assert {"gtp.options", "gtp.methods", "gtp.measure.evaluate", "gtp.measure.sweep"} <= set(gtp_graph)
    assert [m for m, deps in gtp_graph.items() if "gtp.cli" in deps] == ["gtp.__main__"]
    app_graph = _imports("app")   # layers: core knows no page or figure, views no page
    assert not any(d.startswith(("app.ui", "app.views")) for m, deps in app_graph.items() if m.startswith("app.core")
                   for d in deps)
    assert not any(d.startswith("app.ui") for m, deps in app_graph.items() if m.startswith("app.views") for d in deps)


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _files() if p.suffix in (".py", ".md", ".sh", ".js")
            for n in [len(p.read_text(encoding="utf-8").splitlines())] if n > MAX_LINES}
    assert long == {}, long


def test_app_has_few_modules_at_its_top_and_packages_that_say_what_they_hold():
    top = sorted(p.name for p in (ROOT / "app").glob("*.py"))
    assert len(top) <= 12, top
    assert {p.name for p in (ROOT / "app").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == \
        {"core", "views", "ui"}
    assert (ROOT / "app" / "core" / "limits.py").exists() and (ROOT / "app" / "views" / "walk.py").exists()


def test_nothing_refers_outside_the_repository():
    needle = "../" + "shared"
    found = [str(p.relative_to(ROOT)) for p in _files() if p.suffix in (".py", ".md", ".txt", ".sh", ".json", ".toml",
                                                                         ".cfg", ".yml", ".yaml", "")
             if needle in p.read_text(encoding="utf-8", errors="ignore")]
    assert found == []
    assert (ROOT / "SPEC.md").is_file()
