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
    "The code under test is the module `{module}`: import it with `from {module} import ...`.\n"
    "{existing}"
    "Reply with the raw test_*.py file only."
)

EXISTING = "\n### Existing tests:\n{tests}\n"

FIX_TEMPLATE = (
    "The test file failed when run against the code under test, which is correct:\n"
    "{log}\n\n"
    "Reply with the corrected raw test_*.py file only."
)
"""The retry (stage C) turn: the pytest failure log of the previous answer."""


def render(code: str, *, module: str = "solution", existing_tests: str = "") -> str:
    """The user message asking for a pytest file for `code` (a module's source text)."""
    existing = EXISTING.format(tests=existing_tests.strip()) if existing_tests.strip() else ""
    return TEMPLATE.format(code=code.strip(), constraints=CONSTRAINTS, module=module,
                           existing=existing)
