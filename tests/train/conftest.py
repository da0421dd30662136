"""Shared by the training tests: torch on one thread (the tests' models are tiny; more threads
only contend with the sandbox and each other on a small machine)."""

import pytest


# Module scope: an autouse fixture comes first within its scope, so a module's shared training
# fixtures (test_ewc's `rounds`) also run on one thread. Function scope set it only around each
# test, after those fixtures had trained on the default thread count: a run trained at 2 threads
# and one at 1 then differ in the last bits, which a bit-for-bit comparison catches.
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
