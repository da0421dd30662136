"""What a PEFT LoRA adapter does to its base, taken from PEFT itself.

Exports never re-derive PEFT's rules (alpha/r, rsLoRA's alpha/sqrt(r), per-module rank and alpha
patterns, DoRA's magnitude vectors): merged exports take each weight's change from PEFT's own
`merge_and_unload`, and the GGUF LoRA export reads each layer's A, B and scaling from the loaded
PeftModel. Options that change the adapter's function in a way a target cannot reproduce are
refused by name before any work (`check_options`).

Tied weights: SmolLM2 (like many small models) ties lm_head to embed_tokens. PEFT adapts the
output projection only, but its merge writes into the shared tensor and so changes the input
embeddings too. `merge` first gives such a parameter its own copy, so the merged model has an
untied output matrix and computes what PEFT computed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracetune.errors import TracetuneError

# adapter_config.json keys whose values every export target reproduces: they select modules,
# set PEFT's per-module scaling (read back from the loaded layers), only initialise training, or
# do nothing at inference.
REPRODUCED = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
    "revision", "inference_mode", "r", "lora_alpha", "use_rslora", "rank_pattern",
    "alpha_pattern", "target_modules", "exclude_modules", "layers_to_transform",
    "layers_pattern", "lora_dropout", "init_lora_weights", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "megatron_core", "runtime_config", "ensure_weight_tying",
})
# Keys that merged targets reproduce through PEFT's merge, but that a GGUF LoRA (a plain A, B and
# one alpha per tensor, for the base's own matrices) cannot express.
MERGE_ONLY = frozenset({
    "use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "fan_in_fan_out",
})
# Trained base biases load straight into the base model, out of sight of the merge's weight
# changes: only merged-hf, which saves the whole loaded model, carries them.
HF_ONLY = frozenset({"bias"})
# init_lora_weights values that leave the base weights as they were; the others (pissa, olora,
# corda, loftq, lora_ga, ...) fold part of the base into the adapter at initialisation, so an
# adapter saved without PEFT's conversion only works on a base that no longer exists.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


def adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json of a PEFT adapter directory. Raises TracetuneError when absent."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise TracetuneError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
    return json.loads(path.read_text())


def check_options(cfg: dict, target: str) -> None:
    """Refuse (TracetuneError, one line naming the option) an adapter whose options `target`
    cannot reproduce. Merged targets (merged-hf, merged-gguf, ollama) reproduce what PEFT's merge
    reproduces (merged-hf also trained base biases); gguf-lora only plain LoRA matrices on the
    base's own linear layers."""
    if cfg.get("peft_type") != "LORA":
        raise TracetuneError(f"only LoRA adapters export (adapter peft_type is "
                             f"{cfg.get('peft_type')!r})")
    defaults = _lora_defaults()
    reproduced = REPRODUCED | (MERGE_ONLY if target != "gguf-lora" else frozenset()) \
        | (HF_ONLY if target == "merged-hf" else frozenset())
    for key in sorted(cfg):
        value = cfg[key]
        if key in reproduced or _unset(value, defaults.get(key)):
            continue
        why = ("a GGUF LoRA holds plain A and B matrices for the base's own tensors; export "
               "merged-gguf instead" if key in MERGE_ONLY
               else "export merged-hf instead" if key in HF_ONLY
               else "the export cannot reproduce what it does")
        raise TracetuneError(f"adapter option {key}={value!r} is not supported by the {target} "
                             f"export ({why})")
    init = cfg.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise TracetuneError(f"adapter option init_lora_weights={init!r}: this initialisation "
                             "changes the base weights, so the adapter does not apply to the "
                             "base as published (save it with PEFT's conversion to a plain LoRA)")


def _lora_defaults() -> dict:
    from peft import LoraConfig

    out = {}
    for f in dataclasses.fields(LoraConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def _unset(value, default) -> bool:
    """Whether a config value leaves the option off (its default, or an empty value)."""
    return value == default or value in (None, False, [], {}, "")


def load_peft(base_source: str, adapter_dir: Path):
    """(tokenizer, PeftModel in eval mode, float32 on the CPU) for `adapter_dir` on its base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracetune.models.hf import check_reachable

    check_reachable(base_source)
    tok = AutoTokenizer.from_pretrained(base_source)
    base = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch.float32).eval()
    try:
        return tok, PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    except (ValueError, RuntimeError, KeyError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # A base of another shape: torch lists every tensor; the first mismatch says enough.
        mismatch = next((ln for ln in lines if ln.startswith("size mismatch")), None)
        if mismatch is not None:
            n = sum(ln.startswith("size mismatch") for ln in lines)
            raise TracetuneError(
                f"adapter {adapter_dir} was trained on a base of another shape and does not fit "
                f"{base_source} ({mismatch.rstrip('.')}; {n} tensors differ); pass the base "
                "it was trained on with --base") from exc
        raise TracetuneError(f"adapter {adapter_dir} does not load on {base_source}: "
                             f"{lines[0] if lines else type(exc).__name__}") from exc


def _plain_name(name: str) -> str:
    """A parameter's name in the merged model: PEFT's wrapper levels removed."""
    return ".".join(p for p in name.split(".")
                    if p not in ("base_layer", "original_module", "token_adapter"))


def untie(model) -> list[str]:
    """Give each parameter that shares its tensor with another, where a PEFT wrapper holds one of
    the sharers, its own copy (and mark the config untied). Returns the names (in the merged
    model) of the parameters that received a copy."""
    import torch

    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(p.data_ptr(), []).append(name)
    untied = []
    for names in groups.values():
        if len(names) < 2 or not any({"base_layer", "original_module"} & set(n.split("."))
                                     for n in names):
            continue
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            setattr(module, attr, torch.nn.Parameter(getattr(module, attr).detach().clone(),
                                                     requires_grad=False))
            untied.append(_plain_name(name))
    if untied:
        model.config.tie_word_embeddings = False
    return untied


def merge(peft) -> tuple[object, dict[str, np.ndarray]]:
    """PEFT's own merge of the adapter into its base -> (the merged transformers model,
    {parameter name: merged - base weight, float32 numpy, the parameter's shape} for every
    parameter the adapter changes). Consumes `peft` (its layers are merged in place)."""
    import torch

    inner = peft.get_base_model()
    untie(inner)
    before = {_plain_name(n): p.detach().clone() for n, p in inner.named_parameters()
              if {"base_layer", "original_module"} & set(n.split("."))}
    with torch.no_grad():
        merged = peft.merge_and_unload()
    params = dict(merged.named_parameters())
    deltas = {}
    for name in list(before):
        if name not in params:
            raise TracetuneError(f"PEFT's merge left no parameter {name}; this adapter's "
                                 "structure cannot be exported merged")
        d = params[name].detach().float() - before.pop(name).float()  # frees the copy
        if bool(d.any()):
            deltas[name] = d.numpy()
    return merged, deltas


@dataclass(frozen=True)
class LoraMatrices:
    """One adapted linear layer, as PEFT applies it: W x + scaling * B (A x)."""

    name: str
    """The adapted weight's parameter name in the base model, e.g.
    model.layers.0.self_attn.q_proj.weight."""
    a: np.ndarray
    """(r, in_features), float32."""
    b: np.ndarray
    """(out_features, r), float32."""
    scaling: float
    """PEFT's multiplier for this layer: alpha/r, alpha/sqrt(r) with use_rslora, per module with
    rank_pattern / alpha_pattern."""


def lora_matrices(peft, adapter: str = "default") -> list[LoraMatrices]:
    """The A, B and scaling of every LoRA layer of a loaded PeftModel. Raises TracetuneError
    naming the layer for a layer that is not a plain LoRA on a linear layer (DoRA or another
    LoRA variant, a LoRA bias, an embedding or convolution LoRA)."""
    from peft.tuners.lora import Linear, LoraLayer

    out = []
    for name, module in peft.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.scaling:
            continue
        weight = _plain_name(f"{name}.weight")
        if not isinstance(module, Linear) or adapter not in module.lora_A:
            raise TracetuneError(f"adapted layer {name} ({type(module.get_base_layer()).__name__})"
                                 " has no GGUF LoRA form; export merged-gguf instead")
        variant = getattr(module, "lora_variant", {}).get(adapter)
        if variant is not None or module.use_dora.get(adapter):
            kind = type(variant).__name__ if variant is not None else "DoRA"
            raise TracetuneError(f"adapted layer {name} is a {kind} layer (use_dora or another "
                                 "LoRA variant), which has no GGUF LoRA form; export merged-gguf "
                                 "instead")
        if module.lora_bias.get(adapter) or getattr(module, "fan_in_fan_out", False):
            raise TracetuneError(f"adapted layer {name} uses lora_bias or fan_in_fan_out, which "
                                 "have no GGUF LoRA form; export merged-gguf instead")
        out.append(LoraMatrices(
            weight,
            module.lora_A[adapter].weight.detach().float().numpy(),
            module.lora_B[adapter].weight.detach().float().numpy(),
            float(module.scaling[adapter])))
    if not out:
        raise TracetuneError("the adapter holds no LoRA matrices")
    return out
