"""Shared by the training tests: torch on one thread (the tests' models are tiny; more threads
only contend with the sandbox and each other on a small machine)."""

import pytest

@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
