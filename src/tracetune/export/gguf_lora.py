"""PEFT LoRA adapter -> GGUF LoRA adapter for llama.cpp, checked for parity before it is kept.

Tensor names go through the `gguf` package's name map for the architecture. The GGUF conversion
of a llama model permutes the rows of q_proj and k_proj (rotary embedding layout) and transformers
undoes it when it loads a GGUF; an adapter trained in transformers must therefore have the rows of
its q_proj / k_proj lora_B permuted the same way (lora_A is untouched). Forgetting this gives an
adapter that loads and runs but silently does something else: the parity check catches it.

Parity: llama.cpp runs a float32 copy of the base GGUF (the same numbers transformers loads), with
and without the adapter; on fixed prompts, the change the adapter makes to the next-token logits
must point the same way as the change it makes in transformers + PEFT (cosine >= `min_cosine`),
and greedy continuations are compared and reported.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError
from tracetune.export.gguf_copy import rewrite_gguf

PARITY_PROMPTS = (
    "Write a Python function `add(a, b)` that returns the sum of a and b.",
    "Write a Python function `is_even(n)` that returns True when n is even.",
    "Write a Python function `reverse_list(xs)` that returns xs reversed.",
    "What is a LoRA adapter?",
)
MIN_COSINE = 0.998


@dataclass(frozen=True)
class ParityReport:
    cosines: list[float]
    """Per prompt: cosine of the adapter's logit change, llama.cpp vs transformers + PEFT."""
    greedy_equal: int
    """Prompts whose greedy continuation is the same on both sides."""
    n_prompts: int
    min_cosine: float

    @property
    def passed(self) -> bool:
        return min(self.cosines) >= self.min_cosine

    def summary(self) -> str:
        return (f"logit-change cosine min {min(self.cosines):.4f} (need >= {self.min_cosine}); "
                f"greedy continuations equal on {self.greedy_equal}/{self.n_prompts} prompts")


def load_peft(base_source: str, adapter_dir: Path):
    """(tokenizer, PEFT model in eval mode, float32) for parity checks."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_source)
    base = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch.float32).eval()
    return tok, PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def prompt_ids(tok, prompt: str) -> list[int]:
    """Token ids of a one-turn chat prompt, ready for the assistant's answer."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, interleaved halves -> split halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _adapter_tensors(adapter_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise TracetuneError(f"{adapter_dir} is not a PEFT adapter (adapter_config.json and "
                             "adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise TracetuneError(f"{adapter_dir}: only LoRA adapters export to GGUF "
                             f"(found {cfg.get('peft_type')})")
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise TracetuneError(f"{adapter_dir}: rsLoRA / DoRA adapters have no GGUF LoRA form")
    return cfg, load_file(str(weights))


def write_gguf_lora(adapter_dir: Path, base_config: dict, out_file: Path, *,
                    permute_qk: bool = True) -> int:
    """Write the GGUF LoRA file; returns the number of adapted matrices.
    `permute_qk=False` exists only to prove that the parity check catches the mistake."""
    import gguf

    cfg, tensors = _adapter_tensors(adapter_dir)
    n_layers = base_config["num_hidden_layers"]
    n_head = base_config["num_attention_heads"]
    n_head_kv = base_config.get("num_key_value_heads", n_head)
    arch = {"llama": gguf.MODEL_ARCH.LLAMA}.get(base_config.get("model_type"))
    if arch is None:
        raise TracetuneError(f"GGUF LoRA export supports llama-architecture bases, not "
                             f"{base_config.get('model_type')!r}")
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg["lora_alpha"]))
    n = 0
    for key in sorted(tensors):
        if ".lora_A." not in key:
            continue
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise TracetuneError(f"no GGUF name for adapter tensor {hf_name}")
        a = tensors[key].astype(np.float32)  # (r, in)
        b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)  # (out, r)
        if permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            b = permute_rows(b, n_head)
        elif permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            b = permute_rows(b, n_head_kv)
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b))
        n += 1
    if n == 0:
        raise TracetuneError(f"{adapter_dir} holds no LoRA matrices")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return n


def check_parity(base_gguf: Path, lora_gguf: Path, base_source: str, adapter_dir: Path, *,
                 min_cosine: float = MIN_COSINE, max_new_tokens: int = 24) -> ParityReport:
    import torch
    from llama_cpp import Llama

    tok, peft = load_peft(base_source, adapter_dir)
    hf = peft.get_base_model()
    kw = dict(n_ctx=512, logits_all=True, verbose=False, seed=0, n_threads=os.cpu_count(),
              type_k=0, type_v=0)  # float32 KV cache: f16 rounding would swamp small deltas
    cpp_base = Llama(model_path=str(base_gguf), **kw)
    cpp_lora = Llama(model_path=str(base_gguf), lora_path=str(lora_gguf), **kw)
    cosines, greedy_equal = [], 0
    try:
        for prompt in PARITY_PROMPTS:
            ids = prompt_ids(tok, prompt)
            with torch.inference_mode():
                gen = peft.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=tok.eos_token_id)
                seq = gen[0].tolist()
                with peft.disable_adapter():
                    hf_base = hf(torch.tensor([seq])).logits[0].numpy()  # (T, vocab)
                hf_lora = peft(torch.tensor([seq])).logits[0].numpy()
            cpp_b = _cpp_logits(cpp_base, seq)
            cpp_l = _cpp_logits(cpp_lora, seq)
            d_hf = (hf_lora - hf_base)[len(ids) - 1:-1].ravel()
            d_cpp = (cpp_l - cpp_b)[len(ids) - 1:-1].ravel()
            denom = float(np.linalg.norm(d_hf) * np.linalg.norm(d_cpp)) or 1e-12
            cosines.append(float(d_hf @ d_cpp) / denom)
            cpp_greedy = _cpp_greedy(cpp_lora, ids, len(seq) - len(ids))
            greedy_equal += cpp_greedy == seq[len(ids):]
    finally:
        cpp_base.close()
        cpp_lora.close()
    return ParityReport(cosines, greedy_equal, len(PARITY_PROMPTS), min_cosine)


def _cpp_logits(llm, seq: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(seq)
    return np.array(llm.scores[:len(seq)], dtype=np.float32)  # (T, vocab)


def _cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if len(out) >= n or llm.token_eos() == tok:
            break
        out.append(tok)
    return out


def export_gguf_lora(adapter_dir: Path, out_file: Path, *, base_gguf: Path,
                     base_source: str, permute_qk: bool = True) -> ParityReport:
    """Write `out_file` only if the parity check passes; otherwise raise with the numbers."""
    config = json.loads((Path(base_source) / "config.json").read_text())
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gguf", dir=out_file.parent, prefix=".partial-")
    os.close(fd)
    tmp_path = Path(tmp)
    f32_base = out_file.parent / f".parity-base-{os.getpid()}.gguf"
    try:
        write_gguf_lora(adapter_dir, config, tmp_path, permute_qk=permute_qk)
        # A float32 copy of the base: llama.cpp then multiplies the same numbers transformers
        # does, so the check measures the adapter's translation, not the base's quantization.
        rewrite_gguf(base_gguf, f32_base)
        report = check_parity(f32_base, tmp_path, base_source, adapter_dir)
        if not report.passed:
            raise TracetuneError(f"parity check FAILED for the GGUF LoRA export: "
                                 f"{report.summary()}; nothing written")
        os.replace(tmp_path, out_file)
        return report
    finally:
        tmp_path.unlink(missing_ok=True)
        f32_base.unlink(missing_ok=True)
