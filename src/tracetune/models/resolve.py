"""A model spec -> what each consumer needs, so no code outside tracetune.models parses a spec.

  hf_source(spec)       the checkpoint transformers loads (training, tokenizers, exports)
  weight_options(spec)  the spec's options that change how those weights load (device, dtype, ...)
  gguf_file(spec)       the GGUF file behind the spec (GGUF exports), or None
  gguf_base(spec)       the spec naming only its llama.cpp GGUF (embedded or gguf:PATH), or None
  adapted_spec(...)     the spec of the base model with a trained adapter, per export target

Places that name weights also take the bare forms they took before they took specs: a hub name,
a checkpoint directory or a .gguf path with no prefix means hf:THAT (see weights_spec).
Nothing heavy is imported here; hf_source imports transformers only to dequantize a GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracetune.errors import ModelError, ModelSpecError
from tracetune.models.spec import ModelSpec, parse_spec

ADAPTED_TARGETS = ("gguf-lora", "merged-gguf", "none")
"""Export targets adapted_spec knows: a GGUF LoRA on the GGUF base, a merged GGUF, or none (the
PEFT adapter on the training weights in transformers)."""

INFERENCE_ONLY = {
    "hf": ("batch_size",),
    "llamacpp": ("lora_scale", "n_ctx", "n_threads", "n_gpu_layers", "n_batch", "prefix_cache"),
}
"""Per backend, the options that shape serving, not the weights: consumers of weights (training,
tokenizers, exports) accept and ignore them. lora_scale only scales `lora=`, which they refuse.
Every other option of a config with weights is a field of WeightOptions."""

# Why a backend has nothing local that transformers could load.
_NO_WEIGHTS = {
    "openai": "an OpenAI-compatible server keeps its weights and tokenizer behind its API",
    "replay": "replay: plays scripted outputs from a file and has no weights",
    "oracle": "the oracle is a scripted teacher and has no weights",
}


def weights_spec(spec: str | ModelSpec) -> ModelSpec:
    """parse_spec for places that name weights, plus the bare forms they accepted before specs:
    text with no ':' before its first comma (a hub name, a checkpoint directory, a .gguf path)
    is read as hf:TEXT. Raises ModelSpecError for anything else parse_spec refuses."""
    if isinstance(spec, ModelSpec):
        return spec
    try:
        return parse_spec(spec)
    except ModelSpecError:
        if not _bare(spec):
            raise
    return parse_spec(f"hf:{spec.strip()}")


def _bare(text: str) -> bool:
    # Specs name their kind before a ':' or are a keyword; hub names and local paths have no
    # ':'. A keyword's own error (the embedded model not installed) must not turn into hf:'s.
    head = text.strip().partition(",")[0]
    return bool(head) and ":" not in head and head not in ("embedded", "oracle")


def require_weights(spec: str | ModelSpec) -> ModelSpec:
    """The parsed spec when it names weights and a tokenizer (embedded, gguf:PATH, hf:...,
    or a bare hub name or directory), without loading anything; else one ModelSpecError line
    (openai:, replay:, oracle)."""
    return _local(weights_spec(spec))


def _local(parsed: ModelSpec) -> ModelSpec:
    """`parsed` when it names weights on this machine (or the hub); else one ModelSpecError line."""
    reason = _NO_WEIGHTS.get(parsed.backend)
    if reason is not None:
        raise ModelSpecError(f"model spec {parsed.text!r} names no weights or tokenizer to load "
                             f"({reason}); name them with embedded, gguf:PATH or hf:NAME_OR_DIR")
    return parsed


def hf_source(spec: str | ModelSpec) -> str:
    """What transformers' from_pretrained loads for `spec`: a hub name (hf:NAME), a checkpoint
    directory (hf:DIR), or, for a GGUF (embedded, gguf:PATH, hf:embedded, hf:PATH.gguf), the
    cached checkpoint it dequantizes to (the first call takes ~25 s for the embedded model, later
    ones return at once). An adapter the spec stacks (adapter=, lora=) is not part of the source:
    see weight_options. Raises ModelSpecError for a bad spec or one without weights (openai:,
    replay:, oracle), ModelError when a GGUF file does not exist."""
    from tracetune.models.hf import materialize_gguf, resolve_model_source

    parsed = _local(weights_spec(spec))
    if parsed.backend == "hf":
        return resolve_model_source(parsed.config.model)
    # The very file llama.cpp reads (it does not expand ~ either), whatever its suffix.
    path = Path(parsed.config.model_path)
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    return str(materialize_gguf(path))


@dataclass(frozen=True)
class WeightOptions:
    """The options of a spec that change which weights transformers loads, or how.

    A GGUF spec (embedded, gguf:PATH) sets no device/dtype of its own: they stay auto."""

    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    dtype: str = "auto"
    """One of configs.DTYPES; auto: bf16 on CUDA, fp32 on CPU."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""
    adapter: str | None = None
    """A PEFT adapter directory the spec stacks on its base (hf: adapter=)."""
    lora: str | None = None
    """A GGUF LoRA file the spec stacks on its base (embedded/gguf: lora=)."""

    @property
    def stacked(self) -> str | None:
        """The stacked adapter as the spec writes it (`adapter=DIR` or `lora=FILE`), or None."""
        if self.adapter:
            return f"adapter={self.adapter}"
        if self.lora:
            return f"lora={self.lora}"
        return None


def weight_options(spec: str | ModelSpec) -> WeightOptions:
    """The spec's options that matter for loading its weights (INFERENCE_ONLY lists those that do
    not). Raises ModelSpecError for a bad spec or one without weights (openai:, replay:, oracle)."""
    parsed = _local(weights_spec(spec))
    config = parsed.config
    if parsed.backend == "hf":
        return WeightOptions(device=config.device, dtype=config.dtype,
                             trust_remote_code=config.trust_remote_code, adapter=config.adapter)
    return WeightOptions(lora=config.lora)


def gguf_file(spec: str | ModelSpec) -> Path | None:
    """The GGUF file whose weights `spec` names (not checked to exist): the model file of
    embedded/gguf:PATH, or the GGUF an hf: spec dequantizes (hf:embedded, hf:PATH.gguf); None for
    a checkpoint, a hub name, or a spec without weights. Raises ModelSpecError for a bad spec."""
    from tracetune.models.hf import gguf_of

    parsed = weights_spec(spec)
    if parsed.backend == "llamacpp":
        return Path(parsed.config.model_path)
    if parsed.backend == "hf":
        return gguf_of(parsed.config.model)
    return None


def gguf_base(spec: str | ModelSpec) -> str | None:
    """The spec naming only the GGUF llama.cpp serves for `spec`, its options dropped:
    `embedded`, `gguf:PATH` (or `llamacpp:PATH`), exactly as `spec` writes it before its first
    comma; None for any other backend. Raises ModelSpecError for a bad spec."""
    parsed = weights_spec(spec)
    if parsed.backend != "llamacpp":
        return None
    if parsed.prefix == "embedded":
        return "embedded"
    return f"{parsed.prefix}:{parsed.config.model_path}"


def adapted_spec(base: str, *, target: str, artifact: Path, adapter_dir: Path,
                 train_base: str) -> str:
    """The spec of the model a training run produced, per export target:

      gguf-lora    BASE,lora=ARTIFACT   (BASE as written, its options kept; it must be a GGUF spec
                                         that llama.cpp serves: embedded, gguf:PATH)
      merged-gguf  gguf:ARTIFACT
      none         hf:SOURCE,adapter=ADAPTER_DIR, SOURCE being train_base without its hf: prefix
                   and with its options (an embedded/gguf: train_base becomes hf:embedded /
                   hf:PATH, llama.cpp's own options dropped)

    The strings are byte-for-byte those earlier versions derived, so runs cached under them stay
    valid. Raises ModelSpecError (one line) for gguf-lora on a base llama.cpp cannot serve, a
    train_base without weights or that stacks an adapter, or an unknown target."""
    if target == "gguf-lora":
        if weights_spec(base).backend != "llamacpp":
            raise ModelSpecError(f"[export] target gguf-lora needs a GGUF base model (embedded or "
                                 f"gguf:PATH), not {base!r}; set [models] adapted")
        return f"{base},lora={artifact}"
    if target == "merged-gguf":
        return f"gguf:{artifact}"
    if target == "none":
        return f"{_as_hf(train_base)},adapter={adapter_dir}"
    raise ModelSpecError(f"unknown export target {target!r} ({', '.join(ADAPTED_TARGETS)})")


def _as_hf(train_base: str) -> str:
    """train_base as an hf: spec of the same weights, for a PEFT adapter to go on top."""
    parsed = _local(weights_spec(train_base))
    stacked = weight_options(parsed).stacked
    if stacked:
        raise ModelSpecError(f"train base {train_base!r} stacks {stacked}; an adapter is trained "
                             "on bare base weights, so name them without it")
    if parsed.backend == "hf":
        # Text surgery on purpose: it keeps the options exactly as written (and the bare legacy
        # forms), which is what cached runs recorded.
        return "hf:" + train_base.removeprefix("hf:")
    if parsed.prefix == "embedded":
        return "hf:embedded"
    path = parsed.config.model_path
    if not path.endswith(".gguf"):
        # HFConfig.model treats only a name ending in .gguf as a GGUF file to dequantize.
        raise ModelSpecError(f"train base {train_base!r}: the hf backend recognises a GGUF file "
                             "by its .gguf suffix; rename the file")
    return f"hf:{path}"
