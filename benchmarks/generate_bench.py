"""Generation throughput: tracetune's backends against the raw engines under them, same prompts.

    python benchmarks/generate_bench.py [--model SPEC_GGUF_PATH] [--max-tokens 128] [--rounds 2]
    python benchmarks/generate_bench.py --device cuda [--shape qwen2.5-0.5b] [--batches 1,64,256]

CPU (default): the llamacpp backend against raw llama-cpp-python. Both load the same GGUF with the
same context size and threads, decode greedily, and are interleaved prompt by prompt so neither
gets a warmer machine. Prints completion tokens/s of each and the ratio (backend / raw; the goal is
>= 0.9x: the backend adds little on top of llama.cpp).

--device cuda: the hf backend against raw transformers `model.generate` on a random-weight model
of the shape (benchmarks/synthetic.py), the same 64-token prompts (60 words and the chat template),
128 new tokens each, at each batch size: greedy on both sides (raw twice, before and after the backend, the
faster counting), then the backend sampling (T=0.8, top-p 0.95, one seed per row). Both sides stop a row at the end-of-turn token (random weights
rarely emit it); tokens/s counts the tokens generated. Last, the backend's own batch size for 256
prompts (batch_size=0: sized from free GPU memory) is printed with its tokens/s.
"""

from __future__ import annotations

import argparse
import os
import time

from tracetune.models import load_model
from tracetune.models.spec import embedded_gguf_path
from tracetune.types import GenerationRequest, SamplingParams, chat

PROMPTS = [
    "Write a Python function `is_prime(n)` that returns True when n is prime.",
    "Write a Python function `flatten(xs)` that flattens a nested list.",
    "Explain what a hash map is in two sentences.",
    "Write a Python class `Stack` with push, pop and peek methods.",
    "Write a Python function `word_count(text)` returning a dict of word frequencies.",
    "Write a Python function `fib(n)` returning the n-th Fibonacci number iteratively.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="cuda: the model shape")
    ap.add_argument("--batches", default="1,64,256", help="cuda: batch sizes")
    args = ap.parse_args()
    if args.device == "cuda":
        gpu(args)
    else:
        cpu(args)


def cpu(args) -> None:
    from llama_cpp import Llama

    path = args.model or str(embedded_gguf_path())
    threads = os.cpu_count()

    raw = Llama(model_path=path, n_ctx=args.n_ctx, n_threads=threads, seed=0, verbose=False)
    ours = load_model(f"gguf:{path},n_ctx={args.n_ctx},n_threads={threads}")

    totals = {"raw": [0, 0.0], "ours": [0, 0.0]}  # [completion tokens, seconds]
    for _ in range(args.rounds):
        for prompt in PROMPTS:
            msgs = [{"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            out = raw.create_chat_completion(messages=msgs, temperature=0.0,
                                             max_tokens=args.max_tokens, seed=0)
            totals["raw"][1] += time.perf_counter() - t0
            totals["raw"][0] += out["usage"]["completion_tokens"]

            t0 = time.perf_counter()
            c = ours.generate(GenerationRequest(chat(prompt),
                                                SamplingParams(max_tokens=args.max_tokens), seed=0))
            totals["ours"][1] += time.perf_counter() - t0
            totals["ours"][0] += c.usage.completion_tokens
    raw.close()
    ours.close()

    rate = {k: tok / sec for k, (tok, sec) in totals.items()}
    print(f"model {os.path.basename(path)}, {len(PROMPTS)} prompts x {args.rounds} rounds, "
          f"greedy, max_tokens={args.max_tokens}, {threads} threads")
    print(f"{'':30}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'raw llama-cpp-python':30}{totals['raw'][0]:8d}{totals['raw'][1]:10.2f}{rate['raw']:10.1f}")
    print(f"{'tracetune llamacpp backend':30}{totals['ours'][0]:8d}{totals['ours'][1]:10.2f}"
          f"{rate['ours']:10.1f}")
    print(f"ratio (backend / raw): {rate['ours'] / rate['raw']:.2f}x")


def gpu(args) -> None:
    import random
    import sys
    import tempfile
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import synthetic

    batches = [int(x) for x in args.batches.split(",")]
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(synthetic.WORDS)}" for _ in range(60))
               for _ in range(max(batches))]
    with tempfile.TemporaryDirectory() as d:
        path = synthetic.make_model_dir(args.shape, Path(d) / "model")
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        raw = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
        ours = load_model(f"hf:{path},device=cuda,dtype=bfloat16")

        def run_raw(n: int) -> tuple[int, float]:
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in prompts[:n]]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
            with torch.inference_mode():
                out = raw.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            count = int((new != tok.pad_token_id).sum())
            return count, time.perf_counter() - t0

        def run_ours(n: int, temperature: float, batch_size: int | None = None):
            params = SamplingParams(temperature=temperature, top_p=0.95 if temperature else 1.0,
                                    max_tokens=args.max_tokens)
            reqs = [GenerationRequest(chat(p), params, seed=i) for i, p in enumerate(prompts[:n])]
            size = batch_size or n
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            done = []
            for start in range(0, n, size):
                done += ours._run(reqs[start:start + size]) if batch_size is not None else \
                    ours.generate_many(reqs[start:start + size])
            return sum(c.usage.completion_tokens for c in done), time.perf_counter() - t0

        run_raw(2), run_ours(2, 0.0), run_ours(2, 0.8)  # warm-up: kernels, allocator
        n_params = sum(p.numel() for p in raw.parameters())
        print(f"{args.shape} shape ({n_params / 1e6:.0f}M parameters, random weights, bf16) on "
              f"{torch.cuda.get_device_name(0)}: 64-token prompts, {args.max_tokens} new tokens")
        print(f"{'batch':>6}{'raw generate':>14}{'backend greedy':>16}{'ratio':>7}"
              f"{'backend sampled':>17}   (tokens/s)")
        for n in batches:  # raw twice, around the backend: the faster raw run counts
            raw_tok, raw_s = run_raw(n)
            g_tok, g_s = run_ours(n, 0.0, n)
            raw_tok2, raw_s2 = run_raw(n)
            if raw_tok2 / raw_s2 > raw_tok / raw_s:
                raw_tok, raw_s = raw_tok2, raw_s2
            s_tok, s_s = run_ours(n, 0.8, n)
            print(f"{n:6d}{raw_tok / raw_s:14.0f}{g_tok / g_s:16.0f}"
                  f"{(g_tok / g_s) / (raw_tok / raw_s):6.2f}x{s_tok / s_s:17.0f}")
        n = max(batches)
        reqs = [GenerationRequest(chat(p), SamplingParams(max_tokens=args.max_tokens))
                for p in prompts[:n]]
        auto = ours.batch_size(reqs)
        a_tok, a_s = run_ours(n, 0.8)
        print(f"backend batch_size=0 (auto) for {n} prompts: {auto} rows a batch; sampled "
              f"{a_tok / a_s:.0f} tokens/s")
        ours.close()


if __name__ == "__main__":
    main()
