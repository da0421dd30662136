"""Does the loop's filtering matter? The quickstart protocol with more samples, next to a control.

Runs `experiments/quickstart.toml` through `tracetune loop` with larger trial counts, the full
HumanEval (or --humaneval-limit problems) as the capability check, and the control adapter
enabled: an adapter trained with the same recipe on as many rows drawn from the same baseline run
without any filter (passing or not). Then prints, side by side:

    base vs adapted held-out pass@1 with 95% intervals, the delta with its interval, Fisher and
    McNemar p-values; the control's delta; the ratio of the two gains; the HumanEval delta.

Targets for the embedded model (issue 5): +10pp held-out at p < 0.01, at least 1.2x the control's
gain, and a HumanEval drop of at most 2pp. Not part of CI (about an hour on 2 CPU cores at the
defaults). Usage:

    python benchmarks/loop_gain.py [--trials 16] [--humaneval-limit 0] [--out runs/loop_gain]
    python benchmarks/loop_gain.py --trials 8 --humaneval-limit 40 --seed-from runs/quickstart
        (the quickstart's own numbers plus the control: only the control stages run)
    python benchmarks/loop_gain.py --rounds 3 --trials 4 --humaneval-limit 40
        (experiments/rounds_quick.toml: rounds of expert iteration behind its gate, then a GRPO
        round, no control; prints every round's held-out pass@1 with its interval against the
        same base, the gate's verdicts, why the rounds stopped, and the GRPO round's delta over
        the kept round with its p-value and cost)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def derived_experiment(trials: int, humaneval_limit: int, epochs: float | None,
                       path: Path, rounds: int = 1) -> Path:
    source = "rounds_quick" if rounds > 1 else "quickstart"
    text = (ROOT / "experiments" / f"{source}.toml").read_text()
    text = re.sub(r"(?m)^trials = \d+", f"trials = {trials}", text)
    text = re.sub(r"(?m)^limit = \d+", f"limit = {humaneval_limit}", text)
    if epochs is not None:
        text = re.sub(r"(?m)^epochs = [\d.]+", f"epochs = {epochs}", text)
    if rounds > 1:
        return _written(path, re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text))
    text += "\n[control]\nenabled = true\n"
    return _written(path, text)


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def overall(results: dict, split: str, model: str) -> dict:
    return next(r for r in results["comparisons"][split]["results"]
                if r["model"] == model and r["task"] == "overall")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16, help="samples per task (quickstart: 8)")
    ap.add_argument("--humaneval-limit", type=int, default=0, help="0 = all 164 problems")
    ap.add_argument("--epochs", type=float, default=None, help="override [train] epochs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of expert iteration (experiments/rounds_quick.toml; no control)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "loop_gain")
    ap.add_argument("--seed-from", type=Path, default=None,
                    help="copy this loop directory (e.g. runs/quickstart) into --out first: "
                    "stages whose settings match are reused, the control stages run")
    args = ap.parse_args()
    from tracetune.experiment.layout import RunLayout

    layout = RunLayout(args.out)
    if args.seed_from and not args.out.exists():
        import shutil

        shutil.copytree(args.seed_from, args.out)
        for stale in ("compare", "report"):
            layout.marker(stale).unlink(missing_ok=True)

    from tracetune.experiment.loop import run_loop

    args.out.mkdir(parents=True, exist_ok=True)
    exp = derived_experiment(args.trials, args.humaneval_limit, args.epochs,
                             args.out.parent / f"{args.out.name}.toml", args.rounds)
    t0 = time.time()
    results = run_loop(exp, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.time() - t0
    if args.rounds > 1:
        return print_rounds(results, layout, args.trials, wall)

    base_vs = overall(results, "heldout", "adapted")
    control = overall(results, "heldout", "control")
    cap = overall(results, "capability", "adapted")
    gain, control_gain = base_vs["delta_success"], control["delta_success"]
    ratio = gain / control_gain if control_gain > 0 else float("inf") if gain > 0 else 0.0

    def pct(x):
        return f"{100 * x:5.1f}%"

    def pp(x):
        return f"{100 * x:+5.1f}pp"

    n_tasks = len(results["split"]["heldout"])
    print(f"loop_gain: quickstart protocol, {args.trials} trials/task, {n_tasks} held-out tasks, "
          f"{base_vs['n']} samples per model (wall {wall / 60:.1f} min incl. cached stages)")
    print(f"  base     held-out pass@1 {pct(base_vs['baseline_rate'])}")
    print(f"  adapted  held-out pass@1 {pct(base_vs['success_rate'])} "
          f"[{pct(base_vs['ci_low'])}, {pct(base_vs['ci_high'])}]  "
          f"delta {pp(gain)} [{pp(base_vs['delta_ci_low'])}, {pp(base_vs['delta_ci_high'])}]  "
          f"Fisher p={base_vs['p_value']:.3g}  McNemar p={base_vs['mcnemar_p']:.3g}")
    print(f"  control  held-out pass@1 {pct(control['success_rate'])} "
          f"[{pct(control['ci_low'])}, {pct(control['ci_high'])}]  "
          f"delta {pp(control_gain)} [{pp(control['delta_ci_low'])}, "
          f"{pp(control['delta_ci_high'])}]  Fisher p={control['p_value']:.3g}")
    print(f"  gain ratio adapted/control: {ratio:.2f}x")
    print(f"  HumanEval ({cap['n']} problems, greedy): base {pct(cap['baseline_rate'])}, "
          f"adapted {pct(cap['success_rate'])}, delta {pp(cap['delta_success'])} "
          f"(McNemar p={cap['mcnemar_p']:.3g})")
    kinds = results["failures"]  # the compare stage's, most frequent first
    print("  held-out failures by kind (last attempt of each failed episode):")
    for arm in ("base", "adapted", "control"):
        print(f"    {arm:8s} " + ", ".join(f"{k} {n}" for k, n in kinds[arm].items()))
    targets = {"+10pp held-out": gain >= 0.10, "p < 0.01": base_vs["p_value"] < 0.01,
               ">= 1.2x control": ratio >= 1.2, "HumanEval drop <= 2pp": cap["delta_success"]
               >= -0.02}
    print("  targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                    for k, v in targets.items()))
    layout.benchmark("loop_gain").write_text(json.dumps(
        {"trials": args.trials, "gain": gain, "control_gain": control_gain, "ratio": ratio,
         "p_fisher": base_vs["p_value"], "p_mcnemar": base_vs["mcnemar_p"],
         "humaneval_delta": cap["delta_success"], "targets": targets,
         "heldout_failures": kinds}, indent=2))
    return 0


def print_rounds(results: dict, layout, trials: int, wall: float) -> int:
    """The per-round table of a rounds run (results.json's "rounds"), and its JSON summary."""
    curve = results["rounds"]

    def pct(x):
        return f"{100 * x:5.1f}%"

    def pp(x):
        return f"{100 * x:+5.1f}pp"

    g = curve["settings"]
    print(f"loop_gain --rounds {g['rounds']}: {trials} trials/task, "
          f"{len(results['split']['heldout'])} held-out tasks, mode {g['mode']}, gate "
          f"{g['test']} p < {g['alpha']} and capability within {pp(-g['max_capability_drop'])} "
          f"(wall {wall / 60:.1f} min incl. cached stages)")
    for r in curve["rounds"]:
        line = (f"  round {r['round']}  held-out pass@1 {pct(r['heldout'])} "
                f"[{pct(r['ci'][0])}, {pct(r['ci'][1])}]")
        if r["round"]:
            gate = r["gate"]
            line += (f"  vs base {pp(r['delta'])} [{pp(r['delta_ci'][0])}, "
                     f"{pp(r['delta_ci'][1])}] p={r['p']:.3g}  vs previous {pp(gate['gain'])} "
                     f"p={gate['p']:.3g}  gate {'passed' if gate['passed'] else 'STOP'}")
        if r.get("capability") is not None:
            line += f"  HumanEval {pct(r['capability'])}"
            if r["round"] and r.get("capability_delta") is not None:
                line += f" ({pp(r['capability_delta'])})"
        print(line)
    kept = next(r for r in curve["rounds"] if r["round"] == curve["kept"])
    print(f"  kept round {curve['kept']}: held-out {pct(kept['heldout'])}; stopped: "
          f"{curve['stopped']}")
    g = results.get("grpo")
    if g and g.get("ran"):
        t = g["train"]
        print(f"  GRPO from round {g['start_round']}: held-out {pct(g['heldout'])} "
              f"[{pct(g['ci'][0])}, {pct(g['ci'][1])}]  vs round {g['start_round']} "
              f"{pp(g['delta'])} [{pp(g['delta_ci'][0])}, {pp(g['delta_ci'][1])}] "
              f"{g['test']} p={g['p']:.3g}  vs base {pp(g['delta_vs_base'])} "
              f"p={g['p_vs_base']:.3g}" + (f"  HumanEval {pct(g['capability'])} "
                                           f"({pp(g['capability_delta'])})"
                                           if g.get("capability") is not None else ""))
        print(f"    cost: {t['steps']} steps, {t['completions']} completions in {t['groups']} "
              f"groups ({t['zero_std_groups']} skipped, equal rewards), "
              f"{t['train_seconds']:.0f} s training, stage {g['seconds']:.0f} s, peak RAM "
              f"{g['peak_ram_gb']:.2f} GB; mean reward {t['reward_first']:.3f} -> "
              f"{t['reward_last']:.3f}, KL {t['kl_last']}")
    elif g:
        print(f"  GRPO from round {g['start_round']}: no adapter ({g['reason']})")
    targets = {"held-out >= 80% after the rounds": kept["heldout"] >= 0.80,
               "HumanEval drop <= 2pp": (kept.get("capability_delta") or 0.0) >= -0.02}
    print("  targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                    for k, v in targets.items()))
    layout.benchmark("loop_gain_rounds").write_text(json.dumps(
        {"trials": trials, "rounds": curve, "targets": targets, "wall_s": wall}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
