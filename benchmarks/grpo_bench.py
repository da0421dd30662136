"""GRPO from sandbox rewards, alone: train one adapter on a suite's train tasks and print what it
cost and what it learned from (the loop's grpo stage does the same inside an experiment).

Prints the settings, then the optimizer steps, completions and groups (and how many groups were
skipped because every completion scored the same), the mean reward of the first and last logged
steps, the last KL, the mean completion length, wall time, completions per second and, on CUDA,
peak GPU memory. Writes the adapter and its per-step log (grpo_log.jsonl) to --out.

    python benchmarks/grpo_bench.py --max-steps 4                       # CPU: a short run
    python benchmarks/grpo_bench.py --suite bugs --train-pct 70 --max-difficulty 0 \
        --workflow repair,constrained=true,show_file=true,edit_only=true,anchored_edits=true \
        --init-adapter SFT_ADAPTER --max-completion-length 192            # the repair agent
    python benchmarks/grpo_bench.py --base gguf:model.gguf --device cuda \\
        --num-generations 16 --prompts-per-step 8 --epochs 2            # a GPU (README: GPU)

Not part of CI (minutes on a CPU at the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="funcs")
    ap.add_argument("--max-difficulty", type=int, default=2, help="0: every tier")
    ap.add_argument("--workflow", default="direct",
                    help="direct (the answer's share of hidden tests), or a repair spec with "
                         "its options on a repair suite (the agent's first message)")
    ap.add_argument("--train-pct", type=int, default=50, help="the loop's split (train tasks)")
    ap.add_argument("--base", default="embedded", help="model spec of the weights trained")
    ap.add_argument("--init-adapter", type=Path, default=None)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "grpo_bench")
    args = ap.parse_args()

    import shutil

    import torch

    from tracetune.agents.configs import RepairConfig
    from tracetune.eval.config import EvalConfig
    from tracetune.eval.runner import select_tasks
    from tracetune.train.grpo import GRPO_LOG, GrpoConfig, train_grpo

    eval_config = EvalConfig(suite=args.suite, model="embedded", split="train",
                             train_pct=args.train_pct, max_difficulty=args.max_difficulty,
                             workflow=args.workflow)
    tasks = select_tasks(eval_config)
    spec = eval_config.workflow_spec()
    repair = spec.config if isinstance(spec.config, RepairConfig) else None
    config = GrpoConfig(num_generations=args.num_generations,
                        prompts_per_step=args.prompts_per_step,
                        max_completion_length=args.max_completion_length,
                        temperature=args.temperature, learning_rate=args.learning_rate,
                        beta=args.beta, epochs=args.epochs, max_steps=args.max_steps,
                        device=args.device, seed=args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    print(f"grpo_bench: {len(tasks)} train tasks of {args.suite} (tiers <= "
          f"{args.max_difficulty or 'all'}), workflow {spec.text()}, base {args.base}, init "
          f"adapter {args.init_adapter}; "
          f"{config}", flush=True)
    t0 = time.time()
    meta = train_grpo(tasks, args.base, args.out, config, init_adapter=args.init_adapter,
                      log=print, repair=repair,
                      on_progress=lambda step, total, r: print(
                          f"  step {step}/{total} mean reward "
                          f"{'-' if r is None else f'{r:.3f}'} ({time.time() - t0:.0f} s)",
                          flush=True))
    wall = time.time() - t0
    points = [json.loads(x) for x in (args.out / GRPO_LOG).read_text().splitlines()]
    print(f"steps {meta['steps']}, completions {meta['completions']} in {meta['groups']} groups, "
          f"{meta['zero_std_groups']} skipped (equal rewards)")
    print(f"mean reward: first step {meta['reward_first']:.3f}, last step "
          f"{meta['reward_last']:.3f}, all {meta['reward_mean']:.3f}; KL last "
          f"{meta['kl_last']}; mean completion length {meta['completion_length_mean']:.0f} "
          f"tokens")
    print(f"time: {wall:.0f} s wall, {meta['train_seconds']:.0f} s training, "
          f"{meta['completions'] / meta['train_seconds']:.2f} completions/s"
          + (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
             if torch.cuda.is_available() else ""))
    print("reward per logged step: " + " ".join(f"{p['reward']:.2f}" for p in points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
