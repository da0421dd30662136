"""GPU tests: skipped where torch sees no CUDA device (CI, the 2-core development machines).
They run on the GPU machine with `python -m pytest tests/gpu`; what they checked there is in
the README (Benchmarks, GPU). Models are random-weight checkpoints built on the spot
(benchmarks/synthetic.py): nothing is downloaded."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A SmolLM2-135M-shaped checkpoint with random weights (bf16) and the synthetic
    word-level tokenizer."""
    import synthetic

    return synthetic.make_model_dir("smollm2-135m", tmp_path_factory.mktemp("gpu") / "model")


@pytest.fixture
def dataset(tmp_path):
    import synthetic

    return synthetic.write_dataset(synthetic.make_rows(64, min_tokens=40, max_tokens=200,
                                                       seed=3), tmp_path / "data")
