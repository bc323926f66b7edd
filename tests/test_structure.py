"""The code's shape, checked: `tune -> nanogpt` only, and no import circle inside either package, counting the
imports inside functions (a circle hidden in a function is still a circle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nanogpt", "tune")


def _module_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its body."""
    modules = {f"{p.parent.name}.{p.stem}": p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = _module_imports()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_nanogpt_never_imports_tune_or_ray():
    for path in (ROOT / "nanogpt").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("tune", "ray") for n in names), f"{path.name} imports {names}"
