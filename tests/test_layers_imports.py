"""The package's layers (see ``sp4sc/__init__.py``): no upward import, no import circle.

Every ``import`` in every module counts, also those inside functions: an import
deferred to call time still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sp4sc"

# Rank of each layer; a module may import from its own rank or below.
RANKS = {
    "cli": 8, "__main__": 8,
    "commands": 7,
    "challenge": 6, "benchmarks": 6,
    "training": 5, "deploy": 5,
    "probes": 4,
    "data": 3,
    "models": 2,
    "frontend": 1,
}
UTILITIES = {"sp4sc", "errors", "log", "constants", "fileio", "cpu", "machine", "metrics", "cvfolder"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """sp4sc modules imported anywhere in ``path`` (resolved to modules, not names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sp4sc":
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "sp4sc":
                continue
            for alias in node.names:  # `from sp4sc.models import sp4sc` imports a module
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    return {m for m in out if m in known and m != name}


def rank(module: str) -> int:
    parts = module.split(".")
    if module == "sp4sc" or (len(parts) == 2 and parts[1] in UTILITIES):
        return 0
    if parts[1] not in RANKS:
        raise AssertionError(f"{module}: a new top-level package or module; give it a layer in RANKS and in sp4sc/__init__.py")
    return RANKS[parts[1]]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = all_modules()
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        rank(name)


def test_no_upward_import(graph):
    bad = [f"{a} (layer {rank(a)}) imports {b} (layer {rank(b)})"
           for a, targets in graph.items() for b in sorted(targets) if rank(b) > rank(a)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_same_rank_packages_do_not_import_each_other(graph):
    """training and deploy (rank 5), challenge and benchmarks (rank 6) stay independent."""
    pairs = {("training", "deploy"), ("deploy", "training"), ("challenge", "benchmarks"), ("benchmarks", "challenge")}
    bad = [f"{a} imports {b}" for a, targets in graph.items() for b in sorted(targets)
           if len(a.split(".")) > 2 and len(b.split(".")) > 2 and (a.split(".")[1], b.split(".")[1]) in pairs]
    assert not bad, "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None. Importing one's own parent package does not count."""
    def edges(a):
        return [b for b in graph[a] if not a.startswith(b + ".")]

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(a):
        state[a] = 1
        stack.append(a)
        for b in edges(a):
            if state.get(b) == 1:
                return stack[stack.index(b):] + [b]
            if b not in state:
                found = visit(b)
                if found:
                    return found
        stack.pop()
        state[a] = 2
        return None

    for a in sorted(graph):
        if a not in state:
            found = visit(a)
            if found:
                return found
    return None


def test_no_import_circle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_checker_sees_a_circle_and_an_upward_import():
    """The checks above would fail on the faults they look for."""
    assert find_cycle({"sp4sc.a": {"sp4sc.b"}, "sp4sc.b": {"sp4sc.a"}}) == ["sp4sc.a", "sp4sc.b", "sp4sc.a"]
    assert find_cycle({"sp4sc.models": {"sp4sc.models.cnn6"}, "sp4sc.models.cnn6": {"sp4sc.models"}}) is None
    assert rank("sp4sc.models.fold") < rank("sp4sc.deploy.onnx_export")
    with pytest.raises(AssertionError, match="new top-level"):
        rank("sp4sc.newthing.x")


def test_relative_and_function_level_imports_are_seen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from sp4sc.deploy import infer\n    import sp4sc.errors\n")
    known = {"sp4sc.deploy", "sp4sc.deploy.infer", "sp4sc.errors", "sp4sc.models.x"}
    assert imports_of(src, "sp4sc.models.x", known) == {"sp4sc.deploy.infer", "sp4sc.errors"}
