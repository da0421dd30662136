"""transformers (+ PEFT adapter) on CPU or CUDA.

A GGUF file (including the embedded model) is dequantized by transformers once and cached as a plain
checkpoint, so later loads take well under a second instead of ~25 s, and training sees exactly the
weights llama.cpp serves.
"""

from __future__ import annotations

import hashlib
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

    def _encode(self, requests: Sequence[GenerationRequest]):
        texts = [self.tokenizer.apply_chat_template([m.to_dict() for m in r.messages],
                                                    tokenize=False, add_generation_prompt=True)
                 for r in requests]
        return self.tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(self.device)

    def _run(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Generate one padded batch; all requests share sampling params."""
        torch = self._torch
        p = requests[0].params
        enc = self._encode(requests)  # input_ids: (batch, prompt_len)
        kwargs = {"max_new_tokens": p.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if p.temperature > 0:
            kwargs.update(do_sample=True, temperature=p.temperature, top_p=p.top_p)
            torch.manual_seed(requests[0].seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
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

    def generate(self, request: GenerationRequest) -> Completion:
        return self._run([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy requests with equal params are batched; sampled ones run alone, each with its
        own seed, so a sample does not depend on what else was in the batch."""
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[object, list[int]] = {}
        for i, r in enumerate(requests):
            if r.params.temperature > 0:
                results[i] = self.generate(r)
            else:
                groups.setdefault(r.params, []).append(i)
        bs = max(1, self.config.batch_size)
        for idxs in groups.values():
            for start in range(0, len(idxs), bs):
                chunk = idxs[start:start + bs]
                for i, c in zip(chunk, self._run([requests[i] for i in chunk])):
                    results[i] = c
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
