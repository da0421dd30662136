"""The hf backend on the embedded model (dequantized from its GGUF), for real."""

import pytest

from tracetune.errors import ModelError
from tracetune.models import load_model
from tracetune.models.hf import resolve_model_source
from tracetune.types import GenerationRequest, SamplingParams, chat

PROMPTS = [chat("Write a Python function add(a, b) that returns the sum of a and b."),
           chat("What is the capital of France?")]


@pytest.fixture(scope="module")
def model():
    m = load_model("hf:embedded,device=cpu")
    yield m
    m.close()


@pytest.fixture(scope="module")
def checkpoint_dir(model):
    return resolve_model_source("embedded")


def test_greedy_single_and_batched_agree(model):
    reqs = [GenerationRequest(p, SamplingParams(max_tokens=16)) for p in PROMPTS]
    singles = [model.generate(r) for r in reqs]
    batched = model.generate_many(reqs)
    assert [c.text for c in singles] == [c.text for c in batched]
    assert "def add" in singles[0].text
    assert all(0 < c.usage.completion_tokens <= 16 for c in singles)
    assert singles[0].usage.prompt_tokens > 10


def test_seeded_sampling_reproduces(model):
    params = SamplingParams(temperature=1.0, max_tokens=12)
    texts = [model.generate(GenerationRequest(PROMPTS[0], params, seed=s)).text for s in (7, 7, 8)]
    assert texts[0] == texts[1]


def test_local_checkpoint_directory_loads(checkpoint_dir):
    # The same code path a hub name takes, on a local directory (no network here).
    m = load_model(f"hf:{checkpoint_dir},device=cpu")
    c = m.generate(GenerationRequest(PROMPTS[1], SamplingParams(max_tokens=8)))
    assert c.text


def _random_adapter(base_dir, out_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)


def test_peft_adapter_changes_the_model(model, checkpoint_dir, tmp_path):
    _random_adapter(checkpoint_dir, tmp_path / "adapter")
    adapted = load_model(f"hf:embedded,adapter={tmp_path / 'adapter'},device=cpu")
    import torch

    ids = model.tokenizer("def add(a, b):", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (adapted.model(ids).logits - model.model(ids).logits).abs().max().item()
    assert diff > 1e-3


def test_adapter_for_another_model_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2,
                                        vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    with pytest.raises(ModelError, match="does not fit"):
        load_model(f"hf:embedded,adapter={tmp_path / 'a'},device=cpu")


def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="adapter directory not found"):
        load_model(f"hf:embedded,adapter={tmp_path / 'none'},device=cpu")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        load_model("hf:no-such-org/no-such-model,device=cpu")
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(f"hf:{tmp_path / 'x.gguf'}")


def test_sampled_requests_are_batched_and_keep_their_own_seeds(model):
    params = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=12)
    reqs = [GenerationRequest(PROMPTS[i % 2], params, seed=s) for i, s in enumerate((3, 4, 5, 3))]
    alone = [model._run([r])[0].text for r in reqs]
    together = [c.text for c in model.generate_many(reqs)]
    assert together == alone  # a row's sample does not depend on the rest of its batch
    assert alone[0] != alone[2]  # same prompt, other seed


def test_stop_strings_end_each_row_of_a_batch(model):
    stop = SamplingParams(max_tokens=24, stop=("(",))
    reqs = [GenerationRequest(PROMPTS[0], stop), GenerationRequest(PROMPTS[1], stop)]
    plain = model.generate(GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=24)))
    assert "(" in plain.text
    cut = model.generate_many(reqs)
    assert cut[0].text == plain.text[:plain.text.index("(")]
    assert cut[0].finish_reason == "stop"
    assert cut[0].usage.completion_tokens < plain.usage.completion_tokens


def test_batch_size_is_the_specs_or_eight_on_the_cpu(model):
    req = GenerationRequest(PROMPTS[0])
    assert model.config.batch_size == 0 and model.batch_size([req]) == 8


def test_the_batcher_gathers_concurrent_calls_and_routes_each_answer():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tracetune.models.hf import Batcher
    from tracetune.types import Completion, Usage

    sizes = []
    go = threading.Barrier(6)

    def run_many(requests):
        sizes.append(len(requests))
        return [Completion(f"answer {r.seed}", Usage(1, 1), 0.0, "stop") for r in requests]

    batcher = Batcher(run_many, gather_s=0.2)

    def call(seed):
        go.wait()
        return batcher.submit(GenerationRequest(PROMPTS[0], seed=seed)).text

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(call, range(6))) == [f"answer {s}" for s in range(6)]
    assert sum(sizes) == 6 and len(sizes) <= 2  # gathered, not one call each

    def broken(requests):
        raise ModelError("engine failed")

    failing = Batcher(broken)
    with pytest.raises(ModelError, match="engine failed"):
        failing.submit(GenerationRequest(PROMPTS[0]))
    failing.close()
    batcher.close()
    with pytest.raises(ModelError, match="closed"):
        batcher.submit(GenerationRequest(PROMPTS[0]))


def test_stop_strings_with_a_tokenizer_transformers_cannot_match(tmp_path):
    # transformers' StopStringCriteria probes the vocabulary with a prefix that a word-level
    # tokenizer reads as one unknown token, and fails; the backend then cuts the text afterwards.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import synthetic

    path = synthetic.make_model_dir("tiny", tmp_path / "model", dtype="float32")
    m = load_model(f"hf:{path},device=cpu")
    # Sampled: with random weights, greedy decoding repeats a special token (empty text).
    sampled = SamplingParams(temperature=1.0, max_tokens=12)
    full = m.generate(GenerationRequest(chat("w1 w2 w3"), sampled, seed=0)).text
    word = full.split()[3]
    cut = m.generate(GenerationRequest(chat("w1 w2 w3"), SamplingParams(
        temperature=1.0, max_tokens=12, stop=(word,)), seed=0))
    assert cut.text == full[:full.index(word)] and cut.finish_reason == "stop"
    m.close()


def test_replies_end_at_the_chat_templates_end_of_turn_whatever_the_config_says(model):
    """A generation config made from a GGUF file may name another end-of-sequence token than
    the chat template's end of turn; generation still stops there, not in a made-up next turn."""
    from types import SimpleNamespace

    from tracetune.models.hf import end_of_turn_ids

    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in end_of_turn_ids(model.tokenizer, SimpleNamespace(eos_token_id=None))
    assert end_of_turn_ids(model.tokenizer, SimpleNamespace(eos_token_id=[0, im_end]))[-1] == 0
    config = model.model.generation_config
    kept = model.eos_ids, config.eos_token_id
    try:
        config.eos_token_id = 0  # <|endoftext|>, as such a GGUF's config gives
        model.eos_ids = end_of_turn_ids(model.tokenizer, config)
        c = model.generate(GenerationRequest(chat("What is the capital of France? One word."),
                                             SamplingParams(max_tokens=48)))
    finally:
        model.eos_ids, config.eos_token_id = kept
    assert c.finish_reason == "stop" and "user" not in c.text and "assistant" not in c.text
