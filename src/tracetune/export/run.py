"""`tracetune export`: an adapter -> gguf-lora | merged-hf | merged-gguf | ollama, each ending
with a parity check that fails the export loudly (and leaves nothing behind) when it does not hold.

  gguf-lora    OUT.gguf: a llama.cpp LoRA adapter for the base GGUF (`gguf:BASE,lora=OUT.gguf`)
  merged-hf    OUT/: merged safetensors + tokenizer (transformers, vLLM, ...)
  merged-gguf  OUT.gguf: the base GGUF's tensors in float16 with the adapter merged in
  ollama       OUT/: model.gguf (as merged-gguf) + Modelfile (`ollama create NAME -f Modelfile`)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError
from tracetune.staging import staging_dir
from tracetune.export.gguf_copy import rewrite_gguf
from tracetune.export.gguf_lora import (PARITY_PROMPTS, export_gguf_lora, load_peft,
                                         permute_rows, prompt_ids)
from tracetune.models.resolve import gguf_file, hf_source, weight_options

TARGETS = ("gguf-lora", "merged-hf", "merged-gguf", "ollama")


def _adapter_meta(adapter: Path) -> dict:
    from tracetune.train.recipe import META

    meta_path = adapter / META
    if not (adapter / "adapter_config.json").is_file():
        raise TracetuneError(f"{adapter} is not an adapter directory (no adapter_config.json)")
    return json.loads(meta_path.read_text()) if meta_path.is_file() else {}


def _base_gguf(base: str) -> Path:
    """The base's GGUF file, which GGUF targets rewrite or pair a LoRA with."""
    path = gguf_file(base)
    if path is None or not path.is_file():
        raise TracetuneError(f"GGUF exports need the base as a GGUF file (embedded or "
                             f"gguf:PATH), got {base!r}")
    return path


def _base_source(base: str) -> str:
    """The base's transformers checkpoint. Its device/dtype options are accepted and ignored:
    parity checks run in float32 on the CPU."""
    stacked = weight_options(base).stacked
    if stacked:
        raise TracetuneError(f"base model {base!r} stacks {stacked}; an adapter exports against "
                             "the bare base it was trained on, so name that")
    return hf_source(base)


def export(adapter: Path, target: str, out: Path, *, base: str | None = None) -> str:
    """Run one export; returns the parity summary. `base` is a model spec (default: the one the
    adapter records); GGUF targets need one with a GGUF file (embedded, gguf:PATH, hf:embedded,
    hf:PATH.gguf). Raises TracetuneError (one line) for bad requests and failed parity checks."""
    if target not in TARGETS:
        raise TracetuneError(f"unknown export target {target!r} ({', '.join(TARGETS)})")
    adapter = Path(adapter)
    meta = _adapter_meta(adapter)
    base = base or meta.get("base")
    if not base:
        raise TracetuneError(f"{adapter} does not record its base model; pass --base")
    if out.exists():
        raise TracetuneError(f"{out} already exists; choose another --out")
    # The GGUF first: it is a cheap check, dequantizing the source is not.
    base_gguf = _base_gguf(base) if target != "merged-hf" else None
    source = _base_source(base)
    if target == "gguf-lora":
        report = export_gguf_lora(adapter, out, base_gguf=base_gguf, base_source=source)
        return report.summary()
    if target == "merged-hf":
        return _merged_hf(adapter, source, out)
    if target == "merged-gguf":
        return _merged_gguf(adapter, source, base_gguf, out)
    return _ollama(adapter, source, base_gguf, out)


def _merged_hf(adapter: Path, source: str, out: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    tok, peft = load_peft(source, adapter)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out.parent, "partial")
    try:
        with torch.inference_mode():
            ref = [peft(torch.tensor([prompt_ids(tok, p)])).logits[0, -1] for p in PARITY_PROMPTS]
        merged = peft.merge_and_unload()
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.inference_mode():
            got = [reloaded(torch.tensor([prompt_ids(tok, p)])).logits[0, -1]
                   for p in PARITY_PROMPTS]
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        same_top1 = sum(int(a.argmax() == b.argmax()) for a, b in zip(ref, got))
        summary = (f"max |logit difference| {diff:.2e} (need <= 1e-3); next token equal on "
                   f"{same_top1}/{len(ref)} prompts")
        if diff > 1e-3 or same_top1 != len(ref):
            raise TracetuneError(f"parity check FAILED for merged-hf: {summary}; nothing written")
        os.replace(tmp, out)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lora_delta(adapter: Path, source: str):
    """GGUF tensor name -> W delta (numpy, GGUF row order), from the PEFT adapter."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    base_cfg = json.loads((Path(source) / "config.json").read_text())
    n_head = base_cfg["num_attention_heads"]
    n_head_kv = base_cfg.get("num_key_value_heads", n_head)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base_cfg["num_hidden_layers"])
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        d = scale * (b.astype(np.float32) @ a.astype(np.float32))  # (out, in)
        if hf_name.endswith("self_attn.q_proj.weight"):
            d = permute_rows(d, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            d = permute_rows(d, n_head_kv)
        deltas[name_map.get_name(hf_name, try_suffixes=(".weight",))] = d
    return lambda name, shape: deltas.get(name)


def _merged_gguf(adapter: Path, source: str, base_gguf: Path, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gguf", dir=out.parent, prefix=".partial-")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        n = rewrite_gguf(base_gguf, tmp_path, dtype=np.float16, delta=_lora_delta(adapter, source))
        summary = _gguf_parity(tmp_path, adapter, source)
        os.replace(tmp_path, out)
        return f"{n} matrices merged; {summary}"
    finally:
        tmp_path.unlink(missing_ok=True)


def _gguf_parity(merged: Path, adapter: Path, source: str, min_cosine: float = 0.999) -> str:
    """Next-token logits of llama.cpp on the merged GGUF vs transformers + PEFT."""
    import torch
    from llama_cpp import Llama

    tok, peft = load_peft(source, adapter)
    llm = Llama(model_path=str(merged), n_ctx=512, logits_all=True, verbose=False,
                n_threads=os.cpu_count())
    cosines, top1 = [], 0
    try:
        for p in PARITY_PROMPTS:
            ids = prompt_ids(tok, p)
            with torch.inference_mode():
                ref = peft(torch.tensor([ids])).logits[0, -1].numpy()
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
            ref_c, got_c = ref - ref.mean(), got - got.mean()
            cosines.append(float(ref_c @ got_c / (np.linalg.norm(ref_c) * np.linalg.norm(got_c))))
            top1 += int(ref.argmax() == got.argmax())
    finally:
        llm.close()
    summary = (f"next-token logit cosine min {min(cosines):.5f} (need >= {min_cosine}); "
               f"next token equal on {top1}/{len(cosines)} prompts")
    if min(cosines) < min_cosine or top1 != len(cosines):
        raise TracetuneError(f"parity check FAILED for the merged GGUF: {summary}; "
                             "nothing written")
    return summary


MODELFILE = '''# Ollama Modelfile written by tracetune: ollama create NAME -f Modelfile
FROM ./model.gguf
TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PARAMETER stop "<|im_end|>"
PARAMETER temperature 0.2
'''


def _ollama(adapter: Path, source: str, base_gguf: Path, out: Path) -> str:
    """A merged GGUF plus a Modelfile. The template is ChatML, as SmolLM2 and Qwen2.5 use."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out.parent, "partial")
    try:
        summary = _merged_gguf(adapter, source, base_gguf, tmp / "model.gguf")
        (tmp / "Modelfile").write_text(MODELFILE)
        os.replace(tmp, out)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
