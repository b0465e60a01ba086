"""The import graph of the antigrok package: its modules, the edges between them, and any cycle.

    python tests/import_graph.py            # counts, then one line per edge
    python tests/import_graph.py --check    # exit 1 (naming the cycle) if the graph has a cycle
    python tests/import_graph.py --package-dir OTHER_CHECKOUT/src/antigrok

Every ``import antigrok.x`` / ``from antigrok.x import ...`` / ``from antigrok import x`` counts,
also one inside a function (a lazy import hides a cycle, it does not remove it).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "antigrok"


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by its dotted name below ``antigrok`` (``train``, ``monitor``,
    ``monitor.lightning``): the package's own ``__init__`` is left out."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _module_of(dotted: str, known: set[str]) -> str | None:
    """The known module that ``antigrok.<dotted>`` names (the longest known prefix), or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The antigrok modules that ``source`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # a submodule, or a name in it
        else:
            continue
        for name in names:
            if name.startswith("antigrok."):
                module = _module_of(name[len("antigrok."):], known)
                if module:
                    found.add(module)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    files = modules(package_dir)
    known = set(files)
    return {name: imported_modules(path.read_text(), known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the import graph has a cycle")
    parser.add_argument("--package-dir", type=Path, default=PACKAGE_DIR, help="default: this checkout's src/antigrok")
    args = parser.parse_args(argv)
    graph = import_graph(args.package_dir)
    edges = sorted((source, target) for source, targets in graph.items() for target in targets)
    cycle = find_cycle(graph)
    print(f"{len(graph)} modules, {len(edges)} import edges, "
          + (f"cycle: {' -> '.join(cycle)}" if cycle else "no cycle"))
    if not args.check:
        for source, target in edges:
            print(f"  {source} -> {target}")
    return 1 if (args.check and cycle) else 0


if __name__ == "__main__":
    sys.exit(main())
