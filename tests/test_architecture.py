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
    ("answers",),
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


def _handle_like(node: ast.expr) -> bool:
    """An expression that may be a Serve handle: awaited, or named for one."""
    return isinstance(node, ast.Await) or "handle" in ast.unparse(node).lower()


class _RemoteCalls(ast.NodeVisitor):
    """Where ``.remote(...)`` is sent (by enclosing function), and every method name given as a string."""

    def __init__(self, module: str) -> None:
        self.scope = [module]
        self.sends: list[str] = []
        self.by_name: list[str] = []

    def _enter(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # noqa: N802
        self._enter(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:  # noqa: N802
        self._enter(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:  # noqa: N802
        self._enter(node, "<lambda>")

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        where = ".".join(self.scope)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "remote":
            self.sends.append(where)
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args and _handle_like(node.args[0]):
            self.by_name.append(f"{where}: getattr({ast.unparse(node.args[0])}, ...)")
        for keyword in node.keywords:
            if keyword.arg == "method_name" and isinstance(keyword.value, ast.Constant):
                self.by_name.append(f"{where}: method_name={keyword.value.value!r}")
        self.generic_visit(node)


def remote_calls(sources: dict[str, Path]) -> _RemoteCalls:
    seen = _RemoteCalls("")
    for name, path in sources.items():
        visitor = _RemoteCalls(name)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        seen.sends += visitor.sends
        seen.by_name += visitor.by_name
    return seen


def test_ray_replicas_are_called_through_their_typed_methods_only() -> None:
    """No method name in a string: ``.remote(...)`` is sent in one place (``replicas.call``, which takes the
    replica class's own method); no ``getattr`` with a literal name, no ``method_name="..."``."""
    seen = remote_calls(MODULES)
    assert seen.sends == ["sight.runtimes.ray.replicas.call"], seen.sends
    assert seen.by_name == [], seen.by_name


def test_the_remote_call_checker_sees_what_it_must(tmp_path: Path) -> None:
    code = tmp_path / "old.py"
    code.write_text("async def detect(self, handle):\n    return await self._call(lambda: handle.input_side.remote())\n"
                    "async def ask(self, runtime, method):\n    handle = getattr(await runtime.h(), method)\n"
                    "    handle.options(method_name='condense')\n")
    seen = remote_calls({"old": code})
    assert seen.sends == ["old.detect.<lambda>"]
    assert seen.by_name == ["old.ask: getattr(await runtime.h(), ...)", "old.ask: method_name='condense'"]


def test_imports_are_absolute() -> None:
    relative = [name for name, path in MODULES.items()
                for node in ast.walk(ast.parse(path.read_text(), str(path)))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == [], "relative imports would slip past the layer checks"
