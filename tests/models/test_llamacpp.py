"""The llamacpp backend on the embedded model, for real."""

import pytest

from tracetune.errors import ModelError
from tracetune.models import Model, load_model
from tracetune.types import GenerationRequest, SamplingParams, chat

PROMPT = chat("Write a Python function add(a, b) that returns the sum of a and b.")


@pytest.fixture(scope="module")
def model():
    m = load_model("embedded,n_ctx=2048")
    yield m
    m.close()


def test_is_a_model(model):
    assert isinstance(model, Model)


def test_greedy_is_deterministic_and_reports_usage(model):
    req = GenerationRequest(PROMPT, SamplingParams(max_tokens=48))
    a, b = model.generate(req), model.generate(req)
    assert a.text == b.text and "def add" in a.text
    assert a.usage.prompt_tokens > 10 and 0 < a.usage.completion_tokens <= 48
    assert a.latency_s > 0


def test_seed_reproduces_samples(model):
    params = SamplingParams(temperature=1.0, max_tokens=32)
    runs = [model.generate(GenerationRequest(PROMPT, params, seed=s)).text for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len(set(runs[1:])) > 1  # different seeds explore different samples


def test_max_tokens_and_stop(model):
    c = model.generate(GenerationRequest(PROMPT, SamplingParams(max_tokens=5)))
    assert c.usage.completion_tokens == 5 and c.finish_reason == "length"
    c = model.generate(GenerationRequest(PROMPT, SamplingParams(max_tokens=64, stop=("def",))))
    assert "def" not in c.text


def test_generate_many_keeps_order(model):
    reqs = [GenerationRequest(chat(f"Say the number {i}."), SamplingParams(max_tokens=8))
            for i in range(3)]
    many = model.generate_many(reqs)
    assert [c.text for c in many] == [model.generate(r).text for r in reqs]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(f"gguf:{tmp_path / 'nope.gguf'}")
    with pytest.raises(ModelError, match="LoRA adapter file not found"):
        load_model(f"embedded,lora={tmp_path / 'nope.gguf'}")


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="could not load"):
        load_model(f"gguf:{bad}")


def _write_random_lora(path, rank=8, scale=0.5, seed=0):
    """A GGUF LoRA adapter for the embedded model's attention query projections (random weights)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for layer in range(30):
        a = (rng.standard_normal((rank, 576)) * scale).astype(np.float32)  # (r, n_embd)
        b = (rng.standard_normal((576, rank)) * scale).astype(np.float32)  # (n_out, r)
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", a)
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_lora_is_applied_at_load(model, tmp_path):
    lora = tmp_path / "lora.gguf"
    _write_random_lora(lora)
    req = GenerationRequest(PROMPT, SamplingParams(max_tokens=24))
    base = model.generate(req).text
    with_lora = load_model(f"embedded,n_ctx=2048,lora={lora}")
    scaled_off = load_model(f"embedded,n_ctx=2048,lora={lora},lora_scale=0")
    try:
        assert with_lora.generate(req).text != base
        assert scaled_off.generate(req).text == base
    finally:
        with_lora.close()
        scaled_off.close()


def test_a_cut_answer_says_length_and_a_whole_one_stop(model):
    from tracetune.types import GenerationRequest, SamplingParams, chat

    cut = model.generate(GenerationRequest(chat("Write a long story about a dragon."),
                                           SamplingParams(temperature=0.0, max_tokens=3)))
    assert cut.finish_reason == "length"
    whole = model.generate(GenerationRequest(chat("Say hi."), SamplingParams(
        temperature=0.0, max_tokens=64, stop=("\n",))))
    assert whole.finish_reason == "stop"
