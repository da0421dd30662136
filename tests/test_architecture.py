"""The package's layering, checked on the source: no import cycles, `models/` imports nothing
above it, and no code outside the workflow registry tests a workflow by its name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tracetune"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every tracetune module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tracetune")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("tracetune"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_models_import_nothing_above_them():
    above = ("tracetune.agents", "tracetune.datasets", "tracetune.train", "tracetune.experiment",
             "tracetune.eval", "tracetune.export")
    bad = {m: sorted(i for i in deps if i.startswith(above))
           for m, deps in _graph().items() if m.startswith("tracetune.models")}
    assert not {m: d for m, d in bad.items() if d}


def test_model_backends_are_resolved_inside_models():
    from tracetune.models import BACKENDS

    paths = {b.name: b.import_path for b in BACKENDS.values()}
    assert all(p.startswith("tracetune.models.") for p in paths.values() if p), paths


WORKFLOW_NAME_TEST = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](direct|tdd|repair)["']"""
                                r"""|["'](direct|tdd|repair)["']\s*(==|!=)""")


def test_no_string_test_of_a_workflow_name_outside_the_registry():
    registry = SRC / "agents" / "spec.py"
    hits = [f"{p.relative_to(SRC)}:{n}: {line.strip()}"
            for p in SRC.rglob("*.py") if p != registry
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if WORKFLOW_NAME_TEST.search(line)]
    assert not hits, "\n".join(hits)


def test_the_name_check_itself_catches_a_name_test():
    assert WORKFLOW_NAME_TEST.search('if workflow.name == "repair":')
    assert WORKFLOW_NAME_TEST.search("agent = 'tdd' != kind")
    assert not WORKFLOW_NAME_TEST.search('workflow: str = "direct"')
