"""The GPU training path: which of packing, the attention kernel, Liger's kernels and
torch.compile a training uses, and the varlen attention function packed rows run through.

Each piece is measured on its own by `benchmarks/train_bench.py`. On the CPU every setting
resolves to what training did before these existed (padded batches, PyTorch's SDPA, no Liger,
no compile), so CPU results stay as they were unless a setting is turned on explicitly.

Packing itself is TRL's padding-free collator (`SFTConfig(padding_free=True)`): a step's rows are
concatenated into one row of shape (1, total_tokens), `position_ids` restart at 0 for each row,
the first label of each row is masked (it would be predicted from the previous row), and
`cu_seq_lens_q/k` (int32, (rows + 1,)) mark where each row starts. With SDPA, transformers turns
the restarting positions into a block-diagonal causal mask of (total_tokens, total_tokens): correct,
but attention then costs as much as one row of total_tokens. The varlen kernel computes only the
blocks on the diagonal.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
from dataclasses import dataclass

from tracetune.errors import TracetuneError
from tracetune.train.config import TrainConfig

VARLEN = "tracetune_varlen"
"""The name the varlen attention function is registered under in transformers."""


@dataclass(frozen=True)
class Kernels:
    """What a training run uses, every `auto` and unset setting decided."""

    packing: bool
    """Padding-free batches (TRL's padding_free)."""
    attention: str
    """sdpa or varlen."""
    liger: bool
    """Liger's RMSNorm, RoPE and SwiGLU kernels."""
    compile: bool
    """torch.compile on the model."""
    cast_inputs: bool = True
    """PEFT's cast of each adapter's input to the adapter's dtype (TrainConfig.cast_adapter_inputs)."""

    def describe(self) -> str:
        """One line for logs: e.g. 'packed, varlen attention, liger, no compile, no input cast'."""
        return ", ".join([
            "packed" if self.packing else "padded", f"{self.attention} attention",
            "liger" if self.liger else "no liger", "compile" if self.compile else "no compile"]
            + ([] if self.cast_inputs else ["no input cast"]))


def varlen_available() -> bool:
    """Whether this torch has torch.nn.attention.varlen (PyTorch 2.9 and later)."""
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_kernels(config: TrainConfig, cuda: bool) -> Kernels:
    """The kernels `config` asks for on this device: unset packing and liger and auto attention
    decided by the device (and by what is installed), explicit settings checked against it.
    Raises TracetuneError (one line) for a setting the device or the installed packages cannot
    honour: liger, varlen or compile without CUDA, liger without liger-kernel, varlen without a
    torch that has it or in float32, packing with DPO, varlen without packing,
    cast_adapter_inputs = false without CUDA mixed precision."""
    sft = config.method == "sft"
    packing = (cuda and sft) if config.packing is None else config.packing
    if packing and not sft:
        raise TracetuneError("packing applies to sft only")
    half = config.dtype != "float32"  # auto is bf16 on CUDA; FlashAttention takes 16-bit only
    if config.attention == "auto":
        attention = "varlen" if cuda and packing and half and varlen_available() else "sdpa"
    else:
        attention = config.attention
    if attention == "varlen":
        if not cuda:
            raise TracetuneError("attention = 'varlen' needs a CUDA device (it is "
                                 "FlashAttention); use sdpa on the CPU")
        if not half:
            raise TracetuneError("attention = 'varlen' needs 16-bit weights (FlashAttention); "
                                 "use dtype bfloat16 or sdpa")
        if not packing:
            raise TracetuneError("attention = 'varlen' runs over packed rows: it needs packing")
        if not varlen_available():
            raise TracetuneError("attention = 'varlen' needs torch.nn.attention.varlen "
                                 "(PyTorch 2.9 or later); use sdpa")
    liger = (cuda and liger_available()) if config.liger is None else config.liger
    if liger and not cuda:
        raise TracetuneError("liger = true needs a CUDA device (Liger's kernels are Triton)")
    if liger and not liger_available():
        raise TracetuneError("liger = true needs the liger-kernel package (pip install "
                             "'tracetune[gpu]')")
    if config.compile and not cuda:
        raise TracetuneError("compile = true needs a CUDA device")
    mixed = cuda and half  # the trainer's autocast: bf16 or fp16 on CUDA
    cast = not mixed if config.cast_adapter_inputs is None else config.cast_adapter_inputs
    if not cast and not mixed:
        raise TracetuneError("cast_adapter_inputs = false needs CUDA mixed precision (bf16 or "
                             "fp16): without autocast nothing would bring 16-bit inputs to the "
                             "adapters' float32 weights")
    return Kernels(packing=packing, attention=attention, liger=liger, compile=config.compile,
                   cast_inputs=cast)


@contextlib.contextmanager
def adapter_input_cast(model, enabled: bool):
    """Within the block, PEFT's LoRA layers of `model` cast their inputs to the adapter's dtype
    (PEFT's default) only if `enabled`; afterwards every layer is as it was.

    Why not peft.helpers.disable_input_dtype_casting, which sets the same per-layer flag
    (`cast_input_dtype_enabled`): it restores the flags by module name, and the trainer wraps the
    model inside the block (FSDP renames every module), so a wrapped run would keep the cast off
    after training. This holds the layers themselves."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [] if enabled else [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.cast_input_dtype_enabled = value


def register_varlen_attention() -> str:
    """Register `varlen_attention_forward` with transformers under VARLEN and return the name
    to load a model with (`attn_implementation=VARLEN`). Safe to call more than once.

    No mask function is registered for it, so transformers builds no (tokens, tokens) mask:
    the rows' boundaries come from the collator's cu_seq_lens."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


@functools.cache
def _varlen_params() -> frozenset[str]:
    """The keyword names this torch's varlen_attn takes (read once: it is called per layer)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None,
                             **kwargs):
    """transformers' attention-function signature over TRL's padding-free batches.

    query: (1, heads, tokens, head_dim); key, value: (1, kv_heads, tokens, head_dim); kwargs
    carry cu_seq_lens_q/k (int32, (rows + 1,)) and max_length_q/k (ints) from the collator.
    Returns ((1, tokens, heads, head_dim), None), causal within each row, as SDPA would give for
    each row alone. A call without cu_seq_lens (one unpadded row, e.g. an evaluation) goes to
    transformers' SDPA function unchanged.

    Why written here: FlashAttention's own package has no wheel for every torch and CUDA build,
    and transformers (5.x) has no binding for PyTorch's built-in varlen kernel; this is that
    binding, about twenty lines over torch.nn.attention.varlen.varlen_attn."""
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None or query.shape[0] != 1 or dropout or sliding_window:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    from torch.nn.attention.varlen import varlen_attn

    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    max_q = int(kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max()))
    max_k = int(kwargs.get("max_length_k") or max_q)
    q = query[0].transpose(0, 1)  # (tokens, heads, head_dim)
    k = key[0].transpose(0, 1)  # (tokens, kv_heads, head_dim)
    v = value[0].transpose(0, 1)
    # varlen_attn's keywords changed between PyTorch releases (is_causal -> window_size, GQA
    # and scale added later): pass what this torch takes.
    params = _varlen_params()
    extra = {}
    if "window_size" in params:
        extra["window_size"] = (-1, 0)  # causal
    else:
        extra["is_causal"] = True
    if scaling is not None:
        if "scale" in params:
            extra["scale"] = scaling
        elif abs(scaling - q.shape[-1] ** -0.5) > 1e-6:
            raise TracetuneError("this torch's varlen_attn has no scale argument and the model "
                                 "scales attention by other than 1/sqrt(head_dim); use sdpa")
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # grouped-query attention: one copy of each kv head per query head of its group
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    cu_q, cu_k = cu_q.to(q.device).int(), cu_k.to(q.device).int()
    out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **extra)
    return out.unsqueeze(0), None  # (1, tokens, heads, head_dim)
