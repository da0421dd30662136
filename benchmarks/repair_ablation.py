"""Which repair-agent design options let a small model reach an edit? An ablation on held-out bugs.

Seed 004 found framework changes (tool design, prompting) worth +12-19pp where LoRA gave nothing;
seed 002 found small models never reach patching because they cannot drive the tool protocol.
This runs the repair agent on the same held-out bugs (the `bugs` suite's 70/30 split, the test
side: 18 bugs) with the same seeds under each arm:

    base            repair,max_iters=5 (the protocol as shipped before issue 18)
    +OPTION         each design option alone: constrained (grammar-constrained tool calls),
                    numbered_reads, line_edit (replace_lines), observation_chars=N, show_file,
                    task_example (the system prompt's example call reads the task's module),
                    edit_only (only the tools that change a file; with show_file),
                    anchored_edits (an edit searches for one of the file's lines; with
                    constrained), lint_edits (a write that would add a syntax error or
                    an undefined name is refused, SWE-agent's linter), drop_failed_calls (a
                    failed message and its error leave the conversation), localize=K (the module's K most suspicious lines by
                    spectrum-based fault localisation, shown and, anchored, the only lines an
                    edit of the module may search for)
    all             every option on
    all-OPTION      every option but one

and prints, per arm: the share of episodes with a write or edit that the tool accepted (the
`wrote` metric, any path) and the share with a valid edit (one that changed the task's own module
and left it a candidate fix: parseable Python still defining the names the tests import; the
episodes' `valid_edit` metric) and the share whose valid edit replaced the bug's own line
(`fault_edit`: the agent found the bug, fixed or not), each with its 95% interval, held-out pass rate (k/n and the
task-clustered Wilson interval), the pass-rate delta against base with its cluster-robust
interval and McNemar p (outcomes paired by task and trial, which share their sampling seed),
and parse errors, tool errors and steps per episode. Every arm's episodes are stored in
OUT/ARM (a run directory for `tracetune report` or `tracetune compare`); rerunning resumes.

    python benchmarks/repair_ablation.py                           # embedded, llama.cpp, CPU
    python benchmarks/repair_ablation.py --model hf:model.gguf,device=cuda --concurrency 144
    python benchmarks/repair_ablation.py --arms base,+constrained,all --trials 2
    python benchmarks/repair_ablation.py --arms +line_edit,all-line_edit   # more arms, same --out

Not part of CI: 24 arms x 144 episodes of up to 5 model calls each is hours on 2 CPU cores
(the README's table was run on one GPU through the hf backend, same weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OPTIONS = {"constrained": "constrained=true", "numbered_reads": "numbered_reads=true",
           "line_edit": "line_edit=true", "observation_chars": "observation_chars={chars}",
           "show_file": "show_file=true", "task_example": "task_example=true",
           "edit_only": "edit_only=true", "anchored_edits": "anchored_edits=true",
           "lint_edits": "lint_edits=true", "drop_failed_calls": "drop_failed_calls=true",
           "localize": "localize={localize}"}
"""Design option -> its workflow-spec setting (issue 18 item 4)."""
NEEDS = {"edit_only": "show_file", "anchored_edits": "constrained"}
"""An option that is refused without another: its arms include that one, and the arm without
that one goes without it too."""


def arms() -> dict[str, list[str]]:
    """Arm name -> the workflow options it turns on, in the order they are printed."""
    names = list(OPTIONS)
    out = {"base": []}
    out.update({f"+{n}": [NEEDS[n], n] if n in NEEDS else [n] for n in names})
    out["all"] = names
    out.update({f"all-{n}": [m for m in names if n not in (m, NEEDS.get(m))] for n in names})
    return out


def workflow_of(options: list[str], max_iters: int, observation_chars: int,
                localize: int = 5) -> str:
    parts = [f"repair,max_iters={max_iters}"]
    parts += [OPTIONS[o].format(chars=observation_chars, localize=localize) for o in options]
    return ",".join(parts)


def run_dir(root: Path, arm: str) -> Path:
    return root / arm.replace("+", "plus_")


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="model spec (default: embedded)")
    ap.add_argument("--suite", default="bugs")
    ap.add_argument("--train-pct", type=int, default=70, help="the split; held-out = the rest")
    ap.add_argument("--trials", type=int, default=8, help="samples per bug per arm")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=192, help="per message")
    ap.add_argument("--max-iters", type=int, default=5, help="messages per episode")
    ap.add_argument("--observation-chars", type=int, default=600,
                    help="the cut of the observation_chars option")
    ap.add_argument("--localize", type=int, default=5,
                    help="the suspect lines of the localize option")
    ap.add_argument("--arms", default="",
                    help="comma-separated arms to run (default: all 24); the table shows every "
                         "arm under --out")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: print the table of the arms under --out")
    ap.add_argument("--concurrency", type=int, default=4, help="episodes in flight")
    ap.add_argument("--limit", type=int, default=0, help="at most this many bugs (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "repair_ablation")
    args = ap.parse_args()

    from tracetune.eval.compare import compare_dirs, load_episodes
    from tracetune.eval.config import EvalConfig
    from tracetune.eval.metrics import summarize
    from tracetune.eval.runner import run_eval
    from tracetune.traces.store import DB_NAME

    table = arms()
    chosen = [a.strip() for a in args.arms.split(",") if a.strip()] or list(table)
    unknown = [a for a in chosen if a not in table]
    if unknown:
        print(f"unknown arm(s) {', '.join(unknown)}; the arms: {', '.join(table)}",
              file=sys.stderr)
        return 2
    if not args.table_only:
        print(f"model {args.model}; {args.suite} held-out (train_pct {args.train_pct}), "
              f"{args.trials} samples per bug, T={args.temperature}, {args.max_iters} messages "
              f"of <= {args.max_tokens} tokens; observation_chars={args.observation_chars}, "
              f"localize={args.localize}",
              flush=True)
    for arm in [] if args.table_only else chosen:
        workflow = workflow_of(table[arm], args.max_iters, args.observation_chars,
                               args.localize)
        config = EvalConfig(suite=args.suite, workflow=workflow, model=args.model,
                            trials=args.trials, seed=args.seed, temperature=args.temperature,
                            max_tokens=args.max_tokens, split="test", train_pct=args.train_pct,
                            limit=args.limit, concurrency=args.concurrency)
        out = run_dir(args.out, arm)
        start = time.perf_counter()
        summary = run_eval(config, out, resume=(out / DB_NAME).exists())
        print(f"  {arm:<22} {summary.successes}/{summary.n} passed, "
              f"{time.perf_counter() - start:6.0f} s  ({workflow})", flush=True)

    # The table holds every arm run so far under --out (several processes may share it, each
    # running some arms), against base.
    done = [arm for arm in table if (run_dir(args.out, arm) / DB_NAME).exists()
            and load_episodes(run_dir(args.out, arm))]
    if "base" not in done:  # the shares alone: nothing to pair them with
        print("no base arm under --out (run --arms base for the differences); the shares:")
        for arm in done:
            shares(arm, load_episodes(run_dir(args.out, arm)))
        return 0
    base_tasks = {e["task_id"] for e in load_episodes(run_dir(args.out, "base"))}
    apart = [arm for arm in done
             if not base_tasks & {e["task_id"] for e in load_episodes(run_dir(args.out, arm))}]
    if apart:  # partial arms whose finished episodes are all of bugs base has not finished
        print(f"not shown yet (no finished bug in common with base): {', '.join(apart)}")
    chosen = [arm for arm in done if arm not in apart]
    dirs = [run_dir(args.out, arm) for arm in chosen]
    result = compare_dirs(dirs, baseline="base", labels=chosen)
    by_model = {r.model: r for r in result.baseline_rows + result.results if r.task == "overall"}
    deltas = {(m.model, m.metric): m for m in result.metrics}

    print()
    print(f"{'arm':<22} {'wrote':>6} {'[95% CI]':>15} {'valid':>6} {'[95% CI]':>15} "
          f"{'fault':>6} {'[95% CI]':>15} {'pass':>9} {'rate':>6} "
          f"{'[95% CI]':>15} {'Δ pass':>8} {'[95% CI]':>17} {'McNemar':>8} "
          f"{'parse/ep':>8} {'tool/ep':>7} {'steps':>5}")
    for arm, out in zip(chosen, dirs):
        episodes = load_episodes(out)
        s = summarize("overall", episodes)
        r = by_model[arm]
        wrote = deltas.get((arm, "wrote"))
        edit = share_interval(episodes, lambda e: e["metrics"]["wrote"])
        valid = share_interval(episodes, lambda e: e["metrics"].get("valid_edit"))
        if all("fault_edit" in e["metrics"] for e in episodes):
            fault = share_interval(episodes, lambda e: e["metrics"]["fault_edit"])
            fault_text = f"{pct(fault[0])} [{pct(fault[1])},{pct(fault[2])}]"
        else:  # recorded before the metric existed
            fault_text = f"{'-':>6} {'':>15}"
        label = arm if r.n == by_model["base"].n else f"{arm} (partial)"
        line = (f"{label:<22} {pct(edit[0])} [{pct(edit[1])},{pct(edit[2])}] "
                f"{pct(valid[0])} [{pct(valid[1])},{pct(valid[2])}] {fault_text} "
                f"{r.successes:>4}/{r.n:<4} {pct(r.success_rate):>6} "
                f"[{pct(r.ci_low)},{pct(r.ci_high)}]")
        if arm == "base":
            line += f" {'':>8} {'':>17} {'':>8}"
        else:
            line += (f" {100 * r.delta_success:+7.1f}pp [{100 * r.delta_ci_low:+6.1f},"
                     f"{100 * r.delta_ci_high:+6.1f}] {r.mcnemar_p:8.3g}")
        line += (f" {s.agent.avg_parse_errors:8.2f} {s.agent.avg_tool_errors:7.2f} "
                 f"{s.agent.avg_steps:5.2f}")
        if wrote is not None:
            line += f"   wrote Δ {100 * wrote.delta:+.1f}pp p={wrote.p_wilcoxon:.2g}"
        print(line)
    print("\nwrote: share of episodes with a write or edit that the tool accepted (seed 002's "
          "metric; any path); valid: a write that changed the task's module and left it "
          "parseable Python defining the names the tests import (valid_edit); fault: a valid edit "
          "that replaced the line the reference fix changes (fault_edit; - for runs recorded "
          "before the metric); "
          "intervals: Wilson, clustered by bug; pass: held-out episodes whose tests pass; "
          "Δ pass: against base, cluster-robust interval over bugs, exact McNemar on "
          "(bug, sample) pairs; wrote Δ p: Wilcoxon over per-bug shares.")
    return 0


def shares(arm: str, episodes: list[dict]) -> None:
    """One line per arm without base: wrote, valid, fault and pass shares with their intervals."""
    parts = []
    for name, key in (("wrote", "wrote"), ("valid", "valid_edit"), ("fault", "fault_edit"),
                      ("pass", None)):
        if key is not None and not all(key in e["metrics"] for e in episodes):
            parts.append(f"{name} -")
            continue
        got = share_interval(episodes, (lambda e: e["success"]) if key is None
                             else (lambda e, k=key: e["metrics"][k]))
        parts.append(f"{name} {pct(got[0])} [{pct(got[1])},{pct(got[2])}]")
    print(f"{arm:<22} n={len(episodes):<4} " + "  ".join(parts))


def share_interval(episodes: list[dict], hit) -> tuple[float, float, float]:
    """The share of episodes for which `hit(episode)` holds, with its 95% interval, trials
    clustered by task (stats.clustered_wilson_interval): (share, low, high)."""
    from tracetune.stats import clustered_wilson_interval

    per_task: dict[str, list[int]] = {}
    for e in episodes:
        c = per_task.setdefault(e["task_id"], [0, 0])
        c[0] += bool(hit(e))
        c[1] += 1
    low, high = clustered_wilson_interval([c[0] for c in per_task.values()],
                                          [c[1] for c in per_task.values()])
    return sum(c[0] for c in per_task.values()) / len(episodes), low, high


if __name__ == "__main__":
    sys.exit(main())
