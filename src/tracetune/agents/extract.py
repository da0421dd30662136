"""Pull Python code out of model output: fenced blocks, several blocks, or bare code."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _defines(code: str, names: tuple[str, ...], tests: bool = False) -> int:
    """How many of `names` the code defines at top level, or with tests=True how many test
    functions it has (-1 if it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return -1
    defined = set()
    n_tests = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
            n_tests += node.name.startswith(("test", "Test"))
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return n_tests if tests else len(defined & set(names))


def extract_code(text: str, names: tuple[str, ...] = (), *, tests: bool = False) -> str:
    """The most plausible Python program in `text`.

    Fenced blocks tagged python (or untagged) are candidates; the one that parses and defines the
    most required `names` (with tests=True: the most test functions) wins, earlier blocks first on
    ties. With no fence, the text itself is used from its first line that looks like code.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    candidates = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or \
        [b for _, b in blocks]
    if candidates:
        if len(candidates) > 1 and (names or tests):
            joined = "\n\n".join(c for c in candidates if _defines(c, ()) >= 0)
            candidates = candidates + ([joined] if joined else [])
        best = max(candidates, key=lambda c: (_defines(c, names, tests), -candidates.index(c)))
        return best.strip("\n") + "\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"\s*(def |class |import |from |@)", line)), 0)
    return "\n".join(lines[start:]).strip("\n") + "\n"


def _calls_local(node: ast.AST, local: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in local
               for n in ast.walk(node))


def sanitize(code: str) -> str:
    """Keep what a module needs (imports, definitions, constants); drop top-level statements that
    only exercise it (prints, asserts, example calls, `if __name__ == "__main__":` blocks).

    Small models often append usage examples to their solution; those run at import time and can
    crash a correct solution, or a wrong `assert` example can. Code that does not parse is returned
    unchanged (the syntax guard reports it).
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return code
    local = {n.name for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    lines = code.splitlines()
    kept: list[str] = []
    for i, node in enumerate(tree.body):
        keep = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                 ast.AsyncFunctionDef, ast.ClassDef, ast.Try))
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            keep = node.value is not None and not _calls_local(node.value, local)
        if isinstance(node, ast.Expr) and i == 0 and isinstance(node.value, ast.Constant):
            keep = True  # module docstring
        if keep:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept).strip("\n") + "\n" if kept else code
