"""Seed 001's tests-only prompt (section 2), shared by the workflow, the loaders and the miner.

The model gets the code under test (and, optionally, existing tests) and is asked for a raw
pytest file. The code is written next to the tests as `{module}.py`, so the tests import from it.
"""

from __future__ import annotations

CONSTRAINTS = ("pytest only, no hypothesis, no unittest. Edge cases, parametrize, "
               "no explanation.")

TEMPLATE = (
    "### Task: Write pytest tests\n\n"
    "### Code Under Test:\n{code}\n\n"
    "### Constraints:\n{constraints}\n"
    "The code under test is the module `{module}`. Start the file with:\n"
    "import pytest\n"
    "from {module} import {names}\n"
    "{existing}"
    "Then write test functions named test_... that call the code and assert on its results. "
    "Reply with the raw test_*.py file only."
)

EXISTING = "\n### Existing tests:\n{tests}\n\n"

FIX_TEMPLATE = (
    "The test file failed when run against the code under test, which is correct:\n"
    "{log}\n\n"
    "Reply with the corrected raw test_*.py file only."
)
"""The retry (stage C) turn: the pytest failure log of the previous answer."""


def render(code: str, *, module: str = "solution", names: tuple[str, ...] = (),
           existing_tests: str = "") -> str:
    """The user message asking for a pytest file for `code` (a module's source text); `names`:
    what the tests import (default: the module's top-level public functions and classes)."""
    existing = EXISTING.format(tests=existing_tests.strip()) if existing_tests.strip() else ""
    return TEMPLATE.format(code=code.strip(), constraints=CONSTRAINTS, module=module,
                           names=", ".join(names or public_names(code)) or "*",
                           existing=existing)


def public_names(code: str) -> tuple[str, ...]:
    """Top-level functions and classes of `code` not starting with an underscore (() when it
    does not parse)."""
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return ()
    return tuple(n.name for n in tree.body
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and not n.name.startswith("_"))
