"""transformers (+ PEFT adapter) on CPU or CUDA.

A GGUF file (including the embedded model) is dequantized by transformers once and cached as a plain
checkpoint, so later loads take well under a second instead of ~25 s, and training sees exactly the
weights llama.cpp serves.

A request's JSON schema (`GenerationRequest.json_schema`) is enforced by outlines (its
outlines_core backend: the schema becomes a regular expression, then an index of which tokens
each state allows), as a logits processor that masks every other token before sampling. Of the
maintained structured-generation libraries, outlines fits here: lm-format-enforcer's transformers
integration does not import under transformers 5 (it reads `transformers.tokenization_utils`),
transformers-cfg takes EBNF grammars, not JSON schemas (and its last release predates
transformers 5), and xgrammar requires triton, a large GPU compiler, even on a CPU machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from tracetune.errors import ModelError
from tracetune.models.common import apply_stop
from tracetune.models.configs import HFConfig
from tracetune.types import Completion, GenerationRequest, Usage


def cache_dir() -> Path:
    """Where tracetune caches derived files (TRACETUNE_CACHE, else ~/.cache/tracetune)."""
    return Path(os.environ.get("TRACETUNE_CACHE") or Path.home() / ".cache" / "tracetune")


def materialize_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF into a cached transformers checkpoint directory; returns that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    st = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "hf-from-gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # The weights are already dequantized; drop the GGUF marker so the checkpoint is a plain
        # one that trainers accept (TRL refuses a model still flagged as GGUF-quantized).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is as readable as its parent
        os.replace(tmp, target)  # atomic: a concurrent or killed run never sees half a checkpoint
    except OSError:
        if (target / "config.json").is_file():  # another process won the race
            return target
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_of(name: str) -> Path | None:
    """The GGUF file an HFConfig.model names: the embedded model's, or a path ending in .gguf
    (~ expanded, not checked to exist); None for a hub name or a checkpoint directory.
    Raises ModelSpecError when `embedded` is named but not installed."""
    if name == "embedded":
        from tracetune.models.spec import embedded_gguf_path

        return embedded_gguf_path()
    if name.endswith(".gguf"):
        return Path(name).expanduser()
    return None


def resolve_model_source(name: str) -> str:
    """`embedded` or a .gguf path -> cached checkpoint dir; anything else is passed through.
    Raises ModelError when the .gguf file does not exist."""
    path = gguf_of(name)
    if path is None:
        return name
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    return str(materialize_gguf(path))


def check_reachable(source: str, timeout_s: float = 5.0) -> None:
    """Before transformers loads `source`: a local directory passes; a hub name passes when the
    local Hugging Face cache holds it or the hub answers a TCP connection within `timeout_s`.
    Otherwise one ModelError line at once (transformers would retry for most of a minute and
    print dozens of lines): the hub is unreachable, pass a local directory or .gguf instead.
    The hub's address is $HF_ENDPOINT (default https://huggingface.co)."""
    import os
    import socket
    from urllib.parse import urlparse

    if Path(source).expanduser().exists():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(source, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - a name the cache cannot parse: the load will say why
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelError(f"{source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                         "is set; pass a local checkpoint directory (hf:DIR) or a .gguf file")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http"
                                                                  else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ModelError(f"cannot reach the Hugging Face hub ({host}:{port}: "
                         f"{exc.strerror or exc}) to fetch {source!r}, and it is not in the "
                         "local cache; pass a local checkpoint directory (hf:DIR) or a .gguf "
                         "file") from None


class HFModel:
    def __init__(self, config: HFConfig, spec: str = "") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec or f"hf:{config.model}"
        self.config = config
        self._torch = torch
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device={device} requested but torch sees no CUDA device")
        self.device = device
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}.get(config.dtype)
        if dtype is None:
            raise ModelError(f"unknown dtype {config.dtype!r} (float32, bfloat16, float16, auto)")
        source = resolve_model_source(config.model)
        check_reachable(source)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                source, trust_remote_code=config.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=config.trust_remote_code)
        except OSError as exc:
            raise ModelError(f"cannot load model {config.model!r}: {exc}") from exc
        if config.adapter:
            if not Path(config.adapter).is_dir():
                raise ModelError(f"adapter directory not found: {config.adapter}")
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, config.adapter)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ModelError(f"adapter {config.adapter} does not fit {config.model}: {exc}") \
                    from exc
        self.model = model.to(device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.eos_ids = end_of_turn_ids(self.tokenizer, self.model.generation_config)
        import threading

        self._batcher: Batcher | None = None  # made at the first generate on CUDA
        self._stops: dict = {}  # stop strings -> their StopStringCriteria (or None)
        self._schemas: dict = {}  # JSON schema text -> its outlines_core Index
        self._vocabulary = None  # outlines_core's view of the tokenizer, made at the first schema
        self._batcher_lock = threading.Lock()

    def _encode(self, requests: Sequence[GenerationRequest]):
        texts = [self.tokenizer.apply_chat_template([m.to_dict() for m in r.messages],
                                                    tokenize=False, add_generation_prompt=True)
                 for r in requests]
        return self.tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(self.device)

    def _run(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Generate one left-padded batch; all requests share sampling params, each keeps its own
        seed and JSON schema (or none). Generation is greedy over scores that `SeededSampling`
        turns into one sample per row, so a row's tokens come from its own random stream whatever
        else is in the batch. `SchemaRows` masks each row's scores to its schema first."""
        torch = self._torch
        from transformers import LogitsProcessorList

        p = requests[0].params
        enc = self._encode(requests)  # input_ids: (batch, prompt_len)
        kwargs = {"max_new_tokens": p.max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": self.eos_ids,
                  "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        processors = []
        if any(r.json_schema is not None for r in requests):
            processors.append(SchemaRows(
                [None if r.json_schema is None else self._schema_index(r.json_schema)
                 for r in requests], self.eos_ids[0]))
        if p.temperature > 0:
            processors.append(SeededSampling(p.temperature, p.top_p, [r.seed for r in requests],
                                             self.device))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        stop = self._stop_criterion(p.stop)
        if stop is not None:
            # Each row stops at its first stop string; the batch runs until every row has.
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)  # (batch, prompt_len + new)
        latency_s = (time.perf_counter() - t0) / len(requests)
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for i, r in enumerate(requests):
            new = out[i, prompt_len:]
            n_new = int((new != self.tokenizer.pad_token_id).sum())
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = apply_stop(text, r.params.stop)
            finish = "length" if n_new >= p.max_tokens and not stopped else "stop"
            n_prompt = int(enc["attention_mask"][i].sum())
            results.append(Completion(text, Usage(n_prompt, n_new), latency_s, finish))
        return results

    def _schema_index(self, schema: dict):
        """outlines_core's Index of `schema` (built once per schema): which tokens each state of
        the JSON's regular expression allows, with at most one space between tokens as
        llama.cpp's grammars allow. Raises ModelError when outlines is missing or cannot express
        the schema."""
        key = json.dumps(schema, sort_keys=True)
        try:
            from outlines.backends import outlines_core as backend
            from outlines.models.transformers import Transformers
            from outlines_core import Index
            from outlines_core.json_schema import build_regex_from_schema
        except ImportError as exc:
            raise ModelError("constrained decoding on the hf backend needs outlines "
                             "(pip install outlines)") from exc
        if key not in self._schemas:
            if self._vocabulary is None:
                self._vocabulary = backend.OutlinesCoreBackend(
                    Transformers(self.model, self.tokenizer)).vocabulary
            try:
                regex = build_regex_from_schema(json.dumps(schema), r"[ ]?")
                self._schemas[key] = Index(regex, self._vocabulary)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise ModelError(f"outlines cannot constrain decoding to the JSON schema: {exc}") \
                    from exc
        return self._schemas[key]

    def _stop_criterion(self, stop: tuple[str, ...]):
        """transformers' StopStringCriteria for `stop` (built once per tuple), or None when there
        is no stop string or the tokenizer's vocabulary cannot be matched against one (it
        decodes every token after a probe prefix, which some word-level tokenizers map to an
        unknown token); the text is still cut at the stop string afterwards (apply_stop), only
        generation runs on to max_tokens or the end-of-turn token."""
        stop = tuple(x for x in stop if x)
        if not stop:
            return None
        if stop not in self._stops:
            from transformers import StopStringCriteria

            try:
                self._stops[stop] = StopStringCriteria(self.tokenizer, list(stop))
            except (ValueError, KeyError, IndexError):
                self._stops[stop] = None
        return self._stops[stop]

    def generate(self, request: GenerationRequest) -> Completion:
        """One completion. On CUDA, calls made at the same time from several threads (the
        episodes of `tracetune eval`) are generated together in batches."""
        if self.device.startswith("cuda"):
            if self._batcher is None:
                with self._batcher_lock:
                    if self._batcher is None:
                        self._batcher = Batcher(self.generate_many)
            return self._batcher.submit(request)
        return self._run([request])[0]

    def batch_size(self, requests: Sequence[GenerationRequest]) -> int:
        """Rows per generate call: the spec's batch_size when set; else on the CPU 8, on CUDA
        as many rows as 80% of the free GPU memory holds, each row needing (prompt tokens +
        max_tokens) x the KV cache per token (2 x layers x kv_heads x head_dim x dtype bytes),
        prompt tokens x (4 x hidden + 2 x intermediate) x dtype bytes for the prompt's
        activations in one layer, and 3 x vocab x 4 bytes for its float32 scores (the logits,
        the sampler's probabilities and its noise). An estimate; the other 20% is the margin."""
        if self.config.batch_size > 0:
            return self.config.batch_size
        if not self.device.startswith("cuda"):
            return 8
        torch = self._torch
        cfg = self.model.config.get_text_config()
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        width = next(self.model.parameters()).element_size()
        per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * width
        prompt = max(len(self.tokenizer.apply_chat_template(
            [m.to_dict() for m in r.messages], tokenize=False, add_generation_prompt=True))
            for r in requests) // 2  # characters / 2: generous for tokens
        tokens = prompt + max(r.params.max_tokens for r in requests)
        inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
        per_row = tokens * per_token + prompt * (4 * cfg.hidden_size + 2 * inter) * width + \
            3 * cfg.vocab_size * 4
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(1, int(0.8 * free) // per_row)

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Completions in request order. Requests with equal sampling params (greedy or
        sampled) are generated together, `batch_size` rows at a time, each with its own seed and
        JSON schema (rows of several schemas share a batch)."""
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[object, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.params, []).append(i)
        for idxs in groups.values():
            bs = self.batch_size([requests[i] for i in idxs])
            for start in range(0, len(idxs), bs):
                chunk = idxs[start:start + bs]
                for i, c in zip(chunk, self._run([requests[i] for i in chunk])):
                    results[i] = c
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self.model = None


def end_of_turn_ids(tokenizer, generation_config) -> list[int]:
    """The token ids that end a reply, the tokenizer's end-of-sequence first: it, the special
    token the chat template writes right after an assistant message (e.g. <|im_end|>), and
    those of the generation config (an int or a list). Passed to every generate call, since a
    config made from a GGUF file need not name the end-of-turn token (seen with transformers
    5.17: replies ran on past <|im_end|> into a made-up next turn)."""
    ids = [tokenizer.eos_token_id]
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            tokenize=False)
        after = tokenizer(text.rsplit("y", 1)[-1], add_special_tokens=False)["input_ids"]
        if after and after[0] in tokenizer.all_special_ids:
            ids.append(after[0])
    except (ValueError, TypeError, KeyError, AttributeError):  # no chat template
        pass
    extra = generation_config.eos_token_id
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


class SchemaRows:
    """A transformers logits processor that keeps each row of the batch inside its own JSON
    schema: `indexes` holds one outlines_core Index per row (None: the row is free). Each row
    has its own Guide (parse state), advanced by the row's last token at every step after the
    first; the allowed tokens of all rows are written into one bitmask (rows, ceil(vocab / 32))
    int32 on the CPU, moved to the scores' device once a step and applied there.

    A row whose last token its guide does not accept has ended: only the end-of-turn token after
    a complete message (outlines_core's guides list it as allowed in a final state but do not
    advance on it) and the padding after it can be such a token. From then on the row may only
    repeat `eos_id`, so nothing follows the message even where generate does not stop the row.

    Why written here rather than outlines' own processor: that one holds one Index for the whole
    batch (rows of several schemas could not share a batch) and applies its mask through a
    torch.compile'd kernel one row at a time (a kernel compilation per process, and one
    host-to-device copy per row and step).

    scores: (rows, vocab) -> the same, -inf at every token a constrained row may not take."""

    def __init__(self, indexes: Sequence[object | None], eos_id: int):
        import torch
        from outlines_core import Guide

        self.guides = [None if ix is None else Guide(ix) for ix in indexes]
        self.ended = [False] * len(self.guides)
        self.eos_id = eos_id
        self.mask = None  # (rows, words) int32 bitmask on the CPU, made at the first step
        self._torch = torch

    def __call__(self, input_ids, scores):
        torch = self._torch
        from outlines_core.kernels.torch import fill_next_token_bitmask

        rows, vocab = scores.shape
        first = self.mask is None
        if first:
            self.mask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32)
            self.bits = torch.arange(32, dtype=torch.int32, device=scores.device)
            self.only_eos = torch.zeros(self.mask.shape[1], dtype=torch.int32)
            word, bit = divmod(self.eos_id, 32)
            self.only_eos[word] = (1 << bit) - (1 << 32 if bit == 31 else 0)  # as int32
        last = [] if first else input_ids[:, -1].tolist()
        for r, guide in enumerate(self.guides):
            if guide is None or self.ended[r]:
                continue
            if not first:
                if not guide.accepts_tokens([last[r]]):  # the message is over (end of turn)
                    self.ended[r] = True
                    self.mask[r] = self.only_eos
                    continue
                guide.advance(token_id=last[r], return_tokens=False)
            fill_next_token_bitmask(guide, self.mask[r:r + 1])
        mask = self.mask.to(scores.device, non_blocking=True)
        allowed = ((mask.unsqueeze(-1) >> self.bits) & 1).bool().view(rows, -1)[:, :vocab]
        return scores.masked_fill(~allowed, float("-inf"))


class SeededSampling:
    """A transformers logits processor that samples one token per row from that row's own
    random stream, so a row's sample does not depend on the other rows of its batch (HF's
    own sampling draws every row from one global generator).

    scores: (rows, vocab). Temperature and top-p are transformers' own warpers; the sample is
    argmax(p / E) with E ~ Exponential(1) drawn per row from a generator seeded with the row's
    seed: the exponential race, an exact sample from p (P(argmax = i) = p_i / sum p; vLLM
    samples seeded requests the same way). Returns scores that are 0 at the sampled token and
    -inf elsewhere, so greedy search takes it."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int], device: str):
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generators = [torch.Generator(device=device).manual_seed(int(s) % 2**63)
                           for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (rows, vocab)
        noise = torch.empty_like(probs)
        for row, gen in zip(noise, self.generators):  # one stream per row, one draw per step
            row.exponential_(generator=gen)
        token = (probs / noise).argmax(dim=-1, keepdim=True)  # (rows, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


class Batcher:
    """Gathers single requests made at the same time from several threads into batches:
    `submit` queues a request and waits; one worker thread takes everything queued (after
    `gather_s` for the other threads' requests to arrive) and runs it through `run_many`.

    Why written here: the libraries that batch this way (vLLM, TGI) are whole servers; this is
    the twenty lines the hf backend needs to batch `tracetune eval`'s concurrent episodes."""

    def __init__(self, run_many, gather_s: float = 0.01):
        import threading

        self._run_many = run_many
        self._gather_s = gather_s
        self._cond = threading.Condition()
        self._queue: list = []
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="hf-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Completion:
        from concurrent.futures import Future

        future: Future = Future()
        with self._cond:
            if self._closed:
                raise ModelError("the model was closed")
            self._queue.append((request, future))
            self._cond.notify()
        return future.result()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
            time.sleep(self._gather_s)
            with self._cond:
                batch, self._queue = self._queue, []
            try:
                results = self._run_many([r for r, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - each waiting caller gets it
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)
