"""Mining: trajectory stores -> fine-tuning rows (SFT, DPO pairs, failure->fix pairs).

Every row is a `tracetune.datasets.rows.Row` (schema version 1; its `to_dict()` is the JSON
object written, the same keys for every kind but the targets):
  id          sha1 of the row's content (stable across runs of the miner)
  kind        sft | dpo | fix
  step        the workflow step the row teaches (impl, g_test, g_impl, repair)
  task        task id;  tiers: the quality tiers the source attempt satisfies
  prompt      chat messages up to the assistant's turn
  completion  sft/fix: the target assistant message (the clean code in one fenced block)
  chosen, rejected   dpo: a passing and a failing answer to the same prompt
  provenance  run_id, task, trial, attempt, model, timestamp, guard_result, step, episode seed
Quality tiers (seed 000): first_attempt (passed its guards on attempt 1), validated (tdd g_test:
the tests passed their guard, the downstream g_impl succeeded and the tests were right), workflow
(the episode succeeded; the attempt is the step's accepted one).

The miner reads each stored `tracetune.types.Attempt` with its episode's context
(`MinedAttempt`). An attempt with facts (`Attempt.facts`, the repair agent's steps) is an agent
step; every other attempt belongs to a guarded workflow.

Agent steps (repair episodes, seed 002) are mined one by one: every assistant message is one
example whose prompt is the conversation so far and whose completion is the message as canonical
JSON. A step is mined only when it was a valid protocol message (never a parse error or a
detected loop); its tiers add: tool_ok (the tool succeeded: seed 002's require-valid-tool-ok) and
workflow (the episode fixed the bug: require-success). DPO pairs prefer, at the same conversation
prefix, a valid call whose tool succeeded over a parse error or a looping call (from other
rollouts that share the prefix, or from a teacher asked at that prefix, e.g. the oracle).
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

from tracetune.datasets.rows import Row, row_id
from tracetune.errors import TracetuneError
from tracetune.traces.store import Store
from tracetune.types import Attempt

TIERS = ("first_attempt", "validated", "workflow", "tool_ok", "kills_mutants")
DEFAULT_TIERS = {"impl": ("workflow",), "g_test": ("first_attempt", "validated"),
                 "testgen": ("workflow", "kills_mutants"),
                 "g_impl": ("workflow",), "repair": ("tool_ok", "workflow")}
VALID_KINDS = ("tool_call", "final")
"""Agent step kinds that are valid protocol messages (the others: parse_error, loop)."""


@dataclass(frozen=True)
class EpisodeContext:
    """The run and episode an attempt belongs to: what mining needs besides the attempt itself.
    One instance is shared by every attempt of the episode."""

    run_id: str
    model: str
    """The run's model spec."""
    suite: str
    """The run's suite (with its split suffix, if any)."""
    train_pct: int
    """The train share of the run's split (its --train-pct, else its suite's)."""
    workflow: str
    task: str
    trial: int
    seed: int
    """The episode seed."""
    success: bool
    wrong_tests: bool | None


@dataclass(frozen=True)
class MinedAttempt:
    """One stored attempt as the miner sees it: the attempt (not copied), its episode, the step's
    first prompt and the quality tiers it satisfies."""

    attempt: Attempt
    episode: EpisodeContext
    prompt: list[dict]
    """The step's first prompt (the first attempt's first message, without retry turns)."""
    tiers: tuple[str, ...]

    @property
    def agent_step(self) -> bool:
        """An agent (tool protocol) step: the attempt carries facts."""
        return self.attempt.facts is not None

    @property
    def step_kind(self) -> str | None:
        """An agent step's kind (tool_call, final, parse_error, loop); None otherwise."""
        return (self.attempt.facts or {}).get("kind")


@dataclass
class MineReport:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    """kind -> its rows, in the order written."""
    dropped: dict[str, int] = field(default_factory=dict)
    """filter name -> rows it removed."""
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, row: Row) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(f"{row.kind} {row.task} ({row.provenance['run_id'][:8]}"
                            f" trial {row.provenance['trial']})")


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


def load_attempts(run_dir: Path) -> list[MinedAttempt]:
    """Every attempt of the run's finished episodes, in episode (task, trial) then recording
    order. Raises TracetuneError when run_dir holds no readable store or no finished episode."""
    store = Store(run_dir)
    try:
        run = store.run()
        pct = run_train_pct(run.config, run.suite)
        episodes = store.episodes()
        if not episodes:
            raise TracetuneError(f"run {run_dir} has no finished episodes to mine")
        out: list[MinedAttempt] = []
        for ep in episodes:
            ctx = EpisodeContext(
                run_id=run.id, model=run.model_spec, suite=run.suite, train_pct=pct,
                workflow=ep["workflow"], task=ep["task_id"], trial=ep["trial"], seed=ep["seed"],
                success=bool(ep["success"]),
                wrong_tests=None if ep["wrong_tests"] is None else bool(ep["wrong_tests"]))
            first_prompt: dict[str, list[dict]] = {}
            for a in store.attempts(ep["id"]):
                prompt = first_prompt.setdefault(a.step, a.messages[:1])
                out.append(MinedAttempt(a, ctx, prompt, _tiers(a, ctx)))
        return out
    finally:
        store.close()


def complete(a: Attempt) -> bool:
    """The generation ended by itself: not cut at max_tokens, not a backend error. Attempts
    recorded before finish reasons were kept (None) count as complete."""
    return a.finish_reason not in ("length", "error")


def _tiers(a: Attempt, ep: EpisodeContext) -> tuple[str, ...]:
    tiers = []
    if not complete(a):  # a cut answer is never a good example, whatever its checks said
        return ()
    if a.facts is not None:  # an agent step: valid, and its tool (if any) succeeded
        if a.facts.get("kind") in VALID_KINDS and a.facts.get("tool_ok") is not False:
            tiers.append("tool_ok")
            if ep.success:
                tiers.append("workflow")
        return tuple(tiers)
    if a.passed and a.attempt == 1:
        tiers.append("first_attempt")
    if a.passed and ep.success:
        tiers.append("workflow")
        if a.step == "g_test" and ep.wrong_tests is False:
            tiers.append("validated")
    if a.passed and (mutation_score(a) or 0) > 0:
        tiers.append("kills_mutants")
    return tuple(tiers)


def mutation_score(a: Attempt) -> float | None:
    """A testgen attempt's mutation score (its `grade` guard record), None when not graded."""
    grade = next((g for g in a.guards if g.get("guard") == "grade"), None)
    return None if grade is None else (grade.get("details") or {}).get("mutation_score")


def _provenance(m: MinedAttempt) -> dict:
    a, ep = m.attempt, m.episode
    return {"source": "tracetune_run", "run_id": ep.run_id, "task": ep.task, "trial": ep.trial,
            "attempt": a.attempt, "step": a.step, "model": ep.model,
            "episode_seed": ep.seed, "guard_result": "PASS" if a.passed else "FAIL",
            "timestamp": dt.datetime.fromtimestamp(a.created_at, dt.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ")}


def sft_rows(attempts: Iterable[MinedAttempt], tiers: dict[str, tuple[str, ...]]) -> list[Row]:
    """Attempts that satisfy every tier listed for their step (a step not listed is not mined;
    an empty list asks for a passing attempt, or for an agent step a valid message, and nothing
    more). An attempt cut at max_tokens is never mined (`complete`)."""
    rows = []
    for m in attempts:
        want = tiers.get(m.attempt.step)
        if want is None or not complete(m.attempt) or not all(t in m.tiers for t in want):
            continue
        if m.agent_step:
            if m.step_kind in VALID_KINDS:
                rows.append(_step_row(m))
        elif m.attempt.passed:
            rows.append(_sft_row(m, fenced(m.attempt.code), m.attempt.code))
    return rows


def _step_row(m: MinedAttempt) -> Row:
    """An agent step: the conversation so far -> the message as canonical JSON."""
    a = m.attempt
    completion = {"role": "assistant", "content": a.code}
    return Row(id=row_id("sft", a.messages, completion), kind="sft", step=a.step,
               task=m.episode.task, tiers=list(m.tiers), prompt=a.messages,
               completion=completion, code=a.code, provenance=_provenance(m))


def _sft_row(m: MinedAttempt, content: str, code: str, *id_extra: object) -> Row:
    completion = {"role": "assistant", "content": content}
    return Row(id=row_id("sft", m.prompt, completion, *id_extra), kind="sft",
               step=m.attempt.step, task=m.episode.task, tiers=list(m.tiers), prompt=m.prompt,
               completion=completion, code=code, provenance=_provenance(m))


def unfiltered_rows(attempts: Iterable[MinedAttempt]) -> list[Row]:
    """Control rows: every first attempt as an SFT row, passing or not (its extracted code, or
    the raw answer when nothing could be extracted). Trained on as many rows as the filtered set,
    they separate the effect of the filter from the effect of fine-tuning at all."""
    rows = []
    for m in attempts:
        a = m.attempt
        if a.attempt != 1:
            continue
        raw = m.agent_step or not a.code.strip()
        rows.append(_sft_row(m, a.raw_output if raw else fenced(a.code),
                             a.code or a.raw_output, m.episode.trial))
    return rows


def fix_rows(attempts: list[MinedAttempt]) -> list[Row]:
    """A failed attempt + its guard feedback -> the attempt that then passed (seed 001 stage C)."""
    by_key: dict[tuple, list[MinedAttempt]] = {}
    for m in attempts:
        if m.agent_step:  # an agent step after an error is an ordinary step row
            continue
        ep = m.episode
        by_key.setdefault((ep.run_id, ep.task, ep.trial, m.attempt.step), []).append(m)
    rows = []
    for group in by_key.values():
        group.sort(key=lambda m: m.attempt.attempt)
        for failed, nxt in zip(group, group[1:]):
            f, n = failed.attempt, nxt.attempt
            if f.passed or not n.passed or n.attempt != f.attempt + 1 or not complete(n):
                continue
            # The next attempt saw exactly [first prompt, failed answer, feedback].
            completion = {"role": "assistant", "content": fenced(n.code)}
            rows.append(Row(id=row_id("fix", n.messages, completion), kind="fix", step=n.step,
                            task=nxt.episode.task, tiers=list(nxt.tiers), prompt=n.messages,
                            completion=completion, code=n.code, provenance=_provenance(nxt)))
    return rows


def dpo_rows(attempts: list[MinedAttempt], max_pairs_per_task: int = 8,
             teacher: str | None = None) -> list[Row]:
    """Same prompt (a step's first prompt), a passing answer preferred over a failing one; for
    agent steps see step_dpo_rows. Both sides are in the same form (the extracted code in one
    python fence), so a pair differs in correctness, not in formatting (a raw answer without its
    closing fence would teach "close the fence"); a failing answer with no code, or either side
    cut at max_tokens, makes no pair. Raises TracetuneError for a teacher other than
    None/oracle."""
    rows = step_dpo_rows([m for m in attempts if m.agent_step], max_pairs_per_task, teacher)
    groups: dict[tuple, tuple[list[MinedAttempt], list[MinedAttempt]]] = {}
    for m in attempts:
        if m.attempt.attempt != 1 or m.agent_step:  # first attempts share the prompt across trials
            continue
        if not complete(m.attempt) or not m.attempt.code.strip():
            continue
        key = (m.episode.task, m.attempt.step, json.dumps(m.prompt, sort_keys=True))
        good, bad = groups.setdefault(key, ([], []))
        (good if m.attempt.passed else bad).append(m)
    for (task, step, _), (good, bad) in groups.items():
        good, bad = _unique_by_code(good), _unique_by_code(bad)
        rows += _mutation_pairs(task, step, good, max_pairs_per_task)
        if not good or not bad:
            continue
        # Pair i takes the i-th passing and i-th failing answer (cycling the shorter list), so
        # every distinct answer is used before any pair repeats one.
        for i in range(min(max_pairs_per_task, max(len(good), len(bad)))):
            g, b = good[i % len(good)], bad[i % len(bad)]
            chosen = {"role": "assistant", "content": fenced(g.attempt.code)}
            rejected = {"role": "assistant", "content": fenced(b.attempt.code)}
            rows.append(Row(id=row_id("dpo", g.prompt, chosen, rejected), kind="dpo", step=step,
                            task=task, tiers=list(g.tiers), prompt=g.prompt, chosen=chosen,
                            rejected=rejected, code=g.attempt.code,
                            provenance={**_provenance(g), "rejected": _provenance(b)}))
    return rows


def _mutation_pairs(task: str, step: str, good: list[MinedAttempt], limit: int) -> list[Row]:
    """Test files, both valid (passing): the one that kills more mutants preferred (graded
    testgen attempts only; equal scores make no pair). The highest-scoring files are paired with
    the lowest, in order, at most `limit` pairs."""
    graded = sorted((m for m in good if mutation_score(m.attempt) is not None),
                    key=lambda m: -mutation_score(m.attempt))
    rows = []
    for hi, lo in zip(graded, reversed(graded)):
        if len(rows) >= limit or mutation_score(hi.attempt) <= mutation_score(lo.attempt):
            break
        chosen = {"role": "assistant", "content": fenced(hi.attempt.code)}
        rejected = {"role": "assistant", "content": fenced(lo.attempt.code)}
        rows.append(Row(id=row_id("dpo", hi.prompt, chosen, rejected), kind="dpo", step=step,
                        task=task, tiers=list(hi.tiers), prompt=hi.prompt, chosen=chosen,
                        rejected=rejected, code=hi.attempt.code,
                        provenance={**_provenance(hi), "rejected": _provenance(lo),
                                    "preferred_for": "mutation_score",
                                    "scores": [mutation_score(hi.attempt),
                                               mutation_score(lo.attempt)]}))
    return rows


def step_dpo_rows(attempts: list[MinedAttempt], max_pairs_per_task: int = 8,
                  teacher: str | None = None) -> list[Row]:
    """Agent steps: at one conversation prefix, a valid call whose tool succeeded (chosen) over a
    parse error or a looping call (rejected). The chosen message comes from another rollout with
    the same prefix, or, with teacher = "oracle", from the oracle asked at that prefix (so every
    bad step of a weak model yields a pair). Raises TracetuneError for any other teacher."""
    groups: dict[tuple, tuple[list[MinedAttempt], list[MinedAttempt]]] = {}
    for m in attempts:
        key = (m.episode.task, json.dumps(m.attempt.messages, sort_keys=True))
        good, bad = groups.setdefault(key, ([], []))
        if "tool_ok" in m.tiers:
            good.append(m)
        elif m.step_kind in ("parse_error", "loop") and complete(m.attempt):
            bad.append(m)
    tasks = _suite_tasks(attempts) if teacher else {}
    if teacher is not None and not is_oracle(teacher):
        raise TracetuneError(f"DPO teacher {teacher!r}: only 'oracle' can relabel steps offline")
    rows: list[Row] = []
    per_task: dict[str, int] = {}
    for (task, _), (good, bad) in sorted(groups.items(), key=lambda kv: kv[0]):
        bad = _unique_by_code(bad)
        for b in bad:
            if per_task.get(task, 0) >= max_pairs_per_task:
                break
            if good:
                chosen_text, source = good[0].attempt.code, _provenance(good[0])
            elif task in tasks:
                # Lazy: the miner must not depend on the agents at import time (import cycles).
                from tracetune.agents.teachers import canonical_json, oracle_step

                chosen_text = canonical_json(oracle_step(tasks[task], b.attempt.messages))
                source = {"source": "oracle"}
            else:
                continue
            chosen = {"role": "assistant", "content": chosen_text}
            # A looping call is a valid message: it is compared in the chosen side's canonical
            # JSON form; a parse error has no other form than the text the model wrote.
            rejected = {"role": "assistant", "content": b.attempt.code
                        if b.step_kind == "loop" and b.attempt.code else b.attempt.raw_output}
            rows.append(Row(id=row_id("dpo", b.attempt.messages, chosen, rejected), kind="dpo",
                            step=b.attempt.step, task=task, tiers=["tool_ok"],
                            prompt=b.attempt.messages, chosen=chosen, rejected=rejected,
                            code=chosen_text,
                            provenance={**_provenance(b), "chosen": source,
                                        "rejected_kind": b.step_kind}))
            per_task[task] = per_task.get(task, 0) + 1
    return rows


def _suite_tasks(attempts: list[MinedAttempt]) -> dict:
    """Task id -> Task for the suites the attempts' runs used (the oracle needs the fixes)."""
    from tracetune.tasks import load_suite, split_suffix

    out = {}
    for suite in {m.episode.suite for m in attempts}:
        try:
            out.update({t.id: t for t in load_suite(split_suffix(suite)[0]).tasks})
        except TracetuneError:
            continue
    return out


def _unique_by_code(attempts: list[MinedAttempt]) -> list[MinedAttempt]:
    seen, out = set(), []
    for m in sorted(attempts, key=lambda m: (m.episode.trial, m.episode.run_id)):
        a = m.attempt
        h = code_hash(a.code if a.passed or not m.agent_step else a.raw_output)
        if h not in seen:
            seen.add(h)
            out.append(m)
    return out


def is_oracle(spec: str) -> bool:
    """The spec names the oracle teacher (with any options): the one teacher that can relabel
    steps offline, from the task's reference fix."""
    from tracetune.models import parse_spec

    return parse_spec(spec).backend == "oracle"
