"""The house plan (docs/architecture.md) holds: layers run one way, no two modules or folders import each other,
no module is over 400 lines. Imports inside functions count; only ``if TYPE_CHECKING:`` imports are exempt."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sight"
MAX_LINES = 400

# Bottom to top. A module may import its own folder and any folder of a lower layer; folders that share a
# layer are peers and never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("sight", "errors", "config", "metrics", "console"),  # "sight": the package itself, __version__ only
    ("schemas",),
    ("storage", "engines", "client"),
    ("models",),
    ("images",),
    ("runtimes",),
    ("pipeline",),
    ("batches", "policies"),
    ("services",),
    ("api",),
    ("serve_app",),
    ("cli",),
    ("__main__",),
]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sight"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[str]:
    """Every ``sight`` module imported anywhere in ``tree`` (functions included), TYPE_CHECKING blocks aside."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.split(".")[0] == "sight")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sight":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for imported in _imports(ast.parse(path.read_text(), str(path))):
            if imported != name:
                graph[name].add(imported)
    return graph


def test_every_module_is_known_to_the_layers() -> None:
    assert {folder(m) for m in MODULES} <= set(RANK), "a new folder needs its place in LAYERS (and the docs)"


def test_layers_run_one_way() -> None:
    against = [f"{importer} imports {imported}" for importer, targets in import_graph().items()
               for imported in targets
               if folder(importer) != folder(imported) and RANK[folder(importer)] <= RANK[folder(imported)]]
    assert not against, "imports against the layer order (or between peers):\n" + "\n".join(sorted(against))


def test_no_two_modules_and_no_two_folders_import_each_other() -> None:
    graph = import_graph()
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert not pairs, f"modules importing each other: {pairs}"
    folders: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        folders[folder(a)] |= {folder(b) for b in targets if folder(b) != folder(a)}
    mutual = sorted({tuple(sorted((a, b))) for a, targets in folders.items() for b in targets
                     if a in folders.get(b, ())})
    assert not mutual, f"folders importing each other: {mutual}"


def test_the_client_imports_only_schemas_and_errors() -> None:
    graph = import_graph()
    outside = {f"{m} imports {t}" for m, targets in graph.items() if folder(m) == "client"
               for t in targets if folder(t) not in ("client", "schemas", "errors")}
    assert not outside, sorted(outside)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it where it holds two ideas"


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking_ones() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sight.api.app import x\n"
                     "def f():\n    from sight.services import open_services\n    import sight.config\n")
    assert _imports(tree) == ["sight.services", "sight.config"]


def test_ray_replicas_are_called_through_their_typed_methods_only() -> None:
    """No method name in a string: ``.remote(...)`` is sent in one place (``replicas.call``, which takes the
    replica class's own method), and nothing calls ``getattr`` with a literal name on a handle."""
    sends = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                    if isinstance(call.func, ast.Attribute) and call.func.attr == "remote":
                        sends.append(f"{name}.{node.name}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) > 1 and isinstance(node.args[0], ast.Name) and "handle" in node.args[0].id):
                sends.append(f"{name}: getattr({node.args[0].id}, ...)")
    assert sends == ["sight.runtimes.ray.replicas.call"]
