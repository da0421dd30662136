"""Pull Python code out of model output: fenced blocks, several blocks, or bare code."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _defines(code: str, names: tuple[str, ...]) -> int:
    """How many of `names` the code defines at top level (-1 if it does not parse)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return -1
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return len(defined & set(names))


def extract_code(text: str, names: tuple[str, ...] = ()) -> str:
    """The most plausible Python program in `text`.

    Fenced blocks tagged python (or untagged) are candidates; the one that parses and defines the
    most required `names` wins, earlier blocks first on ties. With no fence, the text itself is used
    from its first line that looks like code.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    candidates = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or \
        [b for _, b in blocks]
    if candidates:
        if len(candidates) > 1 and names:
            joined = "\n\n".join(c for c in candidates if _defines(c, ()) >= 0)
            candidates = candidates + ([joined] if joined else [])
        best = max(candidates, key=lambda c: (_defines(c, names), -candidates.index(c)))
        return best.strip("\n") + "\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"\s*(def |class |import |from |@)", line)), 0)
    return "\n".join(lines[start:]).strip("\n") + "\n"
