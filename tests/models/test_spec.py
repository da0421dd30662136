import subprocess
import sys

import pytest

from tracetune.errors import ModelSpecError
from tracetune.models import parse_spec
from tracetune.models.configs import HFConfig, LlamaCppConfig, OpenAIConfig, ReplayConfig


def test_embedded_resolves_to_the_packaged_gguf():
    spec = parse_spec("embedded")
    assert spec.backend == "llamacpp"
    assert isinstance(spec.config, LlamaCppConfig)
    assert spec.config.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_embedded_with_lora_and_options():
    spec = parse_spec("embedded,lora=/x/adapter.gguf,n_ctx=2048,lora_scale=0.5")
    assert spec.config.lora == "/x/adapter.gguf"
    assert spec.config.n_ctx == 2048 and spec.config.lora_scale == 0.5


@pytest.mark.parametrize("text, backend, cls, fields", [
    ("gguf:/m/model.gguf,lora=/m/l.gguf", "llamacpp", LlamaCppConfig,
     {"model_path": "/m/model.gguf", "lora": "/m/l.gguf"}),
    ("hf:Qwen/Qwen2.5-0.5B,adapter=out/a,device=cpu", "hf", HFConfig,
     {"model": "Qwen/Qwen2.5-0.5B", "adapter": "out/a", "device": "cpu"}),
    ("openai:qwen2.5-coder:7b@http://localhost:11434/v1,concurrency=2", "openai", OpenAIConfig,
     {"model": "qwen2.5-coder:7b", "base_url": "http://localhost:11434/v1", "concurrency": 2}),
    ("replay:outputs.jsonl,strict=false", "replay", ReplayConfig,
     {"path": "outputs.jsonl", "strict": False}),
])
def test_specs_parse_into_typed_configs(text, backend, cls, fields):
    spec = parse_spec(text)
    assert spec.backend == backend and isinstance(spec.config, cls)
    for key, value in fields.items():
        assert getattr(spec.config, key) == value


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("bogus:thing", "unknown model spec"),
    ("gpt-4", "unknown model spec"),
    ("hf:", "names no model"),
    ("openai:model-without-url", "openai:MODEL@URL"),
    ("hf:x,colour=blue", "unknown option 'colour'"),
    ("gguf:x.gguf,n_ctx=lots", "not a valid int"),
    ("gguf:x.gguf,lora", "expected key=value"),
])
def test_bad_specs_give_clear_errors(text, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_spec(text)


def test_parsing_imports_no_heavy_backend():
    code = ("import sys\nfrom tracetune.models import parse_spec\nimport tracetune.cli\n"
            "for s in ['embedded', 'hf:x', 'openai:m@http://h/v1', 'replay:f']: parse_spec(s)\n"
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'openai', 'peft')"
            " if m in sys.modules]\nprint(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
