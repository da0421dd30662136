import pytest
from scripted import TINY

from tracetune.sandbox import Sandbox
from tracetune.tasks import load_suite


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def task():
    """The tiny repair suite's `maximum` bug (`if x < best:` where `>` is meant)."""
    return next(t for t in load_suite(str(TINY)).tasks if t.id == "tiny/maximum")
