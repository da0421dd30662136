"""`tracetune export`: an adapter -> gguf-lora | merged-hf | merged-gguf | ollama, each ending
with a parity check that fails the export loudly (and leaves nothing behind) when it does not hold.

  gguf-lora    OUT.gguf: a llama.cpp LoRA adapter for the base GGUF (`gguf:BASE,lora=OUT.gguf`)
  merged-hf    OUT/: merged safetensors + tokenizer (transformers, vLLM, ...)
  merged-gguf  OUT.gguf: the base GGUF's tensors in float16 with the adapter merged in
  ollama       OUT/: model.gguf (as merged-gguf) + Modelfile (`ollama create NAME -f Modelfile`)

Every export reproduces the function PEFT computes or refuses: merged targets take the weight
changes from PEFT's own merge (rsLoRA, rank/alpha patterns, DoRA, an adapted lm_head tied to the
embeddings, which becomes an untied output matrix); options a target cannot reproduce are refused
by name before any work (`peft_adapter.check_options`). The parity check compares the adapter's
effect on the logits (`parity`). All work happens in a staging directory beside the output that
is removed whatever happens; one left by a killed process is removed by the next export there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError
from tracetune.export.gguf_copy import rewrite_gguf
from tracetune.export.gguf_lora import GGUFLayout, export_gguf_lora, gguf_tensor_names
from tracetune.export.parity import compare, llama_cpp_logits, reference, torch_logits
from tracetune.export.peft_adapter import (
    adapter_config,
    check_options,
    load_peft,
    merge,
)
from tracetune.models.resolve import gguf_file, hf_source, weight_options
from tracetune.staging import staging_dir

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
    hf:PATH.gguf). Raises TracetuneError (one line) for bad requests, adapter options the target
    cannot reproduce (named), failed parity checks and crashes of llama.cpp; `out` is then not
    created and no temporary file stays beside it."""
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
    check_options(adapter_config(adapter), target)
    if target == "gguf-lora":
        report = export_gguf_lora(adapter, out, base_gguf=base_gguf, base_source=source)
        return report.summary()
    if target == "merged-hf":
        return _merged_hf(adapter, source, out)
    if target == "merged-gguf":
        return _merged_gguf(adapter, source, base_gguf, out)
    return _ollama(adapter, source, base_gguf, out)


def _merged_hf(adapter: Path, source: str, out: Path) -> str:
    """PEFT's merge, saved and reloaded; parity of the reloaded model's effect with PEFT's."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp = staging_dir(out.parent, "partial")
    try:
        tok, peft = load_peft(source, adapter)
        ref = reference(tok, peft)
        merged, _ = merge(peft)
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del merged, peft
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        parity = compare(ref, torch_logits(reloaded, ref.seqs), ref.base)
        if not parity.passed:
            raise TracetuneError(f"parity check FAILED for merged-hf: {parity.summary()}; "
                                 "nothing written")
        os.replace(tmp, out)
        return parity.summary()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_deltas(deltas: dict[str, np.ndarray], base_config: dict, base_tensors: set[str]):
    """Merged-weight changes by transformers name -> (delta function for `rewrite_gguf`,
    `copies` for it). A change to lm_head or the embeddings of a base whose GGUF ties them
    (no output.weight) makes an untied output.weight. Raises TracetuneError naming a changed
    parameter the GGUF has no tensor for."""
    layout = GGUFLayout.of(base_config)
    by_gguf: dict[str, np.ndarray] = {}
    for name, d in deltas.items():
        gguf_name = layout.name(name)
        tied_output = gguf_name == "output.weight" and "token_embd.weight" in base_tensors
        if gguf_name is None or (gguf_name not in base_tensors and not tied_output):
            raise TracetuneError(f"the adapter changes {name}, which the base GGUF has no "
                                 "tensor for")
        by_gguf[gguf_name] = layout.rows(name, d)
    copies = {}
    if "output.weight" not in base_tensors and by_gguf.keys() & {"output.weight",
                                                                  "token_embd.weight"}:
        copies["output.weight"] = "token_embd.weight"
    return (lambda name, shape: by_gguf.get(name)), copies


def _merged_gguf(adapter: Path, source: str, base_gguf: Path, out: Path) -> str:
    """The base GGUF in float16 with PEFT's merged changes added; parity of llama.cpp on it
    against llama.cpp on the base written the same way."""
    base_config = json.loads((Path(source) / "config.json").read_text())
    work = staging_dir(out.parent, "partial")
    try:
        tok, peft = load_peft(source, adapter)
        ref = reference(tok, peft)
        _, deltas = merge(peft)
        del peft
        delta, copies = gguf_deltas(deltas, base_config, gguf_tensor_names(base_gguf))
        merged, base16 = work / "model.gguf", work / "base-f16.gguf"
        n = rewrite_gguf(base_gguf, merged, dtype=np.float16, delta=delta, copies=copies)
        rewrite_gguf(base_gguf, base16, dtype=np.float16)
        got, got_base = llama_cpp_logits([(merged, None), (base16, None)], ref.seqs, work)
        parity = compare(ref, got["logits"], got_base["logits"])
        untied = " (untied output.weight written)" if copies else ""
        if not parity.passed:
            raise TracetuneError(f"parity check FAILED for the merged GGUF: "
                                 f"{parity.summary()}; nothing written")
        os.replace(merged, out)
        return f"{n} matrices merged{untied}; {parity.summary()}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ollama(adapter: Path, source: str, base_gguf: Path, out: Path) -> str:
    """A merged GGUF plus a Modelfile whose TEMPLATE, SYSTEM and stops reproduce the base
    tokenizer's chat template (`tracetune.export.ollama`)."""
    from transformers import AutoTokenizer

    from tracetune.export.ollama import chat_format

    fmt = chat_format(AutoTokenizer.from_pretrained(source))  # may refuse: before the merge
    tmp = staging_dir(out.parent, "partial")
    try:
        summary = _merged_gguf(adapter, source, base_gguf, tmp / "model.gguf")
        (tmp / "Modelfile").write_text(fmt.modelfile("model.gguf"))
        os.replace(tmp, out)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
