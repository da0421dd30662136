"""Exports of a real adapter on the embedded model, each with its parity check; a deliberately
corrupted GGUF LoRA (q/k rows not permuted) must fail the check."""

import json

import pytest

from tracetune.errors import TracetuneError
from tracetune.export.gguf_lora import export_gguf_lora
from tracetune.export.run import export
from tracetune.models import load_model
from tracetune.models.hf import resolve_model_source
from tracetune.models.spec import embedded_gguf_path
from tracetune.types import GenerationRequest, SamplingParams, chat


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA on every linear layer with random A and B (a strong, known change)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("adapter")
    base = AutoModelForCausalLM.from_pretrained(resolve_model_source("embedded"))
    model = get_peft_model(base, LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    with torch.no_grad():  # keep the change noticeable but sane
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)
    model.save_pretrained(out)
    (out / "tracetune_adapter.json").write_text(json.dumps({"base": "embedded"}))
    return out


def test_gguf_lora_parity_and_use(adapter, tmp_path):
    out = tmp_path / "a.gguf"
    summary = export(adapter, "gguf-lora", out)
    assert out.is_file() and "effect: scale" in summary and "greedy continuations" in summary
    m = load_model(f"embedded,lora={out}")
    base = load_model("embedded")
    req = GenerationRequest(chat("Tell me a short story about a cat."), SamplingParams(max_tokens=48))
    try:
        assert m.generate(req).text != base.generate(req).text
    finally:
        m.close()
        base.close()


def test_corrupted_gguf_lora_fails_parity_and_writes_nothing(adapter, tmp_path):
    out = tmp_path / "bad.gguf"
    with pytest.raises(TracetuneError, match="parity check FAILED"):
        export_gguf_lora(adapter, out, base_gguf=embedded_gguf_path(),
                         base_source=resolve_model_source("embedded"), permute_qk=False)
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


def test_merged_exports(adapter, tmp_path):
    summary = export(adapter, "merged-hf", tmp_path / "merged")
    assert "4/4" in summary and (tmp_path / "merged" / "config.json").is_file()
    summary = export(adapter, "ollama", tmp_path / "ollama")
    assert "4/4" in summary
    assert (tmp_path / "ollama" / "model.gguf").is_file()
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile
    # The training prompt's default system prompt is the Modelfile's SYSTEM.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile


def test_bad_export_requests(adapter, tmp_path):
    with pytest.raises(TracetuneError, match="unknown export target"):
        export(adapter, "onnx", tmp_path / "x")
    with pytest.raises(TracetuneError, match="not an adapter"):
        export(tmp_path, "gguf-lora", tmp_path / "y.gguf")
    (tmp_path / "exists.gguf").write_text("")
    with pytest.raises(TracetuneError, match="already exists"):
        export(adapter, "gguf-lora", tmp_path / "exists.gguf")


# --- the base is any spec with the adapter's weights --------------------------------------------

@pytest.fixture
def bare_adapter(tmp_path):
    """An adapter directory as far as the request checks look (no weights are read)."""
    path = tmp_path / "bare"
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    return path


@pytest.mark.parametrize("target, base, message", [
    ("gguf-lora", "hf:Qwen/X,device=cuda",
     r"GGUF exports need the base as a GGUF file \(embedded or gguf:PATH\), got "
     r"'hf:Qwen/X,device=cuda'"),
    ("merged-gguf", "gguf:/nonexistent/x.gguf,n_ctx=64", "GGUF exports need the base"),
    ("ollama", "openai:m@http://h/v1", "GGUF exports need the base"),
    ("merged-hf", "oracle", "names no weights or tokenizer to load"),
    ("gguf-lora", "embedded,lora=/x/a.gguf", r"stacks lora=/x/a.gguf; .*bare base"),
    ("merged-hf", "hf:/ckpt,adapter=/out/a", r"stacks adapter=/out/a"),
    ("merged-hf", "hf:/ckpt,dtype=fp8", "dtype='fp8' is not one of"),
])
def test_bases_an_export_cannot_use_are_refused_in_one_line(bare_adapter, tmp_path, target,
                                                            base, message):
    with pytest.raises(TracetuneError, match=message) as info:
        export(bare_adapter, target, tmp_path / "out", base=base)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_the_recorded_base_is_read_as_a_spec(bare_adapter, tmp_path):
    (bare_adapter / "tracetune_adapter.json").write_text(json.dumps({"base": "oracle"}))
    with pytest.raises(TracetuneError, match="model spec 'oracle' names no weights"):
        export(bare_adapter, "merged-hf", tmp_path / "out")


@pytest.mark.slow
def test_merged_hf_against_a_spec_with_options(adapter, tmp_path):
    # Serving and loading options on the base are accepted (parity runs in float32 on the CPU).
    base = f"hf:{resolve_model_source('embedded')},device=cpu,dtype=bfloat16,batch_size=2"
    summary = export(adapter, "merged-hf", tmp_path / "merged", base=base)
    assert "4/4" in summary and (tmp_path / "merged" / "config.json").is_file()
