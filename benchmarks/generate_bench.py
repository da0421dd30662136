"""Generation throughput: tracetune's llamacpp backend vs raw llama-cpp-python, same prompts.

    python benchmarks/generate_bench.py [--model SPEC_GGUF_PATH] [--max-tokens 128] [--rounds 2]

Both sides load the same GGUF with the same context size and threads, decode greedily, and are
interleaved prompt by prompt so neither gets a warmer machine. Prints completion tokens/s of each
and the ratio (backend / raw; the goal is >= 0.9x: the backend adds little on top of llama.cpp).
"""

from __future__ import annotations

import argparse
import os
import time

from llama_cpp import Llama

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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
