"""No import cycles among normlab's modules, counting imports inside functions.

Every module under src/normlab is parsed with ``ast``: each ``import normlab.x`` and
``from normlab.x import y`` anywhere in it (module level, functions, methods) is an edge,
except under ``if TYPE_CHECKING:`` (never executed). ``from normlab.x import y`` points at
``normlab.x`` (the module named in the from-clause, which must run to hand ``y`` over) and
also at the submodule ``normlab.x.y`` when that is one; a module that wants a sibling
without its package names it in full (``import normlab.x.y as y``). Relative imports are
resolved against the importing module's package. Importing ``normlab.x.y`` also runs
``normlab.x/__init__``, but that is not counted as an edge of the importer: a package that
re-exports its submodules would otherwise make every child import a cycle with its own
parent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import normlab

ROOT = Path(normlab.__file__).resolve().parent
PACKAGE = "normlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST, type_checking: bool = False) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks (their ``else`` runs);
    with ``type_checking``, those bodies too."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(
    name: str, path: Path, modules: dict[str, Path], type_checking: bool = False
) -> set[str]:
    """The normlab modules that ``name`` imports when it runs (with ``type_checking``, also
    those its annotations name under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _runtime_nodes(tree, type_checking):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.add(_known(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            found.add(_known(source, modules))  # the from-clause's module runs first
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if child in modules:
                    found.add(child)
    found.discard(name)
    return found


def _known(dotted: str, modules: dict[str, Path]) -> str:
    """``dotted`` or its nearest enclosing module that exists."""
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules, type_checking) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as
    one cycle through it, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(_cycle_through(c, graph) for c in components)


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside it."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "normlab" / "mod.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from normlab.b import x\n"
        "def f():\n    from normlab.a import y\n    import normlab.c.d\n"
        "class K:\n    def m(self):\n        from . import e\n"
    )
    names = ("normlab", "normlab.mod", "normlab.a", "normlab.b", "normlab.c", "normlab.e")
    modules = dict.fromkeys(names, source)
    # `from . import e` runs the package `normlab` too, and hands over its submodule `e`
    assert imports_of("normlab.mod", source, modules) == {
        "normlab", "normlab.a", "normlab.c", "normlab.e"
    }  # fmt: skip


def test_a_sibling_taken_from_its_package_is_an_edge_to_the_package(tmp_path: Path) -> None:
    """`from normlab.p import s` runs `normlab.p` first: with `p/__init__` importing the
    importer, that is a cycle, which `import normlab.p.s as s` avoids."""
    source = tmp_path / "normlab" / "p" / "t.py"
    source.parent.mkdir(parents=True)
    source.write_text("from normlab.p import s\nimport normlab.p.u as u\n")
    modules = dict.fromkeys(("normlab.p", "normlab.p.s", "normlab.p.t", "normlab.p.u"), source)
    assert imports_of("normlab.p.t", source, modules) == {"normlab.p", "normlab.p.s", "normlab.p.u"}


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles among normlab's modules:\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


def test_no_cycles_through_type_annotations_either() -> None:
    """The layout reads top-down for the types too: a lower module describes what it reads
    of a higher one with a Protocol of its own (``report.blocks.Document``,
    ``lab.cells.Task``) instead of importing it under ``TYPE_CHECKING``."""
    found = cycles(import_graph(type_checking=True))
    assert not found, "import cycles through annotations:\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )
