"""Parity of an export with the adapter as PEFT runs it, measured on the adapter's effect.

The effect of an adapter at one position is D = adapted logits - base logits (each row centred:
adding a constant to every logit changes nothing). The reference D_ref comes from transformers +
PEFT (float32, CPU); the export's D_got from the exported artefact and the base run in the same
runtime and number format (llama.cpp on a base GGUF written like the export; transformers for
merged-hf). Over every position of the parity sequences (PARITY_PROMPTS, each followed by PEFT's
greedy continuation, NEW_TOKENS tokens), with all norms Frobenius norms over (positions, vocab):

    scale      k = <D_got, D_ref> / ||D_ref||^2     must be within 1 +- MAX_SCALE_ERROR (0.05)
    rel_error  ||D_got - D_ref|| / ||D_ref||        must be <= MAX_REL_ERROR (0.1)
                                                               + NOISE_ALLOWANCE (2) * noise
    noise      ||E_base|| / ||D_ref||, E_base = the base in the export's format minus PEFT's base
               (centred logits), the rounding the format itself brings (0 for merged-hf)

Why: a merge at k times PEFT's scale gives D_got ~ k * D_ref. The fitted scale measures k to
within about 1% even where rounding noise is a sixth of the effect (it averages over ~10^6
logits), so a 4x error (rsLoRA merged at alpha/r instead of alpha/sqrt(r): k = 0.25) and
any error above 5% are refused, as is an adapted matrix that was dropped or put in the wrong place
(its share of the effect is then missing from k). The relative error also catches what changes the
effect's shape rather than its size (rows in the wrong order); its allowance for the format's own
rounding keeps a correct float16 merge of a small adapter from failing. Measured on the embedded
model with rsLoRA adapters (r 16, alpha 32, lora_B ~ N(0, sigma^2)), merged-gguf in float16:
sigma 0.01: k 1.0003, rel 0.009, noise 0.008; sigma 0.002: k 1.0001, rel 0.043, noise 0.037;
sigma 0.0005: k 0.994, rel 0.18, noise 0.16. merged-hf and gguf-lora (float32 base) stay below
1e-3. Comparing adapted logits alone cannot see scale: their cosine was 0.9997 for the 4x error.

llama.cpp runs in a child process (`python -m tracetune.export.parity REQUEST.json`): a crash
inside it (a segfault on a malformed file) becomes a TracetuneError here, and the caller's
cleanup still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError

PARITY_PROMPTS = (
    "Write a Python function `add(a, b)` that returns the sum of a and b.",
    "Write a Python function `is_even(n)` that returns True when n is even.",
    "Write a Python function `reverse_list(xs)` that returns xs reversed.",
    "What is a LoRA adapter?",
)
MAX_SCALE_ERROR = 0.05
MAX_REL_ERROR = 0.1
NOISE_ALLOWANCE = 2.0
"""The export's rounding enters twice (adapted and base runs): 2x its measured size."""
NEW_TOKENS = 16


def prompt_ids(tok, prompt: str) -> list[int]:
    """Token ids of a one-turn chat prompt (the base's chat template), ready for the answer."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    """Prompt followed by PEFT's greedy continuation."""
    start: int
    """First checked position: the one predicting the first answer token (prompt length - 1)."""


@dataclass(frozen=True)
class Reference:
    """What PEFT does on the parity sequences: per sequence, logits from `start` on."""

    seqs: list[Sequence]
    adapted: list[np.ndarray]
    """Per sequence (positions, vocab), float32."""
    base: list[np.ndarray]
    """Per sequence (positions, vocab), float32: the same model with the adapter disabled."""


def reference(tok, peft, max_new_tokens: int = NEW_TOKENS) -> Reference:
    """Run transformers + PEFT on PARITY_PROMPTS with and without the adapter."""
    import torch

    seqs = []
    with torch.inference_mode():
        for prompt in PARITY_PROMPTS:
            ids = prompt_ids(tok, prompt)
            gen = peft.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                                               dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.eos_token_id)
            seqs.append(Sequence(gen[0].tolist(), len(ids) - 1))
        adapted = torch_logits(peft, seqs)
        with peft.disable_adapter():
            base = torch_logits(peft, seqs)
    return Reference(seqs, adapted, base)


def torch_logits(model, seqs: list[Sequence]) -> list[np.ndarray]:
    """Per sequence, a transformers model's logits (positions from `start`, vocab), float32."""
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([s.ids])).logits[0, s.start:].float().numpy() for s in seqs]


@dataclass(frozen=True)
class EffectParity:
    """The export's effect on the logits against PEFT's (see the module docstring)."""

    scale: float
    """Fitted k in D_got ~ k * D_ref (1 when both effects are zero)."""
    rel_error: float
    """||D_got - D_ref|| / ||D_ref|| (0 when both are zero)."""
    noise: float
    """||E_base|| / ||D_ref||: the export format's own rounding, relative to the effect."""
    cosine: float
    """Cosine of D_got and D_ref: reported, not decisive."""
    top1_equal: int
    """Sequences whose first answer token is the same in the export and in PEFT."""
    n: int

    @property
    def allowed_rel_error(self) -> float:
        return MAX_REL_ERROR + NOISE_ALLOWANCE * self.noise

    @property
    def passed(self) -> bool:
        return abs(self.scale - 1) <= MAX_SCALE_ERROR and self.rel_error <= self.allowed_rel_error

    def summary(self) -> str:
        return (f"adapter effect: scale {self.scale:.4f} (need 1 +- {MAX_SCALE_ERROR}), relative "
                f"error {self.rel_error:.1e} (need <= {self.allowed_rel_error:.3g} with format "
                f"noise {self.noise:.1e}), cosine {self.cosine:.5f}; next token equal on "
                f"{self.top1_equal}/{self.n} prompts" + (
                    " (the adapter moves the logits less than this format's own rounding does; "
                    "gguf-lora keeps its matrices in float32)"
                    if not self.passed and self.noise >= 0.5 else ""))


def compare(ref: Reference, got_adapted: list[np.ndarray], got_base: list[np.ndarray]
            ) -> EffectParity:
    """The export's effect (got_adapted - got_base, per sequence (positions, vocab)) against
    PEFT's (ref.adapted - ref.base); `got_base` is also compared with `ref.base` to measure the
    export format's own rounding."""
    d_ref = np.concatenate([_centred(a - b) for a, b in zip(ref.adapted, ref.base)]).ravel()
    d_got = np.concatenate([_centred(a - b) for a, b in zip(got_adapted, got_base)]).ravel()
    e_base = np.concatenate([_centred(a - b) for a, b in zip(got_base, ref.base)]).ravel()
    ref_sq, got_norm = float(d_ref @ d_ref), float(np.linalg.norm(d_got))
    err = float(np.linalg.norm(d_got - d_ref))
    if ref_sq > 0:
        ref_norm = ref_sq ** 0.5
        scale, rel, noise = float(d_got @ d_ref) / ref_sq, err / ref_norm, \
            float(np.linalg.norm(e_base)) / ref_norm
        cosine = float(d_got @ d_ref) / (ref_norm * got_norm) if got_norm > 0 else 0.0
    else:  # an adapter with no effect: the export must have none either
        scale, rel, noise, cosine = (1.0, 0.0, 0.0, 1.0) if err == 0 else \
            (float("inf"), float("inf"), 0.0, 0.0)
    top1 = sum(int(a[0].argmax() == b[0].argmax()) for a, b in zip(ref.adapted, got_adapted))
    return EffectParity(scale, rel, noise, cosine, top1, len(ref.seqs))


def _centred(d: np.ndarray) -> np.ndarray:
    d = d.astype(np.float64)
    return d - d.mean(axis=-1, keepdims=True)


# --- llama.cpp, in a child process ---------------------------------------------------------------

def llama_cpp_logits(runs: list[tuple[Path, Path | None]], seqs: list[Sequence], work: Path, *,
                     greedy: bool = False) -> list[dict]:
    """For each (model GGUF, LoRA GGUF or None) in `runs`: {"logits": per sequence (positions
    from `start`, vocab) float32, "greedy": per sequence llama.cpp's own greedy continuation of
    the prompt (token ids, as long as PEFT's) when `greedy`}. Runs llama.cpp in a child process
    writing into `work`; raises TracetuneError when it fails or crashes."""
    request = work / "llama_cpp_request.json"
    request.write_text(json.dumps({
        "runs": [{"model": str(m), "lora": str(lora) if lora else None} for m, lora in runs],
        "seqs": [{"ids": s.ids, "start": s.start} for s in seqs],
        "greedy": greedy, "out": str(work)}))
    proc = subprocess.run(child_command(request), capture_output=True, text=True, check=False)
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise TracetuneError(f"llama.cpp crashed ({name}) while running the parity check")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise TracetuneError(f"llama.cpp failed in the parity check: {last}")
    results = []
    for i in range(len(runs)):
        with np.load(work / f"llama_cpp_run{i}.npz") as f:
            results.append({
                "logits": [f[f"logits{j}"] for j in range(len(seqs))],
                "greedy": [f[f"greedy{j}"].tolist() for j in range(len(seqs))] if greedy else []})
        (work / f"llama_cpp_run{i}.npz").unlink()
    request.unlink()
    return results


def child_command(request: Path) -> list[str]:
    """The command line of the llama.cpp child process."""
    return [sys.executable, "-m", "tracetune.export.parity", str(request)]


def _child(request_path: str) -> None:
    from llama_cpp import Llama

    req = json.loads(Path(request_path).read_text())
    for i, run in enumerate(req["runs"]):
        llm = Llama(model_path=run["model"], lora_path=run["lora"], n_ctx=512, logits_all=True,
                    verbose=False, seed=0, n_threads=os.cpu_count(),
                    type_k=0, type_v=0)  # float32 KV cache: f16 rounding would swamp small deltas
        arrays = {}
        try:
            for j, s in enumerate(req["seqs"]):
                ids, start = s["ids"], s["start"]
                llm.reset()
                llm.eval(ids)
                arrays[f"logits{j}"] = np.array(llm.scores[start:len(ids)], dtype=np.float32)
                if req["greedy"]:
                    arrays[f"greedy{j}"] = np.array(
                        _greedy(llm, ids[:start + 1], len(ids) - start - 1), dtype=np.int64)
        finally:
            llm.close()
        np.savez(Path(req["out"]) / f"llama_cpp_run{i}.npz", **arrays)


def _greedy(llm, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    if n <= 0:
        return out
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if len(out) >= n or llm.token_eos() == tok:  # PEFT's continuation keeps its EOS too
            break
    return out


if __name__ == "__main__":
    _child(sys.argv[1])
