"""Episode throughput: `tracetune eval` vs a naive serial harness, same funcs episodes, one run.

    python benchmarks/episode_bench.py [--tasks 24] [--trials 1] [--seed 0]
    python benchmarks/episode_bench.py --device cuda --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        [--tasks 24] [--trials 2]

Both sides run the `direct` workflow with one attempt per episode (pass@1 episodes) on the same
tasks (a fixed, difficulty-stratified slice of `funcs`), the same prompts and the same derived
seeds, with the embedded SmolLM2-135M-Instruct weights:

* naive: what a first harness usually is. transformers `generate` (the GGUF dequantized, fp32),
  one sample at a time, until the end-of-turn token or max_tokens; then one
  `subprocess.run([python, -m, pytest, ...])` per check, serially.
* tracetune: `tracetune eval` (llama.cpp backend, generation stopped when the code block closes,
  checks in the warm sandbox overlapping with generation).

With --device cuda both sides generate on the GPU in bf16 from the same checkpoint (the GGUF given
by --gguf, dequantized by transformers, or with --shape a random-weight model of that shape):

* naive: as above, `generate` one sample at a time on the GPU, one pytest subprocess per check.
* tracetune: `tracetune eval` with the hf backend (`hf:DIR,device=cuda,dtype=bfloat16`), every
  episode in flight at once (concurrency = episodes), so the backend generates the episodes'
  sampled requests together in batches (each row with its own seed) while the warm sandbox checks.

Each side's seconds run from before its model is loaded to its last verdict (`tracetune eval`
loads the model inside the run; before, the naive side's clock started after its load, which
flattered the naive harness by the load time). Code extraction is the same on both sides. Prints
episodes/min for each, the ratio, and both pass
rates with 95% Wilson intervals (they should agree within noise: the outputs differ, llama.cpp
runs the Q4_1 weights and transformers their dequantized copy, so samples are not identical).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracetune.agents.extract import extract_code, sanitize
from tracetune.agents.workflow import IMPL_PROMPT
from tracetune.types import derive_seed
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.stats import wilson_interval
from tracetune.tasks import load_suite
from tracetune.traces.store import Store

TEMPERATURE, TOP_P, MAX_TOKENS = 0.8, 0.95, 512


def pick_tasks(n: int) -> list:
    """Every k-th task of each tier, so the slice has all three difficulties."""
    tasks = sorted(load_suite("funcs").tasks, key=lambda t: (t.difficulty, t.id))
    step = max(1, len(tasks) // n)
    return tasks[::step][:n]


def naive(tasks, trials: int, seed: int, args) -> tuple[float, int, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()  # the model's load counts on both sides, as run_eval loads it
    source = checkpoint(args)
    tok = AutoTokenizer.from_pretrained(source)
    if args.device == "cuda":
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).cuda().eval()
    else:
        torch.set_num_threads(2)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    passed = n = 0
    for trial in range(trials):
        for task in tasks:
            episode_seed = derive_seed(seed, task.id, trial)
            attempt_seed = derive_seed(episode_seed, "impl", 1)
            messages = [{"role": "user", "content": IMPL_PROMPT.format(spec=task.spec)}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True).to(model.device)
            torch.manual_seed(attempt_seed)
            with torch.inference_mode():
                out = model.generate(**ids, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
                                     max_new_tokens=MAX_TOKENS, pad_token_id=tok.eos_token_id)
            text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            code = sanitize(extract_code(text, task.names))
            with tempfile.TemporaryDirectory() as d:
                Path(d, "solution.py").write_text(code)
                Path(d, "test_submission.py").write_text(task.tests)
                try:
                    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p",
                                        "no:cacheprovider", "test_submission.py"], cwd=d,
                                       capture_output=True, timeout=10)
                    ok = r.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
            passed += ok
            n += 1
    return time.perf_counter() - t0, passed, n


def checkpoint(args) -> str:
    """The transformers checkpoint both sides load (CPU: the embedded model's)."""
    from tracetune.models.hf import resolve_model_source

    if args.shape:
        path = Path(tempfile.gettempdir()) / f"episode-bench-{args.shape}"
        if not (path / "config.json").is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import synthetic

            synthetic.make_model_dir(args.shape, path)
        return str(path)
    return resolve_model_source(args.gguf or "embedded")


def ours(tasks, trials: int, seed: int, args) -> tuple[float, int, int]:
    if args.device == "cuda":
        model = f"hf:{checkpoint(args)},device=cuda,dtype=bfloat16"
        concurrency = len(tasks) * trials
    else:
        model, concurrency = "embedded", 4
    with tempfile.TemporaryDirectory() as d:
        config = EvalConfig(suite="funcs", workflow="direct,max_attempts=1", model=model,
                            trials=trials, seed=seed, temperature=TEMPERATURE, top_p=TOP_P,
                            max_tokens=MAX_TOKENS,
                            tasks=tuple(t.id for t in tasks), concurrency=concurrency)
        t0 = time.perf_counter()
        run_eval(config, Path(d) / "run")
        elapsed = time.perf_counter() - t0
        store = Store(Path(d) / "run")
        eps = store.episodes()
        store.close()
    return elapsed, sum(e["success"] for e in eps), len(eps)


def side(name: str, args) -> tuple[float, int, int]:
    """Run one side in its own process: torch's and llama.cpp's CPU thread pools both spin when
    idle, so two engines in one process slow each other down."""
    extra = ["--device", args.device] + (["--gguf", args.gguf] if args.gguf else []) + \
        (["--shape", args.shape] if args.shape else [])
    out = subprocess.run([sys.executable, __file__, "--side", name, "--tasks", str(args.tasks),
                          "--trials", str(args.trials), "--seed", str(args.seed), *extra],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed: {out.stderr.strip()[-2000:]}")
    secs, k, n = json.loads(out.stdout.strip().splitlines()[-1])
    return secs, k, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gguf", default=None, help="GGUF file of the model (default: embedded)")
    ap.add_argument("--shape", default=None, help="a random-weight model of this shape "
                    "(benchmarks/synthetic.py) instead")
    ap.add_argument("--side", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    tasks = pick_tasks(args.tasks)
    if args.side:
        fn = naive if args.side == "naive" else ours
        print(json.dumps(fn(tasks, args.trials, args.seed, args)))
        return
    if args.device == "cuda":
        checkpoint(args)  # dequantized or built once, before either side is timed
    where = "the CPU" if args.device == "cpu" else "CUDA, bf16"
    print(f"{len(tasks)} funcs tasks x {args.trials} trial(s), direct workflow, 1 attempt, "
          f"T={TEMPERATURE}, max_tokens={MAX_TOKENS}, {where}, model "
          f"{args.shape or Path(args.gguf or 'embedded').name}")
    rows = {"naive serial harness": side("naive", args), "tracetune eval": side("ours", args)}
    print(f"{'':24}{'seconds':>9}{'episodes/min':>14}{'pass rate':>12}   95% CI")
    rate = {}
    for name, (secs, k, n) in rows.items():
        lo, hi = wilson_interval(k, n)
        rate[name] = n / secs * 60
        print(f"{name:24}{secs:9.1f}{rate[name]:14.2f}{f'{k}/{n}':>12}   "
              f"[{100 * lo:.1f}%, {100 * hi:.1f}%]")
    print(f"speed-up: {rate['tracetune eval'] / rate['naive serial harness']:.1f}x")
    (_, ka, nn), (_, kb, nb) = rows["naive serial harness"], rows["tracetune eval"]
    lo_a, hi_a = wilson_interval(ka, nn)
    lo_b, hi_b = wilson_interval(kb, nb)
    overlap = lo_a <= hi_b and lo_b <= hi_a
    print(f"pass rates agree within noise (95% intervals overlap): {'yes' if overlap else 'NO'}")


if __name__ == "__main__":
    main()
