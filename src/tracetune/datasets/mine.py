"""Mining: trajectory stores -> fine-tuning rows (SFT, DPO pairs, failure->fix pairs).

Row schema (version 1), one JSON object per row, the same for every kind:
  id          sha1 of the row's content (stable across runs of the miner)
  kind        sft | dpo | fix
  step        the workflow step the row teaches (impl, g_test, g_impl)
  task        task id;  tiers: the quality tiers the source attempt satisfies
  prompt      chat messages up to the assistant's turn
  completion  sft/fix: the target assistant message (the clean code in one fenced block)
  chosen, rejected   dpo: a passing and a failing answer to the same prompt
  provenance  run_id, task, trial, attempt, model, timestamp, guard_result, step, episode seed
Quality tiers (seed 000): first_attempt (passed its guards on attempt 1), validated (tdd g_test:
the tests passed their guard, the downstream g_impl succeeded and the tests were right), workflow
(the episode succeeded; the attempt is the step's accepted one).

Repair episodes (seed 002) are mined step by step: every assistant message is one example whose
prompt is the conversation so far and whose completion is the message as canonical JSON. A step
is mined only when it was a valid protocol message (never a parse error or a detected loop);
its tiers add: tool_ok (the tool succeeded: seed 002's require-valid-tool-ok) and workflow (the
episode fixed the bug: require-success). DPO pairs prefer, at the same conversation prefix, a
valid call whose tool succeeded over a parse error or a looping call (from other rollouts that
share the prefix, or from a teacher asked at that prefix, e.g. the oracle).
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tracetune.errors import TracetuneError
from tracetune.traces.store import Store

SCHEMA_VERSION = 1
TIERS = ("first_attempt", "validated", "workflow", "tool_ok")
KINDS = ("sft", "dpo", "fix")
DEFAULT_TIERS = {"impl": ("workflow",), "g_test": ("first_attempt", "validated"),
                 "g_impl": ("workflow",), "repair": ("tool_ok", "workflow")}
REPAIR = "repair"
VALID_KINDS = ("tool_call", "final")


@dataclass
class Attempt:
    """One attempt with the context mining needs."""

    run_id: str
    model: str
    workflow: str
    task: str
    trial: int
    episode_seed: int
    episode_success: bool
    wrong_tests: bool | None
    step: str
    attempt: int
    passed: bool
    prompt: list[dict]
    """The step's first prompt (without retry turns)."""
    messages: list[dict]
    """The messages this attempt actually saw (retries include the failed answer + feedback)."""
    raw: str
    code: str
    feedback: str
    created_at: float
    tiers: tuple[str, ...] = ()
    train_pct: int = 50
    """The train share of the run's split (its --train-pct, else its suite's)."""
    suite: str = ""
    details: dict = field(default_factory=dict)
    """repair steps: kind (tool_call, final, parse_error, loop), name, tool_ok, tests."""


@dataclass
class MineReport:
    rows: dict[str, list[dict]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    """filter name -> rows it removed."""
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, row: dict) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(f"{row['kind']} {row['task']} ({row['provenance']['run_id'][:8]}"
                            f" trial {row['provenance']['trial']})")


def fenced(code: str) -> str:
    """The training target: the code in one python fence (the model then stops after it)."""
    return f"```python\n{code.strip()}\n```"


def normalize_code(code: str) -> str:
    """Comments, blank lines, quoting and spacing removed: equal for the same program."""
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return re.sub(r"\s+", " ", re.sub(r"#[^\n]*", "", code)).strip()


def code_hash(code: str) -> str:
    return hashlib.sha1(normalize_code(code).encode("utf-8")).hexdigest()


def run_train_pct(config: dict, suite: str) -> int:
    """The train share a run split its suite with."""
    if config.get("train_pct") is not None:
        return int(config["train_pct"])
    from tracetune.tasks import load_suite, split_suffix

    try:
        return load_suite(split_suffix(suite)[0]).train_pct
    except TracetuneError:
        return 50


def load_attempts(run_dir: Path) -> list[Attempt]:
    store = Store(run_dir)
    try:
        run = store.run()
        pct = run_train_pct(run.config, run.suite)
        episodes = store.episodes()
        if not episodes:
            raise TracetuneError(f"run {run_dir} has no finished episodes to mine")
        out: list[Attempt] = []
        for ep in episodes:
            first_prompt: dict[str, list[dict]] = {}
            for a in store.attempts(ep["id"]):
                prompt = first_prompt.setdefault(a["step"], a["messages"][:1])
                out.append(Attempt(
                    run_id=run.id, model=run.model_spec, workflow=ep["workflow"],
                    task=ep["task_id"], trial=ep["trial"], episode_seed=ep["seed"],
                    episode_success=bool(ep["success"]),
                    wrong_tests=None if ep["wrong_tests"] is None else bool(ep["wrong_tests"]),
                    step=a["step"], attempt=a["attempt"], passed=a["passed"], prompt=prompt,
                    messages=a["messages"], raw=a["raw_output"], code=a["code"],
                    feedback=a["feedback"], created_at=a["created_at"], train_pct=pct,
                    suite=run.suite,
                    details=(a["guards"][0].get("details") or {}) if a["guards"] else {}))
        return [_with_tiers(a) for a in out]
    finally:
        store.close()


def _with_tiers(a: Attempt) -> Attempt:
    tiers = []
    if a.step == REPAIR:
        if a.details.get("kind") in VALID_KINDS and a.details.get("tool_ok") is not False:
            tiers.append("tool_ok")
            if a.episode_success:
                tiers.append("workflow")
        a.tiers = tuple(tiers)
        return a
    if a.passed and a.attempt == 1:
        tiers.append("first_attempt")
    if a.passed and a.episode_success:
        tiers.append("workflow")
        if a.step == "g_test" and a.wrong_tests is False:
            tiers.append("validated")
    a.tiers = tuple(tiers)
    return a


def _provenance(a: Attempt) -> dict:
    return {"source": "tracetune_run", "run_id": a.run_id, "task": a.task, "trial": a.trial,
            "attempt": a.attempt, "step": a.step, "model": a.model,
            "episode_seed": a.episode_seed, "guard_result": "PASS" if a.passed else "FAIL",
            "timestamp": dt.datetime.fromtimestamp(a.created_at, dt.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ")}


def _row_id(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def sft_rows(attempts: Iterable[Attempt], tiers: dict[str, tuple[str, ...]]) -> list[dict]:
    """Attempts that satisfy every tier listed for their step (a step not listed is not mined;
    an empty list asks for a passing attempt, or for repair a valid message, and nothing more)."""
    rows = []
    for a in attempts:
        want = tiers.get(a.step)
        if want is None or not all(t in a.tiers for t in want):
            continue
        if a.step == REPAIR:
            if a.details.get("kind") in VALID_KINDS:
                rows.append(_step_row(a))
        elif a.passed:
            rows.append(_sft_row(a, fenced(a.code), a.code))
    return rows


def _step_row(a: Attempt) -> dict:
    """A repair step: the conversation so far -> the message as canonical JSON."""
    completion = {"role": "assistant", "content": a.code}
    return {"id": _row_id("sft", a.messages, completion), "kind": "sft", "step": a.step,
            "task": a.task, "tiers": list(a.tiers), "prompt": a.messages,
            "completion": completion, "code": a.code, "provenance": _provenance(a)}


def _sft_row(a: Attempt, content: str, code: str, *id_extra: object) -> dict:
    completion = {"role": "assistant", "content": content}
    return {"id": _row_id("sft", a.prompt, completion, *id_extra), "kind": "sft", "step": a.step,
            "task": a.task, "tiers": list(a.tiers), "prompt": a.prompt, "completion": completion,
            "code": code, "provenance": _provenance(a)}


def unfiltered_rows(attempts: Iterable[Attempt]) -> list[dict]:
    """Control rows: every first attempt as an SFT row, passing or not (its extracted code, or
    the raw answer when nothing could be extracted). Trained on as many rows as the filtered set,
    they separate the effect of the filter from the effect of fine-tuning at all."""
    return [_sft_row(a, a.raw if a.step == REPAIR or not a.code.strip() else fenced(a.code),
                     a.code or a.raw, a.trial)
            for a in attempts if a.attempt == 1]


def fix_rows(attempts: list[Attempt]) -> list[dict]:
    """A failed attempt + its guard feedback -> the attempt that then passed (seed 001 stage C)."""
    by_key: dict[tuple, list[Attempt]] = {}
    for a in attempts:
        if a.step == REPAIR:  # a repair step after an error is an ordinary step row
            continue
        by_key.setdefault((a.run_id, a.task, a.trial, a.step), []).append(a)
    rows = []
    for group in by_key.values():
        group.sort(key=lambda a: a.attempt)
        for failed, nxt in zip(group, group[1:]):
            if failed.passed or not nxt.passed or nxt.attempt != failed.attempt + 1:
                continue
            # The next attempt saw exactly [first prompt, failed answer, feedback].
            completion = {"role": "assistant", "content": fenced(nxt.code)}
            rows.append({"id": _row_id("fix", nxt.messages, completion), "kind": "fix",
                         "step": nxt.step, "task": nxt.task, "tiers": list(nxt.tiers),
                         "prompt": nxt.messages, "completion": completion, "code": nxt.code,
                         "provenance": _provenance(nxt)})
    return rows


def dpo_rows(attempts: list[Attempt], max_pairs_per_task: int = 8,
             teacher: str | None = None) -> list[dict]:
    """Same prompt (a step's first prompt), a passing answer preferred over a failing one; for
    repair steps see step_dpo_rows."""
    rows = step_dpo_rows([a for a in attempts if a.step == REPAIR], max_pairs_per_task, teacher)
    groups: dict[tuple, tuple[list[Attempt], list[Attempt]]] = {}
    for a in attempts:
        if a.attempt != 1 or a.step == REPAIR:  # first attempts share the prompt across trials
            continue
        key = (a.task, a.step, json.dumps(a.prompt, sort_keys=True))
        good, bad = groups.setdefault(key, ([], []))
        (good if a.passed else bad).append(a)
    for (task, step, _), (good, bad) in groups.items():
        good, bad = _unique_by_code(good), _unique_by_code(bad)
        if not good or not bad:
            continue
        # Pair i takes the i-th passing and i-th failing answer (cycling the shorter list), so
        # every distinct answer is used before any pair repeats one.
        for i in range(min(max_pairs_per_task, max(len(good), len(bad)))):
            g, b = good[i % len(good)], bad[i % len(bad)]
            chosen = {"role": "assistant", "content": fenced(g.code)}
            rejected = {"role": "assistant", "content": b.raw}
            rows.append({"id": _row_id("dpo", g.prompt, chosen, rejected), "kind": "dpo",
                         "step": step, "task": task, "tiers": list(g.tiers), "prompt": g.prompt,
                         "chosen": chosen, "rejected": rejected, "code": g.code,
                         "provenance": {**_provenance(g), "rejected": _provenance(b)}})
    return rows


def step_dpo_rows(attempts: list[Attempt], max_pairs_per_task: int = 8,
                  teacher: str | None = None) -> list[dict]:
    """Repair steps: at one conversation prefix, a valid call whose tool succeeded (chosen) over a
    parse error or a looping call (rejected). The chosen message comes from another rollout with
    the same prefix, or, with teacher = "oracle", from the oracle asked at that prefix (so every
    bad step of a weak model yields a pair)."""
    groups: dict[tuple, tuple[list[Attempt], list[Attempt]]] = {}
    for a in attempts:
        kind = a.details.get("kind")
        key = (a.task, json.dumps(a.messages, sort_keys=True))
        good, bad = groups.setdefault(key, ([], []))
        if "tool_ok" in a.tiers:
            good.append(a)
        elif kind in ("parse_error", "loop"):
            bad.append(a)
    tasks = _suite_tasks(attempts) if teacher else {}
    if teacher not in (None, "oracle"):
        raise TracetuneError(f"DPO teacher {teacher!r}: only 'oracle' can relabel steps offline")
    rows: list[dict] = []
    per_task: dict[str, int] = {}
    for (task, _), (good, bad) in sorted(groups.items(), key=lambda kv: kv[0]):
        bad = _unique_by_code(bad)
        for b in bad:
            if per_task.get(task, 0) >= max_pairs_per_task:
                break
            if good:
                chosen_text, source = good[0].code, _provenance(good[0])
            elif task in tasks:
                from tracetune.agents.repair import canonical_json, oracle_step

                chosen_text = canonical_json(oracle_step(tasks[task], b.messages))
                source = {"source": "oracle"}
            else:
                continue
            chosen = {"role": "assistant", "content": chosen_text}
            rejected = {"role": "assistant", "content": b.raw}
            rows.append({"id": _row_id("dpo", b.messages, chosen, rejected), "kind": "dpo",
                         "step": REPAIR, "task": task, "tiers": ["tool_ok"],
                         "prompt": b.messages, "chosen": chosen, "rejected": rejected,
                         "code": chosen_text,
                         "provenance": {**_provenance(b), "chosen": source,
                                        "rejected_kind": b.details.get("kind")}})
            per_task[task] = per_task.get(task, 0) + 1
    return rows


def _suite_tasks(attempts: list[Attempt]) -> dict:
    """Task id -> Task for the suites the attempts' runs used (the oracle needs the fixes)."""
    from tracetune.tasks import load_suite, split_suffix

    out = {}
    for suite in {a.suite for a in attempts}:
        try:
            out.update({t.id: t for t in load_suite(split_suffix(suite)[0]).tasks})
        except TracetuneError:
            continue
    return out


def _unique_by_code(attempts: list[Attempt]) -> list[Attempt]:
    seen, out = set(), []
    for a in sorted(attempts, key=lambda a: (a.trial, a.run_id)):
        h = code_hash(a.code if a.passed else a.raw)
        if h not in seen:
            seen.add(h)
            out.append(a)
    return out
