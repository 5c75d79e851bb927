"""hf_sparse's modules form no import cycle (lazy imports inside functions count) and none imports another
module's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hf_sparse"


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """``({module: modules of the package it imports}, ["module: from x import _name", ...])``."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, (path, package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = name.split(".") if package else name.split(".")[:-1]
                source = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                if not source.startswith("hf_sparse"):
                    continue
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        edges[name].add(f"{source}.{alias.name}")
                    else:
                        edges[name].add(source)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{name}: from {source} import {alias.name}")
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
    # a package's __init__ re-exporting its submodules is not a cycle with them
    return {a: {b for b in bs if b != a and not a.startswith(b + ".")} for a, bs in edges.items()}, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    reach = {}
    for start in edges:
        seen, stack = set(), list(edges[start])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
        reach[start] = seen
    groups = {frozenset(b for b in reach[a] if a in reach.get(b, ())) | {a} for a in edges if a in reach[a]}
    return sorted(sorted(g) for g in groups)


def test_no_import_cycles_between_modules():
    assert _cycles(_imports()[0]) == []


def test_no_module_imports_another_modules_private_names():
    assert _imports()[1] == []
