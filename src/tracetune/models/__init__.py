"""Model backends behind one small Protocol, named by spec strings.

Specs:
  embedded[,lora=PATH]                 the embedded SmolLM2-135M-Instruct GGUF through llama.cpp
  gguf:PATH[,lora=PATH][,n_ctx=N]      any GGUF file through llama.cpp, optional GGUF LoRA adapter
  hf:NAME_OR_PATH[,adapter=PATH]       transformers (+ PEFT adapter); `hf:embedded` dequantizes the
    [,device=cuda][,dtype=bfloat16]    embedded GGUF, the same weights llama.cpp serves
  openai:MODEL@URL[,api_key_env=VAR]   any OpenAI-compatible server (vLLM, Ollama, llama.cpp, ...)
  replay:PATH                          scripted outputs from a JSONL file, for deterministic tests
  oracle                               a scripted teacher that knows each task's reference fix
Options are `key=value` after commas; each backend's options are the fields of its config class.
What training, tokenizers, exports and adapted models take from a spec: tracetune.models.resolve.
Backends are imported only when a spec that needs them is loaded, so the CLI starts fast.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from tracetune.models.spec import BACKENDS, ModelSpec, parse_spec
from tracetune.types import Completion, GenerationRequest


@runtime_checkable
class Model(Protocol):
    """Chat messages + sampling parameters + seed in; text, token usage and latency out."""

    spec: str

    def generate(self, request: GenerationRequest) -> Completion:
        """One completion."""
        ...

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Completions in request order; batched or concurrent where the engine allows."""
        ...

    def close(self) -> None:
        """Release weights, connections or servers."""
        ...


def load_model(spec: str | ModelSpec) -> Model:
    """Resolve a spec string and load its backend (the heavy import happens here)."""
    parsed = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    backend_cls = parsed.backend_class()
    return backend_cls(parsed.config, spec=parsed.text)


__all__ = ["BACKENDS", "Model", "ModelSpec", "load_model", "parse_spec"]
