"""Every export reproduces the adapter PEFT computes, or refuses by name; a failed export leaves
nothing behind. Runs on a tiny random llama base (2 layers, width 64, the embedded model's
tokenizer cut to 2048 tokens) written as a GGUF, so each export takes seconds."""

import json
import os
import re
import sys

import numpy as np
import pytest

from tracetune.errors import TracetuneError
from tracetune.export.gguf_lora import permute_rows
from tracetune.export.parity import Reference, Sequence, compare
from tracetune.export.run import export
from tracetune.models.spec import embedded_gguf_path

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS = 2048, 64, 2, 4, 2
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _write_tiny_base(path) -> None:
    """A random tied-embedding llama in GGUF form (float32 tensors, q/k rows in llama.cpp's
    order), with the embedded model's tokenizer cut to its first VOCAB tokens."""
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=1e5))
    reader = gguf.GGUFReader(str(embedded_gguf_path()))
    writer = gguf.GGUFWriter(str(path), "llama")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    kept = set(tokens)
    pairs = [m.split(" ", 1) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    merges = [f"{a} {b}" for a, b in pairs if a in kept and b in kept and a + b in kept]
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(reader.fields["tokenizer.ggml.token_type"].contents()[:VOCAB])
    replaced = ("general.architecture", "general.file_type", "tokenizer.ggml.tokens",
                "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "llama.")) or field.name in replaced:
            continue
        vtype = field.types[0]
        writer.add_key_value(field.name, field.contents(), vtype,
                             sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY
                             else None)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(2 * HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(1e5)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(VOCAB)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: the GGUF has token_embd only, like SmolLM2's
        w = p.detach().float().numpy()
        if "q_proj" in name:
            w = permute_rows(w, HEADS)
        elif "k_proj" in name:
            w = permute_rows(w, KV_HEADS)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(base spec, transformers checkpoint dir) of the tiny base; its dequantized checkpoint is
    cached in a directory of this module's own."""
    from tracetune.models.resolve import hf_source

    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACETUNE_CACHE", str(root / "cache"))
        _write_tiny_base(root / "tiny.gguf")
        spec = f"gguf:{root / 'tiny.gguf'}"
        yield spec, hf_source(spec)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def make_adapter(tiny, out, *, b_scale=1.0, **lora):
    """A PEFT LoRA on the tiny base with random A and B, saved to `out` with its base recorded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec, source = tiny
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    lora = {"r": 16, "lora_alpha": 32, "target_modules": ALL_LINEAR, **lora}
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
            elif "modules_to_save" in name or "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    model.save_pretrained(out)
    (out / "tracetune_adapter.json").write_text(json.dumps({"base": spec}))
    return out


def _peft_logits(tiny, adapter, ids):
    """(adapted, base) logits (seq, vocab) of transformers + PEFT for one token sequence."""
    import torch

    from tracetune.export.peft_adapter import load_peft

    _, peft = load_peft(tiny[1], adapter)
    with torch.inference_mode():
        x = torch.tensor([ids])
        adapted = peft(x).logits[0].numpy()
        with peft.disable_adapter():
            base = peft(x).logits[0].numpy()
    return adapted, base


def _gguf_tensors(path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            for t in gguf.GGUFReader(str(path)).tensors}


def _chat_template(path) -> str:
    import gguf

    return gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents()


def _scale(message: str) -> float:
    return float(re.search(r"effect: scale (\S+)", message).group(1))


def _leftovers(folder, *keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- the effect measure ---------------------------------------------------------------------------

def _effects(seed=0):
    """(base logits, adapter effect) per sequence, (5, 500) each: logits ~3, an effect ~0.05."""
    rng = np.random.default_rng(seed)
    base = [rng.normal(0, 3, (5, 500)).astype(np.float32) for _ in range(4)]
    effect = [rng.normal(0, 0.05, (5, 500)).astype(np.float32) for _ in range(4)]
    return base, effect


def test_parity_sees_a_scale_error_that_adapted_logits_hide():
    base, effect = _effects()
    ref = Reference([Sequence([0] * 6, 0)] * 4, [b + e for b, e in zip(base, effect)], base)
    quarter = [b + e / 4 for b, e in zip(base, effect)]
    # The old measure, cosine of the adapted logits, passes the 4x error easily.
    a, q = np.concatenate(ref.adapted).ravel(), np.concatenate(quarter).ravel()
    assert a @ q / (np.linalg.norm(a) * np.linalg.norm(q)) > 0.999
    wrong = compare(ref, quarter, base)
    assert not wrong.passed and wrong.scale == pytest.approx(0.25, abs=0.01)
    assert wrong.cosine > 0.999  # the direction is right; only the size is wrong
    assert compare(ref, [b + e * 1.01 for b, e in zip(base, effect)], base).passed
    assert not compare(ref, [b + e * 1.1 for b, e in zip(base, effect)], base).passed


def test_parity_sees_an_effect_in_the_wrong_place():
    base, effect = _effects()
    ref = Reference([Sequence([0] * 6, 0)] * 4, [b + e for b, e in zip(base, effect)], base)
    # Right size and mostly right, but a third of the effect moved to other logits.
    moved = [b + np.concatenate([e[:, :330], e[:, 330:][:, ::-1]], axis=1)
             for b, e in zip(base, effect)]
    result = compare(ref, moved, base)
    assert not result.passed and result.rel_error > 0.5


def test_parity_allows_the_export_formats_own_rounding_and_no_more():
    base, effect = _effects()
    _, noise = _effects(seed=1)  # rounding noise, ~0.05 per logit: as large as the effect
    ref = Reference([Sequence([0] * 6, 0)] * 4, [b + e for b, e in zip(base, effect)], base)
    rounded_base = [b + n / 5 for b, n in zip(base, noise)]
    _, noise2 = _effects(seed=2)
    rounded_adapted = [b + e + n2 / 5 for b, e, n2 in zip(base, effect, noise2)]
    ok = compare(ref, rounded_adapted, rounded_base)
    assert ok.rel_error > 0.2 and ok.noise == pytest.approx(0.2, rel=0.05) and ok.passed
    quarter = [b + e / 4 + n2 / 5 for b, e, n2 in zip(base, effect, noise2)]
    assert not compare(ref, quarter, rounded_base).passed  # the scale still decides


# --- rsLoRA and per-module patterns: PEFT's scale, in every target -------------------------------

@pytest.fixture(scope="module")
def rslora(tiny, tmp_path_factory):
    return make_adapter(tiny, tmp_path_factory.mktemp("rslora"), use_rslora=True, b_scale=0.2)


def test_rslora_merged_hf_computes_what_peft_computes(tiny, rslora, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    summary = export(rslora, "merged-hf", tmp_path / "merged")
    assert "relative error" in summary
    ids = list(range(5, 40))
    adapted, base = _peft_logits(tiny, rslora, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.inference_mode():
        got = merged(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(adapted - base).max() > 1e-2  # the adapter does something measurable
    np.testing.assert_allclose(got, adapted, atol=1e-4)
    # ... and it is prompted as in training: the base's chat template travels with it.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template \
        == AutoTokenizer.from_pretrained(tiny[1]).chat_template


def test_rslora_merged_gguf_adds_alpha_over_sqrt_r(tiny, rslora, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "m.gguf"
    assert export(rslora, "merged-gguf", out).startswith(f"{LAYERS * 7} matrices merged;")
    base, merged = _gguf_tensors(tiny[0].removeprefix("gguf:")), _gguf_tensors(out)
    lora = load_file(str(rslora / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj"
    ba = permute_rows(lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"], HEADS)
    d = (merged["blk.1.attn_q.weight"] - base["blk.1.attn_q.weight"]).ravel()
    fitted = float(d @ ba.ravel() / (ba.ravel() @ ba.ravel()))
    assert fitted == pytest.approx(32 / 16 ** 0.5, rel=1e-3)  # not alpha / r = 2
    assert _chat_template(out) == _chat_template(tiny[0].removeprefix("gguf:"))


def test_rslora_gguf_lora_passes_parity(rslora, tmp_path):
    summary = export(rslora, "gguf-lora", tmp_path / "a.gguf")
    assert (tmp_path / "a.gguf").is_file() and "relative error" in summary
    assert _leftovers(tmp_path, "a.gguf") == []


def test_rank_and_alpha_patterns_are_honoured(tiny, tmp_path):
    adapter = make_adapter(tiny, tmp_path / "pattern", b_scale=0.2, r=8, lora_alpha=16,
                           rank_pattern={"v_proj": 4}, alpha_pattern={"down_proj": 64})
    for target, out in (("merged-gguf", "m.gguf"), ("gguf-lora", "a.gguf")):
        assert "effect: scale" in export(adapter, target, tmp_path / out)


# --- a wrong scale cannot pass -------------------------------------------------------------------

def test_a_merge_at_the_wrong_scale_fails_parity_and_writes_nothing(rslora, tmp_path,
                                                                    monkeypatch):
    from tracetune.export import run

    merge = run.merge

    def alpha_over_r(peft):  # what a merge that ignores use_rslora adds: 1/4 of PEFT's change
        model, deltas = merge(peft)
        return model, {k: v / 4 for k, v in deltas.items()}

    monkeypatch.setattr(run, "merge", alpha_over_r)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TracetuneError, match="parity check FAILED") as info:
        export(rslora, "merged-gguf", out / "m.gguf")
    assert _scale(str(info.value)) < 0.5
    assert _leftovers(out) == []


def test_a_gguf_lora_at_the_wrong_scale_fails_parity(rslora, tmp_path, monkeypatch):
    import dataclasses

    import tracetune.export.gguf_lora as gl

    matrices = gl.lora_matrices
    monkeypatch.setattr(gl, "lora_matrices", lambda peft: [
        dataclasses.replace(m, scaling=m.scaling / 4) for m in matrices(peft)])
    with pytest.raises(TracetuneError, match="parity check FAILED"):
        export(rslora, "gguf-lora", tmp_path / "a.gguf")
    assert _leftovers(tmp_path) == []


# --- lm_head tied to the embeddings --------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_head(tiny, tmp_path_factory):
    return make_adapter(tiny, tmp_path_factory.mktemp("lm_head"), b_scale=0.2,
                        target_modules=["q_proj", "v_proj", "lm_head"])


def test_lm_head_adapter_merges_into_an_untied_output_matrix(tiny, lm_head, tmp_path):
    out = tmp_path / "m.gguf"
    summary = export(lm_head, "merged-gguf", out)
    assert "untied output.weight" in summary
    base, merged = _gguf_tensors(tiny[0].removeprefix("gguf:")), _gguf_tensors(out)
    assert "output.weight" not in base and "output.weight" in merged
    np.testing.assert_allclose(merged["token_embd.weight"], base["token_embd.weight"],
                               atol=1e-3)  # float16 storage; the input embeddings unchanged
    assert np.abs(merged["output.weight"] - base["token_embd.weight"]).max() > 1e-2


def test_lm_head_adapter_merged_hf_is_untied_and_exact(tiny, lm_head, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    export(lm_head, "merged-hf", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert merged.config.tie_word_embeddings is False
    ids = list(range(5, 40))
    adapted, _ = _peft_logits(tiny, lm_head, ids)
    with torch.inference_mode():
        np.testing.assert_allclose(merged(torch.tensor([ids])).logits[0].numpy(), adapted,
                                   atol=1e-4)


def test_lm_head_adapter_is_refused_by_name_for_gguf_lora(lm_head, tmp_path):
    with pytest.raises(TracetuneError, match=r"adapts lm_head\.weight.*ties lm_head") as info:
        export(lm_head, "gguf-lora", tmp_path / "a.gguf")
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


# --- options an export cannot reproduce are refused by name --------------------------------------

def test_dora_is_refused_by_name_for_gguf_lora_and_merged_exactly(tiny, tmp_path):
    adapter = make_adapter(tiny, tmp_path / "dora", b_scale=0.2, use_dora=True,
                           target_modules=["q_proj", "v_proj"])
    with pytest.raises(TracetuneError, match=r"use_dora=True is not supported by the gguf-lora"):
        export(adapter, "gguf-lora", tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
    assert "relative error" in export(adapter, "merged-gguf", tmp_path / "m.gguf")


@pytest.mark.parametrize("extra", [{"modules_to_save": ["embed_tokens"]},
                                   {"trainable_token_indices": [5, 6, 7]}],
                         ids=["modules_to_save", "trainable_tokens"])
def test_embedding_changes_merge_with_the_output_kept_as_peft_has_it(tiny, tmp_path, extra):
    adapter = make_adapter(tiny, tmp_path / "emb", b_scale=0.2, target_modules=["q_proj"],
                           **extra)
    # The embeddings change; the tied output must not change with them unless PEFT's does.
    assert "untied output.weight" in export(adapter, "merged-gguf", tmp_path / "m.gguf")
    assert "effect: scale" in export(adapter, "merged-hf", tmp_path / "hf")


@pytest.mark.parametrize("option, value", [
    ("layer_replication", [[0, 2], [1, 2]]),
    ("alora_invocation_tokens", [5, 6]),
    ("init_lora_weights", "pissa"),
])
@pytest.mark.parametrize("target", ["gguf-lora", "merged-hf", "merged-gguf", "ollama"])
def test_options_no_export_reproduces_are_refused_by_name(rslora, tmp_path, option, value,
                                                          target):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for f in rslora.iterdir():
        (adapter / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, option: value}))
    with pytest.raises(TracetuneError, match=f"adapter option {option}=") as info:
        export(adapter, target, tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


# --- a failed export leaves nothing behind -------------------------------------------------------

@pytest.mark.parametrize("target", ["gguf-lora", "merged-gguf", "ollama"])
def test_a_llama_cpp_crash_fails_the_export_and_leaves_nothing(rslora, tmp_path, monkeypatch,
                                                               target):
    from tracetune.export import parity

    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(parity, "child_command", lambda request: [sys.executable, "-c", crash])
    with pytest.raises(TracetuneError, match=r"llama\.cpp crashed \(SIGSEGV\)"):
        export(rslora, target, tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_what_a_killed_export_left_is_removed_by_the_next(rslora, tmp_path):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".partial-{dead.pid}-abcdefgh"
    left.mkdir()
    (left / "model.gguf").write_bytes(b"\0" * 1024)
    export(rslora, "merged-gguf", tmp_path / "m.gguf")
    assert _leftovers(tmp_path) == ["m.gguf"]


def test_ollama_export_writes_the_modelfile_of_the_base_chat_template(tiny, rslora, tmp_path):
    from transformers import AutoTokenizer

    from tracetune.export.ollama import chat_format

    export(rslora, "ollama", tmp_path / "ollama")
    assert sorted(os.listdir(tmp_path / "ollama")) == ["Modelfile", "model.gguf"]
    assert _leftovers(tmp_path, "ollama") == []
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert modelfile == chat_format(AutoTokenizer.from_pretrained(tiny[1])).modelfile()
    assert "\nSYSTEM " in modelfile


@pytest.mark.parametrize("option, value, reproduced_by", [
    ("modules_to_save", ["lm_head"], ("merged-hf", "merged-gguf", "ollama")),
    ("lora_bias", True, ("merged-hf", "merged-gguf", "ollama")),
    ("trainable_token_indices", [1, 2], ("merged-hf", "merged-gguf", "ollama")),
    ("use_dora", True, ("merged-hf", "merged-gguf", "ollama")),
    ("bias", "all", ("merged-hf",)),
])
def test_options_only_some_targets_reproduce_are_refused_by_name_by_the_others(
        option, value, reproduced_by):
    from tracetune.export.peft_adapter import check_options
    from tracetune.export.run import TARGETS

    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, option: value}
    for target in TARGETS:
        if target in reproduced_by:
            check_options(cfg, target)
        else:
            with pytest.raises(TracetuneError, match=f"adapter option {option}=.*{target}"):
                check_options(cfg, target)


def test_a_base_of_another_shape_is_one_line(rslora, tmp_path):
    """The tiny adapter on the embedded model: torch would list every mismatched tensor."""
    with pytest.raises(TracetuneError) as info:
        export(rslora, "merged-hf", tmp_path / "m", base="embedded")
    message = str(info.value)
    assert "\n" not in message and "another shape" in message and "--base" in message
    assert _leftovers(tmp_path) == []
