"""GGUF models through llama-cpp-python, with an optional GGUF LoRA adapter applied at load.

A request's JSON schema (`GenerationRequest.json_schema`) becomes a GBNF grammar through
llama-cpp-python's converter; llama.cpp then samples only tokens the grammar allows, and only the
end of turn once the JSON value is complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from tracetune.errors import ModelError
from tracetune.models.configs import LlamaCppConfig
from tracetune.types import Completion, GenerationRequest, Usage, finish_reason_of

# llama-cpp-python's converter (0.3.36) lets a JSON string hold raw control characters (a
# newline), which JSON forbids, so a constrained message could still fail to parse. This is the
# rule of llama.cpp's own converter, which excludes them.
JSON_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


# It also writes a literal (a `const`, an `enum` value, a property name) without escaping its
# backslashes, so the JSON text of a string holding a quote (`"\"\"\"doc\"\"\""`) ends the GBNF
# literal early and the grammar does not parse. llama.cpp's own converter escapes them.
GBNF_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def schema_grammar(schema: dict) -> str:
    """The GBNF grammar of JSON values valid under `schema` (strings without raw control
    characters; literals of any text). Raises ModelError when the converter cannot express the
    schema."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):  # the library's converter, literals escaped in full
        def _format_literal(self, literal: str) -> str:
            return '"' + re.sub(r'[\r\n"\\]', lambda m: GBNF_LITERAL_ESCAPES[m.group(0)],
                                literal) + '"'

    try:
        converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        converter.visit(converter.resolve_refs(json.loads(json.dumps(schema)), "stdin"), "")
        gbnf = converter.format_grammar()
    except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise ModelError(f"llama.cpp cannot turn the JSON schema into a grammar: {exc}") from exc
    return re.sub(r"^char ::= .*$", lambda _: JSON_CHAR_RULE, gbnf, count=1, flags=re.MULTILINE)


class LlamaCppModel:
    """One llama.cpp context. Calls are serialised (a context holds one sequence at a time)."""

    def __init__(self, config: LlamaCppConfig, spec: str = "") -> None:
        self.spec = spec or f"gguf:{config.model_path}"
        self.config = config
        for label, path in (("model", config.model_path), ("LoRA adapter", config.lora)):
            if path is not None and not Path(path).is_file():
                raise ModelError(f"{label} file not found: {path}")
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelError("the llamacpp backend needs llama-cpp-python "
                             "(pip install llama-cpp-python)") from exc
        try:
            self._llm = Llama(
                model_path=str(config.model_path),
                lora_path=str(config.lora) if config.lora else None,
                lora_scale=config.lora_scale,
                n_ctx=config.n_ctx,
                n_threads=config.n_threads or os.cpu_count(),
                n_gpu_layers=config.n_gpu_layers,
                n_batch=config.n_batch,
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {config.model_path}"
                             f"{' with LoRA ' + str(config.lora) if config.lora else ''}: {exc}") from exc
        # Every llama.cpp call runs on this one thread. llama.cpp's CPU thread pool (OpenMP) is
        # tied to the calling thread, and idle pools spin: calls from many threads (concurrent
        # episodes) made generation 2.4x slower on 2 cores, with the same outputs.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._grammars: dict[str, object] = {}  # schema text -> LlamaGrammar (worker thread)

    def _grammar(self, request: GenerationRequest):
        """The LlamaGrammar of the request's JSON schema (built once per schema), or None."""
        if request.json_schema is None:
            return None
        key = json.dumps(request.json_schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            self._grammars[key] = LlamaGrammar.from_string(schema_grammar(request.json_schema),
                                                           verbose=False)
        return self._grammars[key]

    def generate(self, request: GenerationRequest) -> Completion:
        return self._worker.submit(self._generate, request).result()

    def _generate(self, request: GenerationRequest) -> Completion:
        p = request.params
        t0 = time.perf_counter()
        if not self.config.prefix_cache:
            self._llm.reset()  # read the whole prompt: the same request gives the same text
        try:
            out = self._llm.create_chat_completion(
                messages=[m.to_dict() for m in request.messages],
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                stop=list(p.stop) or None,
                seed=request.seed,
                grammar=self._grammar(request),
            )
        except ValueError as exc:  # e.g. prompt longer than the context window
            raise ModelError(f"llama.cpp rejected the request: {exc}") from exc
        latency_s = time.perf_counter() - t0
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            latency_s=latency_s,
            finish_reason=finish_reason_of(choice.get("finish_reason"),
                                           choice["message"].get("content")),
        )

    def generate_stream(self, request: GenerationRequest,
                        on_delta: Callable[[str], None]) -> Completion:
        """Like `generate`, calling `on_delta(text)` with each piece of the answer as llama.cpp
        produces it (on the model's worker thread); returns the whole Completion at the end.
        The pieces joined equal the Completion's text, and the text equals `generate`'s for the
        same request (same seed, prompt read afresh)."""
        return self._worker.submit(self._generate_stream, request, on_delta).result()

    def _generate_stream(self, request: GenerationRequest,
                         on_delta: Callable[[str], None]) -> Completion:
        p = request.params
        t0 = time.perf_counter()
        if not self.config.prefix_cache:
            self._llm.reset()
        pieces, finish = [], None
        try:
            for chunk in self._llm.create_chat_completion(
                    messages=[m.to_dict() for m in request.messages], temperature=p.temperature,
                    top_p=p.top_p, max_tokens=p.max_tokens, stop=list(p.stop) or None,
                    seed=request.seed, grammar=self._grammar(request), stream=True):
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content")
                if piece:
                    pieces.append(piece)
                    on_delta(piece)
                finish = choice.get("finish_reason") or finish
        except ValueError as exc:
            raise ModelError(f"llama.cpp rejected the request: {exc}") from exc
        text = "".join(pieces)
        # llama-cpp-python's stream carries no usage. The context then holds the prompt and
        # every generated token but the last (which was sampled, never evaluated).
        completion_tokens = len(self._llm.tokenize(text.encode(), add_bos=False,
                                                   special=True)) if text else 0
        prompt_tokens = max(0, self._llm.n_tokens - max(0, completion_tokens - 1))
        return Completion(text=text, usage=Usage(prompt_tokens, completion_tokens),
                          latency_s=time.perf_counter() - t0,
                          finish_reason=finish_reason_of(finish, text))

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.shutdown(wait=True)
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None
