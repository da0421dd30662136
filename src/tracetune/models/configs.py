"""One typed config per backend. Fields are the options a spec string may set (`key=value`)."""

from __future__ import annotations

from dataclasses import dataclass

from tracetune.errors import ModelSpecError

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Weight dtypes a spec (hf: dtype=) or a training config may name; auto: bf16 on CUDA, fp32 on
CPU."""


@dataclass(frozen=True)
class LlamaCppConfig:
    model_path: str
    """GGUF model file."""
    lora: str | None = None
    """GGUF LoRA adapter applied at load."""
    lora_scale: float = 1.0
    """Strength of the LoRA adapter."""
    n_ctx: int = 4096
    """Context window in tokens (prompt + completion)."""
    n_threads: int = 0
    """CPU threads; 0 means all cores."""
    n_gpu_layers: int = 0
    """Layers offloaded to a GPU when llama.cpp was built with GPU support; -1 means all."""
    n_batch: int = 512
    """Prompt tokens processed per llama.cpp batch."""
    prefix_cache: bool = False
    """Reuse the previous call's prompt prefix: faster retries, but outputs then depend on the
    order of calls (llama.cpp's numerics differ slightly between a cached and a fresh prompt)."""


@dataclass(frozen=True)
class HFConfig:
    model: str
    """Hub name, local directory, local .gguf file, or `embedded`."""
    adapter: str | None = None
    """PEFT adapter directory applied on top of the base model."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    dtype: str = "auto"
    """float32, bfloat16, float16, or auto (bf16 on CUDA, fp32 on CPU)."""
    batch_size: int = 0
    """Requests generated together in one left-padded batch (greedy and sampled alike); 0: on
    CUDA as many as 80% of the free GPU memory holds (KV cache and logits of each row), on the
    CPU 8."""
    trust_remote_code: bool = False
    """Allow model code from the hub (only for models you trust)."""

    def validate(self) -> None:
        # Checked when the spec is parsed, so a typo fails before any run starts rather than
        # when the weights load.
        if self.dtype not in DTYPES:
            raise ModelSpecError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.batch_size < 0:
            raise ModelSpecError(f"batch_size={self.batch_size} must be 0 (auto) or more")


@dataclass(frozen=True)
class OpenAIConfig:
    model: str
    """Model name as the server knows it."""
    base_url: str
    """Server URL, usually ending in /v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (a placeholder is sent when it is unset)."""
    concurrency: int = 8
    """Requests in flight at once in generate_many."""
    timeout_s: float = 120.0
    """Per-request timeout."""
    max_retries: int = 3
    """Retries with exponential backoff on connection errors, 429 and 5xx."""
    send_seed: bool = True
    """Send the request's seed (some servers reject the field)."""


@dataclass(frozen=True)
class ReplayConfig:
    path: str
    """JSONL file: one {"text": ..., "match": optional substring of the last user message} a line."""
    strict: bool = True
    """Fail when the script runs out (otherwise: return an empty completion)."""


@dataclass(frozen=True)
class OracleConfig:
    """The scripted teacher: it knows each task's reference (no options)."""
