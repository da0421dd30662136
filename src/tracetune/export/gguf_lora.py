"""PEFT LoRA adapter -> GGUF LoRA adapter for llama.cpp, checked for parity before it is kept.

Tensor names go through the `gguf` package's name map for the architecture. The GGUF conversion
of a llama model permutes the rows of q_proj and k_proj (rotary embedding layout) and transformers
undoes it when it loads a GGUF; an adapter trained in transformers must therefore have the rows of
its q_proj / k_proj lora_B permuted the same way (lora_A is untouched). Forgetting this gives an
adapter that loads and runs but silently does something else: the parity check catches it.

Scale: llama.cpp applies adapter.lora.alpha / rank to every tensor (rank from the tensor's shape);
PEFT applies each layer's own scaling (alpha/r, alpha/sqrt(r) with use_rslora, per-module values
with rank_pattern / alpha_pattern), read here from the loaded PeftModel's layers. Each lora_B is
multiplied by PEFT's scaling / (alpha / rank), which is 1 for a plain LoRA.

What has no GGUF LoRA form is refused by name before llama.cpp sees it: DoRA and other LoRA
variants, LoRA biases, modules_to_save, and an adapted tensor the base GGUF does not hold (a LoRA
on lm_head when the base ties its output to the token embeddings: llama.cpp crashed on it).

Parity: llama.cpp runs a float32 copy of the base GGUF (the same numbers transformers loads), with
and without the adapter, on PEFT's parity sequences; the change the adapter makes to the logits
must match the change PEFT makes (`tracetune.export.parity`, relative error of the effect), and
greedy continuations are compared and reported.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError
from tracetune.export.gguf_copy import rewrite_gguf
from tracetune.export.parity import EffectParity, compare, llama_cpp_logits, reference
from tracetune.export.peft_adapter import (
    LoraMatrices,
    adapter_config,
    check_options,
    load_peft,
    lora_matrices,
)
from tracetune.staging import staging_dir


@dataclass(frozen=True)
class ParityReport:
    effect: EffectParity
    greedy_equal: int
    """Prompts whose greedy continuation is the same in llama.cpp and in transformers + PEFT."""

    @property
    def passed(self) -> bool:
        return self.effect.passed

    def summary(self) -> str:
        return (f"{self.effect.summary()}; greedy continuations equal on "
                f"{self.greedy_equal}/{self.effect.n} prompts")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, interleaved halves -> split halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class GGUFLayout:
    """How a transformers llama-architecture model's tensors appear in its GGUF."""

    arch: object
    """gguf.MODEL_ARCH member."""
    name_map: object
    n_head: int
    n_head_kv: int

    @classmethod
    def of(cls, base_config: dict) -> GGUFLayout:
        """From the base's config.json. Raises TracetuneError for a non-llama architecture."""
        import gguf

        arch = {"llama": gguf.MODEL_ARCH.LLAMA}.get(base_config.get("model_type"))
        if arch is None:
            raise TracetuneError(f"GGUF exports support llama-architecture bases, not "
                                 f"{base_config.get('model_type')!r}")
        n_head = base_config["num_attention_heads"]
        return cls(arch, gguf.get_tensor_name_map(arch, base_config["num_hidden_layers"]), n_head,
                   base_config.get("num_key_value_heads", n_head))

    def name(self, hf_name: str) -> str | None:
        """GGUF tensor name of a transformers parameter name, or None."""
        return self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def rows(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        """`w` (rows = the parameter's output rows) in the GGUF's row order."""
        if ".self_attn.q_proj." in hf_name:
            return permute_rows(w, self.n_head)
        if ".self_attn.k_proj." in hf_name:
            return permute_rows(w, self.n_head_kv)
        return w


def gguf_tensor_names(path: Path) -> set[str]:
    import gguf

    return {t.name for t in gguf.GGUFReader(str(path)).tensors}


def write_gguf_lora(layers: list[LoraMatrices], alpha: float, base_config: dict,
                    base_tensors: set[str], out_file: Path, *, permute_qk: bool = True) -> int:
    """Write the GGUF LoRA file; returns the number of adapted matrices. Raises TracetuneError
    naming a layer whose tensor the base GGUF does not hold.
    `permute_qk=False` exists only to prove that the parity check catches the mistake."""
    import gguf

    layout = GGUFLayout.of(base_config)
    named = []
    for layer in layers:
        gguf_name = layout.name(layer.name)
        if gguf_name is None:
            raise TracetuneError(f"adapted tensor {layer.name} has no GGUF name")
        if gguf_name not in base_tensors:
            tied = gguf_name == "output.weight" and "token_embd.weight" in base_tensors
            raise TracetuneError(
                f"the adapter adapts {layer.name}, which the base GGUF has no tensor for"
                + (" (the base ties lm_head to the token embeddings, so a GGUF LoRA cannot adapt "
                   "the output alone); export merged-gguf, which writes an untied output matrix"
                   if tied else ""))
        named.append((gguf_name, layer))
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[layout.arch])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for gguf_name, layer in sorted(named, key=lambda x: x[0]):
        rank = layer.a.shape[0]
        # llama.cpp multiplies by alpha / rank (or 1 when alpha is 0); PEFT by layer.scaling.
        b = layer.b * (layer.scaling / (alpha / rank) if alpha else layer.scaling)
        if permute_qk:
            b = layout.rows(layer.name, b)
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(layer.a, dtype=np.float32))
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(named)


def export_gguf_lora(adapter_dir: Path, out_file: Path, *, base_gguf: Path,
                     base_source: str, permute_qk: bool = True) -> ParityReport:
    """Write `out_file` (a llama.cpp LoRA for `base_gguf`) only if the parity check passes.
    Raises TracetuneError (one line) for an adapter option or layer with no GGUF LoRA form, a
    failed parity check (with its numbers), or a llama.cpp failure or crash; nothing is then
    left beside `out_file`."""
    cfg = adapter_config(adapter_dir)
    check_options(cfg, "gguf-lora")
    config = json.loads((Path(base_source) / "config.json").read_text())
    work = staging_dir(Path(out_file).parent, "partial")
    try:
        tok, peft = load_peft(base_source, adapter_dir)
        layers = lora_matrices(peft)
        lora = work / "adapter.gguf"
        write_gguf_lora(layers, cfg["lora_alpha"], config, gguf_tensor_names(base_gguf), lora,
                        permute_qk=permute_qk)
        ref = reference(tok, peft)
        del peft
        # A float32 copy of the base: llama.cpp then multiplies the same numbers transformers
        # does, so the check measures the adapter's translation, not the base's quantization.
        f32_base = work / "base-f32.gguf"
        rewrite_gguf(base_gguf, f32_base)
        got_base, got_lora = llama_cpp_logits([(f32_base, None), (f32_base, lora)], ref.seqs,
                                              work, greedy=True)
        effect = compare(ref, got_lora["logits"], got_base["logits"])
        greedy_equal = sum(int(g == s.ids[s.start + 1:])
                           for g, s in zip(got_lora["greedy"], ref.seqs))
        report = ParityReport(effect, greedy_equal)
        if not report.passed:
            raise TracetuneError(f"parity check FAILED for the GGUF LoRA export: "
                                 f"{report.summary()}; nothing written")
        lora.replace(out_file)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
