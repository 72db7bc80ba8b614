"""The code's layout: which package may import which, no import cycles, one owner of the `workers` table.

Read from the source with `ast`, so nothing is imported. An import counts as an edge to every module of the
project it names: `import a.b`, `from a import b` (a.b when that is a module, else a), relative imports too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producer", "worker", "shared", "voicefarm")
MAX_SHARED_MODULES = 20


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (migrations are scripts alembic loads by path)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.relative_to(ROOT).parts:
                found[_name(path)] = path
    return found


def _named(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The project's modules an import statement names."""
    known = modules()
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in known)
        return
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])])
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            yield f"{base}.{alias.name}"
        elif base in known:
            yield base


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """What a module imports: at module level (under `if TYPE_CHECKING:`, try and class bodies too), or anywhere,
    function bodies included."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(_named(node, module, path.name == "__init__.py"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_level_import_cycle() -> None:
    graph = {module: _imports(module, top_level_only=True) for module in modules()}
    assert _cycles(graph) == []


def test_packages_import_only_downwards() -> None:
    """shared imports none of the others; producer (the API) and worker never import each other."""
    refused = {"shared": {"producer", "worker", "voicefarm"}, "producer": {"worker"}, "worker": {"producer"}}
    wrong = []
    for module in modules():
        top = module.split(".")[0]
        for imported in _imports(module, top_level_only=False):
            if imported.split(".")[0] in refused.get(top, set()):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_shared_keeps_few_top_level_modules() -> None:
    top_level = [p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py"]
    assert len(top_level) <= MAX_SHARED_MODULES, sorted(top_level)


def test_only_the_fleet_touches_the_workers_table() -> None:
    """shared/engines/fleet.py is the one owner of the `workers` table: everything else asks it."""
    owners = {"shared.models", "shared.engines.fleet"}
    users = []
    for module, path in modules().items():
        if module in owners:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "shared.models":
                if any(alias.name == "Worker" for alias in node.names):
                    users.append(module)
            elif isinstance(node, ast.Attribute) and node.attr == "Worker" and ast.unparse(node.value) == "models":
                users.append(module)
    assert users == []
