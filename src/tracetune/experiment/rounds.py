"""Rounds of expert iteration behind a pre-registered gate ([rounds], spec.RoundsSection).

Round 1 is the loop's own baseline -> mine -> train -> export -> adapted -> capability. Each
later round r is one loop stage, `roundR`, that:

    1. asks the gate about round r-1 (`gate`): held-out gain over round r-2 at least min_gain
       with the stated test's two-sided p < alpha, and capability within max_capability_drop of
       the base model's; a round that fails stops the rounds (this stage and every later one
       record `ran: false` with the reason, and do nothing else);
    2. mines the train tasks of round r-1's evaluation (mode continue) or of every evaluation so
       far (mode retrain; duplicate programs removed by the miner)  -> RUN/rounds/rR/data/
    3. trains round r-1's adapter further (continue) or a fresh one from the base weights
       (retrain)                                                       -> RUN/rounds/rR/adapter/
    4. exports it (parity-checked like round 1's)                      -> RUN/rounds/rR/export/
    5. evaluates it on every [eval] task with the baseline's per-sample seeds (train tasks:
       the next round's data; held-out: its score)                     -> RUN/rounds/rR/eval/
    6. runs the capability check (greedy)                              -> RUN/rounds/rR/capability/

Each part is kept once complete, so a round killed anywhere continues there (evaluations keep
their finished episodes, training its last checkpoint). The compare stage reads `curve`: every
round's held-out success rate with its interval, against the base model and against the round
before, the gate's verdicts, the kept round and why the rounds stopped.

Expert iteration is rejection-sampling fine-tuning repeated on the model's own filtered samples
(Anthony et al. 2017, "Thinking Fast and Slow with Deep Learning and Tree Search"; SWE-Gym,
arXiv 2412.21139, applies it to coding agents).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.gate import (gate, round_numbers, round_stage_name, start_round,
                                       train_summary)
from tracetune.experiment.layout import RunLayout
from tracetune.experiment import stages
from tracetune.experiment.spec import Experiment
from tracetune.experiment.stages import STAGES, Context, Stage


# --- the stage table ----------------------------------------------------------------------------

def stage_table(exp: Experiment) -> tuple[Stage, ...]:
    """The loop's stages for `exp`: stages.STAGES, plus, before compare (which reads them), one
    stage per round after the first when [rounds] asks for more (round2, round3, ...) and the
    grpo stage when [grpo] is enabled. A round stage hashes the gate's settings and (through its
    dependencies) every earlier stage's, not the number of rounds: raising it keeps the rounds
    already run."""
    if exp.rounds.rounds < 2 and exp.grpo is None:
        return STAGES

    def gate_settings(exp: Experiment) -> dict:
        return {"rounds": exp.rounds.gate()}

    first = ("train", "export", "adapted", "capability")
    extra = []
    for r in round_numbers(exp):
        before = first if r == 2 else (round_stage_name(r - 1),)
        extra.append(Stage(round_stage_name(r), functools.partial(run_round, r), needs=before,
                           outputs=lambda lay, r=r: (lay.round_dir(r),),
                           resolved=gate_settings))
    if exp.grpo is not None:  # from the kept round: it reads the gate (and every round)
        extra.append(Stage("grpo", run_grpo, reads=("grpo", "models.train_base"),
                           needs=first + tuple(s.name for s in extra),
                           outputs=lambda lay: (lay.grpo,), resolved=gate_settings))
    names = tuple(s.name for s in extra)
    out = []
    for s in STAGES:
        if s.name == "compare":
            out += extra
            s = dataclasses.replace(s, needs=s.needs + names)
        out.append(s)
    return tuple(out)


# --- one round ----------------------------------------------------------------------------------

def run_round(r: int, ctx: Context) -> dict:
    """The `roundR` stage (module docstring). Returns its summary: {"ran": bool, "reason"
    (when not ran), "gate": the verdict on round r-1 that let it run or stopped it, and when
    ran: "model" (spec), "data" (rows by kind), "train" ({rows, steps, seconds, first_loss,
    final_loss}), "eval" / "capability" ({run, n, successes})}."""
    exp, lay = ctx.exp, ctx.layout
    label = round_stage_name(r)
    for k in range(2, r):
        earlier = ctx.record(round_stage_name(k))["summary"]
        if not earlier.get("ran"):
            ctx.log(f"[{label}] not run: the rounds stopped at round {k}")
            return {"ran": False, "reason": f"the rounds stopped at round {k}: "
                                            f"{earlier.get('reason')}"}
    verdict = gate(exp, lay, r - 1)
    ctx.log(f"[{label}] gate on round {r - 1}: {verdict['detail']}")
    if not verdict["passed"]:
        return {"ran": False, "gate": verdict,
                "reason": f"round {r - 1} did not pass the gate: {verdict['detail']}"}

    parts, prev = lay.round_parts(r), lay.round_parts(r - 1)
    lay.round_dir(r).mkdir(parents=True, exist_ok=True)
    continuing = exp.rounds.mode == "continue"
    if not RunLayout.manifest(parts["data"]).is_file():
        sources = [prev["eval"]] if continuing else \
            [lay.round_parts(k)["eval"] for k in range(r)]
        try:
            stages.mine(ctx, out=parts["data"], sources=sources, label=label)
        except TracetuneError as exc:  # too few rows: a reason to stop, not a fault
            ctx.log(f"[{label}] stopped: {exc}")
            return {"ran": False, "gate": verdict, "reason": str(exc)}
    data = json.loads(RunLayout.manifest(parts["data"]).read_text())
    if not RunLayout.adapter_meta(parts["adapter"]).is_file():
        stages.train(ctx, data=parts["data"], out=parts["adapter"],
                     init_adapter=prev["adapter"] if continuing else None, label=label)
    return {"ran": True, "gate": verdict, "data": data.get("counts", {}),
            "train": train_summary(parts["adapter"]),
            **export_and_evaluate(ctx, parts, label)}


def export_and_evaluate(ctx: Context, parts: dict[str, Path], label: str) -> dict:
    """Export the adapter in parts["adapter"] (unless [export] target is none; kept once done),
    evaluate the adapted model on every [eval] task and run the capability check. Returns
    {"model": its spec, "eval": {run, n, successes}, "capability": ... (when enabled)}."""
    exp = ctx.exp
    done = parts["export"] / "done"
    if exp.export.target != "none" and not done.is_file():
        stages.export(ctx, adapter=parts["adapter"], out=parts["export"], label=label)
        done.write_text("")
    spec = ctx.adapted_spec(parts["export"], parts["adapter"])
    out = {"model": spec, "eval": ctx.evaluate(label, exp.eval_config(spec), parts["eval"])}
    if exp.capability.enabled:
        out["capability"] = ctx.evaluate(label, exp.capability_config(spec), parts["capability"])
    return out



# --- a GRPO round after the rounds ---------------------------------------------------------------

def run_grpo(ctx: Context) -> dict:
    """The grpo stage: GRPO (train.grpo) on the [eval] suite's train tasks from the starting
    round's adapter (a fresh LoRA when no round was kept), then export, evaluation on every
    [eval] task with the baseline's seeds, and the capability check; each part kept once done
    (a killed GRPO training starts again). With the repair workflow the agent's first message
    is trained under the [eval] workflow's options (train.grpo, the repair agent). Returns {"ran": True, "start_round", "train" (the
    GRPO metadata's
    steps, train_seconds, completions, groups, zero_std_groups, reward_first, reward_last,
    kl_last), "model", "eval", "capability"}, or {"ran": False, "start_round", "reason"} when
    every group's rewards were equal (train.grpo.NoSignal)."""
    import dataclasses

    from tracetune.eval.runner import select_tasks
    from tracetune.train.grpo import NoSignal, train_grpo

    exp, lay = ctx.exp, ctx.layout
    start = start_round(exp, lay)
    parts = lay.grpo_parts()
    lay.grpo.mkdir(parents=True, exist_ok=True)
    if not RunLayout.adapter_meta(parts["adapter"]).is_file():
        tasks = select_tasks(dataclasses.replace(exp.eval, split="train"))
        init = lay.round_parts(start)["adapter"] if start else None
        ctx.log(f"[grpo] {len(tasks)} train tasks, starting from "
                f"{'round ' + str(start) if start else 'the base weights (no round kept)'}")
        from tracetune.agents.configs import RepairConfig

        config = exp.eval.workflow_spec().config  # repair: its first message is trained
        repair = config if isinstance(config, RepairConfig) else None
        try:
            train_grpo(tasks, stages.train_base(exp), parts["adapter"], exp.grpo, init_adapter=init,
                       repair=repair,
                       log=lambda line: ctx.log(f"[grpo] {line}"),
                       on_progress=lambda step, total, reward: ctx.progress(
                           "grpo", step, total,
                           f"reward {reward:.2f}" if reward is not None else ""))
        except NoSignal as exc:  # a result (GRPO had nothing to learn from), not a fault
            ctx.log(f"[grpo] {exc}")
            return {"ran": False, "start_round": start, "reason": str(exc)}
    meta = json.loads(RunLayout.adapter_meta(parts["adapter"]).read_text())
    keys = ("steps", "train_seconds", "completions", "groups", "zero_std_groups",
            "reward_first", "reward_last", "kl_last", "completion_length_mean")
    return {"ran": True, "start_round": start, "train": {k: meta.get(k) for k in keys},
            **export_and_evaluate(ctx, parts, "grpo")}


