"""The project's module import graph, read from the source (ast), for docs/architecture.md and its test.

    python -m tools.import_graph        # prints the graph as a markdown table
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "streamer", "fusion", "clients", "tools")
# Which packages each package may import (besides its own modules): the one-way house.
ALLOWED = {
    "core": set(),
    "fusion": {"core"},
    "streamer": {"core"},
    "clients": {"core"},
    "tools": {"core", "streamer", "fusion", "clients"},
}


def modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at any depth of its code)."""
    known = modules()
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {n for n in names if n in known and n != name}
        out[name] = deps
    return out


def violations(g: dict[str, set[str]]) -> list[str]:
    """Imports that cross the allowed package boundaries."""
    bad = []
    for module, deps in g.items():
        package = module.split(".")[0]
        for dep in deps:
            if dep.split(".")[0] not in ALLOWED[package] | {package}:
                bad.append(f"{module} -> {dep}")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (each as a path), by depth-first search."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                found.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def markdown(g: dict[str, set[str]]) -> str:
    lines = ["| module | imports (project modules) |", "|---|---|"]
    for module in sorted(g):
        if module in PACKAGES:
            continue
        lines.append(f"| `{module}` | {', '.join(f'`{d}`' for d in sorted(g[module])) or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(graph()))
