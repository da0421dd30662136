"""Training configuration: one dataclass, every field documented; loaded from TOML with errors
that name the file, the section and the key.

Defaults follow seeds 000/001 and the embedded-model calibration: LoRA r=16, alpha=32, dropout
0.05 on every linear layer (attention and MLP), lr 2e-4 with linear decay after 3 warm-up steps,
batch 4, 3 epochs, loss on the completion only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.models.configs import DTYPES
from tracetune.tomlconf import build, read_toml

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION = ("auto", "sdpa", "varlen")
EWC_ACCUMULATE = ("replace", "average")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "sft"
    """sft or dpo."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout."""
    target_modules: tuple[str, ...] = ALL_LINEAR
    """Modules that get LoRA adapters (attention and MLP projections by default)."""
    learning_rate: float = 2e-4
    """Peak learning rate (stage C of seed 001 uses a small one, e.g. 5e-5)."""
    epochs: float = 3.0
    """Passes over the dataset."""
    batch_size: int = 4
    """Rows per device step."""
    grad_accumulation: int = 1
    """Steps accumulated per optimizer update."""
    warmup_steps: int = 3
    """Linear warm-up steps before linear decay."""
    max_seq_len: int = 1024
    """Longest row in tokens, chat template included (longer rows are dropped and counted,
    never truncated)."""
    seed: int = 42
    """Seed for LoRA init, data order and dropout: the same seed gives the same adapter."""
    dpo_beta: float = 0.1
    """DPO: strength of the KL penalty towards the reference model."""
    init_adapter: str | None = None
    """Start from this adapter (multi-stage training, seed 001); None: a fresh LoRA."""
    qlora: bool = False
    """Load the base in 4-bit NF4 (bitsandbytes; needs CUDA)."""
    save_steps: int = 50
    """Checkpoint every this many optimizer steps (a killed run resumes from the last one)."""
    logging_steps: int = 1
    """Log the loss every this many steps."""
    device: str = "auto"
    """cpu, cuda or auto (cuda when available). The base spec's device= (hf:DIR,device=cuda)
    sets it too; the two must not name different devices."""
    dtype: str = "auto"
    """Dtype the base weights load in: float32, bfloat16, float16, or auto (bf16 on CUDA, fp32 on
    CPU); on CUDA, bf16/fp16 also turn on the trainer's mixed precision. The base spec's dtype=
    sets it too; the two must not name different dtypes."""
    packing: bool | None = None
    """SFT: padding-free batches. A step's rows are concatenated into one sequence whose
    positions restart at each row and whose attention stays inside each row, so no pad token
    is computed and no row sees another. Unset: on with CUDA, off on the CPU (there the
    block-diagonal mask costs more than the padding it saves)."""
    attention: str = "auto"
    """Attention kernel: sdpa (PyTorch's scaled_dot_product_attention), varlen (FlashAttention
    over the packed rows through torch.nn.attention.varlen; CUDA with packing only), or auto
    (varlen where it can run, else sdpa)."""
    liger: bool | None = None
    """Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (the liger-kernel package, extra
    `gpu`; CUDA only). Unset: on with CUDA when liger-kernel is installed."""
    cast_adapter_inputs: bool | None = None
    """Whether PEFT casts each adapter's input to the adapter's dtype (float32) before the LoRA
    matmuls, as it does by default. Under CUDA mixed precision that cast is a float32 copy of
    every adapted layer's activations (and another in the backward) which autocast then casts
    back to 16 bits for the matmul, so the result is the same either way. Unset: off under
    CUDA bf16/fp16 mixed precision, on otherwise (without autocast the cast is what lets 16-bit
    inputs meet the float32 adapters; false is refused there)."""
    compile: bool = False
    """torch.compile the model (CUDA only): fewer, fused kernels, after a compile of tens of
    seconds at the first steps."""
    ewc_lambda: float = 0.0
    """EWC penalty strength (train.ewc, seed 004 experiment 4): the loss is the task loss +
    ewc_lambda * sum_i F_i (theta_i - theta*_i)^2 over the LoRA parameters; 0: no pull."""
    ewc_state: str | None = None
    """EWC state of the previous round (its adapter's ewc_state.safetensors: the anchors
    theta* and the diagonal Fisher F) that the penalty pulls towards; needs init_adapter."""
    ewc_fisher_samples: int = 0
    """After training, estimate the diagonal Fisher on this many of this round's rows (the
    first ones) and write the new EWC state into the adapter as ewc_state.safetensors; 0: not."""
    ewc_accumulate: str = "average"
    """How the new state's Fisher uses ewc_state's: replace (this round's only) or average
    (online EWC: a running mean with every round weighted equally); the anchors are always
    the new adapter's parameters."""

    def validate(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise TracetuneError(f"method must be sft or dpo, not {self.method!r}")
        for name in ("r", "alpha", "batch_size", "grad_accumulation", "max_seq_len",
                     "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise TracetuneError(f"{name} must be at least 1")
        if self.warmup_steps < 0:
            raise TracetuneError(f"warmup_steps must be 0 or more, not {self.warmup_steps}")
        if not 0 <= self.dropout < 1 or self.learning_rate <= 0 or self.epochs <= 0:
            raise TracetuneError("need 0 <= dropout < 1, learning_rate > 0 and epochs > 0")
        if not self.target_modules:
            raise TracetuneError("target_modules must name at least one module")
        if self.device not in DEVICES:
            # The trainer runs on the first visible GPU; cuda:N has no meaning for it.
            raise TracetuneError(f"device must be one of {', '.join(DEVICES)}, not "
                                 f"{self.device!r} (pick the GPU with CUDA_VISIBLE_DEVICES)")
        if self.dtype not in DTYPES:
            raise TracetuneError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.attention not in ATTENTION:
            raise TracetuneError(f"attention must be one of {', '.join(ATTENTION)}, not "
                                 f"{self.attention!r}")
        if self.method != "sft" and self.packing:
            raise TracetuneError("packing applies to sft only (a DPO pair is scored as two "
                                 "padded sequences)")
        if self.attention == "varlen" and self.packing is False:
            raise TracetuneError("attention = 'varlen' runs over packed rows: it needs packing "
                                 "(leave packing unset or set it to true)")
        if not 0 <= self.ewc_lambda < float("inf"):  # also refuses nan
            raise TracetuneError(f"ewc_lambda must be a finite number >= 0, not "
                                 f"{self.ewc_lambda}")
        if self.ewc_lambda > 0 and not self.ewc_state:
            raise TracetuneError(f"ewc_lambda = {self.ewc_lambda:g} needs ewc_state (the "
                                 "previous round's ewc_state.safetensors) to pull towards")
        if self.ewc_state and not self.init_adapter:
            raise TracetuneError("ewc_state needs init_adapter: the penalty keeps the adapter "
                                 "near the previous round's, so training must start from it")
        if self.ewc_fisher_samples < 0:
            raise TracetuneError(f"ewc_fisher_samples must be 0 or more, not "
                                 f"{self.ewc_fisher_samples}")
        if self.ewc_accumulate not in EWC_ACCUMULATE:
            raise TracetuneError(f"ewc_accumulate must be one of {', '.join(EWC_ACCUMULATE)}, "
                                 f"not {self.ewc_accumulate!r}")


SECTION = "train"
"""The one table a training config file may hold (or its keys go at the top level)."""


def load_config(path: Path | None, **overrides) -> TrainConfig:
    """Defaults, then the TOML file's [train] table (or its top level), then the `overrides`
    that are not None.

    A file holds either a [train] table and nothing else, or TrainConfig's keys at its top
    level. Raises TracetuneError (one line naming the file) for an unknown section (any table
    but [train]), a key outside [train] in a file that has one, an unknown key, a value of
    the wrong type or out of range."""
    values: dict = {}
    where = "training config"
    if path is not None:
        data = read_toml(Path(path))
        values.update(_train_table(data, Path(path)))
        where = f"{path} [{SECTION}]" if SECTION in data else str(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = build(TrainConfig, values, where)
    config.validate()
    return config


def _train_table(data: dict, path: Path) -> dict:
    """The settings of a parsed config file: its [train] table, or its top level."""
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    stray = sorted(k for k in data if k != SECTION and k not in keys)
    tables = [k for k in stray if isinstance(data[k], dict)]
    if tables:  # a misspelt [train] would otherwise leave every setting at its default
        raise TracetuneError(f"{path}: unknown section(s) {', '.join(f'[{t}]' for t in tables)} "
                             f"(valid: [{SECTION}])")
    if SECTION not in data:
        return data  # unknown top-level keys are named by build()
    outside = sorted(set(data) - {SECTION})
    if outside:
        raise TracetuneError(f"{path}: key(s) {', '.join(outside)} outside [{SECTION}] "
                             f"(put them under [{SECTION}])")
    return data[SECTION]
