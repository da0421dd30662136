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


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`"""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Compare) and \
        isinstance(test.left, ast.Name) and test.left.id == "__name__"


def _names(node: ast.AST, ctx: type | None = None) -> set[str]:
    """Names a node mentions (only loads with ctx=ast.Load, only stores with ctx=ast.Store)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and (ctx is None or isinstance(n.ctx, ctx))}


def sanitize(code: str) -> str:
    """Drop the top-level statements that only exercise the module (example calls, prints of
    results, asserts on examples, `if __name__ == "__main__":` blocks), keeping everything that
    can change what the module's definitions compute.

    Small models often append usage examples to their solution; those run at import time and can
    crash a correct solution, or a wrong `assert` example can. A statement is dropped only when it
    mentions one of the module's own functions or classes (so it uses the solution rather than
    configures it: `sys.setrecursionlimit(20000)` stays) and writes nothing that the kept code
    reads: a module-level table built by a helper (`_TABLE = _build(90)`), a rebinding of a
    definition (`f = cache(f)`) or a loop that fills a global the functions use all stay. Code that
    does not parse is returned unchanged (the syntax guard reports it).
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return code
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    always = defs + (ast.Import, ast.ImportFrom, ast.Try)
    local = {n.name for n in tree.body if isinstance(n, defs)}
    module_bound = set().union(*(_names(n, ast.Store) for n in tree.body
                                 if not isinstance(n, defs)), set()) - local
    keep = []
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        keep.append(isinstance(node, always) or docstring
                    or (not _is_main_guard(node) and not (_names(node) & local))
                    or bool(_names(node, ast.Store) & local))
    # Grow the kept set to a fixpoint: a dropped statement that mentions a module-level name the
    # kept code reads (builds it, fills it, mutates it) is needed after all.
    changed = True
    while changed:
        read = set().union(*(_names(n, ast.Load) for n, k in zip(tree.body, keep) if k))
        changed = False
        for j, node in enumerate(tree.body):
            if not keep[j] and not _is_main_guard(node) and _names(node) & module_bound & read:
                keep[j] = changed = True
    lines = code.splitlines()
    kept = []
    for node, k in zip(tree.body, keep):
        if k:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept).strip("\n") + "\n" if kept else code
