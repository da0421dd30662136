"""Per-role suites from an interaction store, and training rows from their logged answers.

`build_suites(store, out, config)` writes, for the roles asked for:
    ROLE.train.json / ROLE.val.json / ROLE.test.json   one logged suite per role and split
    suite.train.json / suite.val.json / suite.test.json   the chosen roles together
    suites.json                                           the manifest (counts, drops, evidence)
Logged suites are tracetune suites (`tasks`, kind "logged"), run with the `replay` workflow.

The steps, in order:
  1. items: interactions with status ok and a non-empty text answer (failed calls stay in the
     baseline profile but are no benchmark item; answers made only of tool calls are skipped
     and counted);
  2. roles: `logs.roles.classify` (stated, agent name, tools, prompts; optionally a model);
  3. near-duplicates: MinHash over word 3-shingles of the last user message (the system
     prompt when there is none) (datasketch's MinHash and MinHashLSH, Broder 1997), estimated Jaccard >=
     `dedup_threshold`; the earliest item of a near-duplicate group is kept, so no later
     near-copy can sit in another split;
  4. splits: per role, by time (oldest `train` %, then `val` %, newest `test` %; seed 003's
     80/10/10), so the test items come after everything trained on, as in production;
  5. runnable items: a request holding a fenced Python block with tests (`def test_...` or
     `assert`) whose logged answer holds code that passes those tests in the sandbox becomes a
     task with `tests` (graded by running them); every other item is graded against the logged
     answer by the replay workflow's judge, and the manifest counts each kind.
`check_leakage(suite, rows)` refuses training rows whose prompt is a test item's (exact, or a
near-duplicate by the same MinHash test).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.logs.record import ROLES, Interaction
from tracetune.tasks import LOGGED

SPLITS = ("train", "val", "test")
MANIFEST = "suites.json"
COMBINED = "suite"
NUM_PERM = 128


@dataclass(frozen=True)
class SuiteConfig:
    roles: tuple[str, ...] = ()
    """Roles to build suites for (empty: every role present)."""
    split: tuple[int, int, int] = (80, 10, 10)
    """Train, val and test shares in percent, in time order (seed 003: 80/10/10)."""
    dedup_threshold: float = 0.8
    """Estimated Jaccard similarity (word 3-shingles) at or above which a later item is a
    near-duplicate of an earlier one and dropped; 1.0 drops exact copies only."""
    classify_model: str | None = None
    """A model spec that classifies the items the rules leave at `other` (None: rules only)."""
    min_test: int = 1
    """Least test items a built role needs (fewer: the role is skipped, and named)."""

    def validate(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise TracetuneError(f"unknown role(s) {', '.join(unknown)} (one of "
                                 f"{', '.join(ROLES)})")
        if len(self.split) != 3 or any(p < 0 for p in self.split) or sum(self.split) != 100 \
                or self.split[2] == 0 or self.split[0] == 0:
            raise TracetuneError(f"split must be three shares (train, val, test) summing to "
                                 f"100, train and test above 0, not {list(self.split)}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise TracetuneError(f"dedup_threshold must be within (0, 1], not "
                                 f"{self.dedup_threshold}")
        if self.min_test < 1:
            raise TracetuneError("min_test must be at least 1")


@dataclass
class SuiteReport:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """role -> split -> items."""
    runnable: dict[str, int] = field(default_factory=dict)
    """role -> items graded by their own tests."""
    dropped: dict[str, int] = field(default_factory=dict)
    """reason -> items dropped (error status, no text answer, near-duplicate...)."""
    evidence: dict[str, int] = field(default_factory=dict)
    """How roles were decided: stated, agent name, tools, system prompt, prompt, model,
    default."""
    skipped_roles: dict[str, str] = field(default_factory=dict)
    """role -> why no suite was written."""
    boundaries: dict[str, dict[str, float]] = field(default_factory=dict)
    """role -> {"train_until", "test_from"}: the split times (Unix seconds)."""

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


# --- near-duplicates -----------------------------------------------------------------------------

def _shingles(text: str) -> set[bytes]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < 3:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + 3]).encode() for i in range(len(words) - 2)}


def _minhash(text: str):
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch(list(_shingles(text)))
    return m


def _key_text(messages: list[dict]) -> str:
    from tracetune.logs.record import content_text

    system = "\n".join(content_text(m.get("content")) for m in messages
                       if m.get("role") in ("system", "developer"))
    user = next((content_text(m.get("content")) for m in reversed(messages)
                 if m.get("role") == "user"), "")
    # the request itself: a system prompt shared by every call of an agent would make any two
    # short requests of that agent look alike
    return user or system


def near_duplicates(texts: list[str], threshold: float) -> list[int | None]:
    """For each text (in order), the index of an earlier kept text it nearly duplicates, or
    None when it is kept. Exact copies always count; others by MinHashLSH at `threshold`."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=NUM_PERM) \
        if threshold < 1.0 else None
    exact: dict[str, int] = {}
    out: list[int | None] = []
    for i, text in enumerate(texts):
        norm = " ".join(re.findall(r"\w+", text.lower()))
        if norm in exact:
            out.append(exact[norm])
            continue
        if lsh is not None:
            m = _minhash(text)
            hits = [int(k) for k in lsh.query(m)]
            if hits:
                out.append(min(hits))
                continue
            lsh.insert(str(i), m)
        exact[norm] = i
        out.append(None)
    return out


# --- runnable items ------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def request_tests(prompt: str) -> str | None:
    """The pytest file a request's fenced tests make, or None: the last fenced Python block
    of the prompt that holds `def test_` functions or `assert` lines, importing the solution
    (`from solution import *`); bare asserts are wrapped in one test function."""
    import ast

    for block in reversed(_FENCE.findall(prompt)):
        if "def test_" not in block and not re.search(r"^\s*assert\b", block, re.M):
            continue
        try:
            ast.parse(block)
        except SyntaxError:
            continue
        if "def test_" not in block:
            block = "def test_logged():\n" + "\n".join(
                "    " + line for line in block.splitlines())
        return "from solution import *  # noqa: F403\n\n" + block.strip() + "\n"
    return None


def _defined(code: str) -> tuple[str, ...]:
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ()
    return tuple(n.name for n in tree.body
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


# --- building ------------------------------------------------------------------------------------

def _task_id(rec: Interaction, role: str) -> str:
    return f"{role}/{rec.id[:16]}"


def _chat(rec: Interaction) -> str:
    return json.dumps(list(rec.messages), ensure_ascii=False, sort_keys=True)


def build_suites(store_dir: Path, out: Path, config: SuiteConfig | None = None, *,
                 log=lambda line: None) -> SuiteReport:
    """Build the suites (module docstring) from the store in `store_dir` into the directory
    `out` (created; it must not hold a manifest already). Roles decided here are written back
    to the store. Raises TracetuneError for a bad config, an empty store, or no role with
    enough items."""
    from tracetune.agents.extract import extract_code, sanitize
    from tracetune.logs.roles import classify
    from tracetune.logs.store import LogStore
    from tracetune.sandbox import Job, Sandbox, SandboxConfig

    config = config or SuiteConfig()
    config.validate()
    out = Path(out)
    if (out / MANIFEST).exists():
        raise TracetuneError(f"{out} already holds suites ({MANIFEST}); choose another --out")
    report = SuiteReport()
    with LogStore(store_dir) as store:
        records = list(store.interactions())
        if not records:
            raise TracetuneError(f"the interaction store in {store_dir} is empty")
        decisions = classify(records, model=config.classify_model)
        store.set_roles({r.id: d.role for r, d in zip(records, decisions.values())
                         if r.role != d.role})
    for d in decisions.values():
        report.evidence[d.evidence] = report.evidence.get(d.evidence, 0) + 1
    items = []
    for r in records:
        if r.status != "ok":
            report.drop("error status")
        elif not r.response.strip():
            report.drop("no text answer")
        else:
            items.append(r)
    dups = near_duplicates([_key_text(list(r.messages)) for r in items], config.dedup_threshold)
    kept = [r for r, d in zip(items, dups) if d is None]
    if len(kept) < len(items):
        report.drop("near-duplicate", len(items) - len(kept))
    roles = config.roles or tuple(r for r in ROLES if any(decisions[i.id].role == r for i in kept))
    by_role = {role: [r for r in kept if decisions[r.id].role == role] for role in roles}

    # runnable items: the logged code must pass the request's own tests
    candidates = []
    for role, recs in by_role.items():
        for r in recs:
            tests = request_tests(r.prompt)
            if tests is not None:
                code = sanitize(extract_code(r.response))
                candidates.append((r, tests, code))
    runnable: dict[str, tuple[str, str]] = {}
    if candidates:
        with Sandbox(SandboxConfig()) as sb:
            results = sb.map([Job.tests(t, module=c, module_name="solution")
                              for _, t, c in candidates])
        for (r, tests, code), res in zip(candidates, results):
            if res.passed:
                runnable[r.id] = (tests, code)
            else:
                report.drop("tests fail on the logged answer (judged instead)")

    out.mkdir(parents=True, exist_ok=True)
    combined: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for role, recs in by_role.items():
        n = len(recs)
        n_train = n * config.split[0] // 100
        n_val = n * config.split[1] // 100
        parts = {"train": recs[:n_train], "val": recs[n_train:n_train + n_val],
                 "test": recs[n_train + n_val:]}
        if len(parts["test"]) < config.min_test or not parts["train"]:
            report.skipped_roles[role] = (f"{n} item(s): too few for a train and at least "
                                          f"{config.min_test} test item(s)")
            continue
        report.counts[role] = {s: len(v) for s, v in parts.items()}
        report.runnable[role] = sum(r.id in runnable for r in recs)
        report.boundaries[role] = {"train_until": parts["train"][-1].started_at,
                                   "test_from": parts["test"][0].started_at}
        for split, part in parts.items():
            tasks = [_task(r, role, runnable.get(r.id)) for r in part]
            combined[split] += tasks
            _write_suite(out / f"{role}.{split}.json", f"logs-{role}-{split}", tasks)
    if not report.counts:
        raise TracetuneError("no role has enough items for a suite: "
                             + "; ".join(f"{k}: {v}" for k, v in report.skipped_roles.items()))
    for split, tasks in combined.items():
        _write_suite(out / f"{COMBINED}.{split}.json", f"logs-{split}", tasks)
    (out / MANIFEST).write_text(json.dumps({"config": asdict(config), **asdict(report)},
                                           indent=2, sort_keys=True))
    log(summary(report))
    return report


def _task(r: Interaction, role: str, runnable: tuple[str, str] | None) -> dict:
    task = {"id": _task_id(r, role), "spec": r.prompt[:2000] or "(no user message)",
            "chat": _chat(r), "reference": r.response, "tags": [role, f"t={r.started_at:.3f}"]}
    if runnable is not None:
        tests, code = runnable
        task["tests"] = tests
        task["names"] = list(_defined(code))
    return task


def _write_suite(path: Path, name: str, tasks: list[dict]) -> None:
    data = {"suite": {"name": name, "version": 1, "kind": LOGGED, "train_pct": 100,
                      "description": "logged production requests (tracetune logs suite)"},
            "task": tasks}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


def summary(report: SuiteReport) -> str:
    lines = []
    for role, counts in report.counts.items():
        lines.append(f"{role:12s} train {counts['train']:4d}  val {counts['val']:4d}  test "
                     f"{counts['test']:4d}  (runnable {report.runnable[role]})")
    for role, why in report.skipped_roles.items():
        lines.append(f"{role:12s} skipped: {why}")
    if report.dropped:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in report.dropped.items()))
    lines.append("roles decided by: " + ", ".join(f"{k} {v}"
                                                  for k, v in sorted(report.evidence.items())))
    return "\n".join(lines)


# --- training rows from logged answers -----------------------------------------------------------

def check_leakage(test_suite: Path, prompts: list[list[dict]], threshold: float) -> list[int]:
    """Indices of `prompts` (chat message lists) that are a test item's request: the same key
    text, or a near-duplicate at `threshold` (the suites' own test)."""
    from datasketch import MinHashLSH

    from tracetune.tasks import load_suite

    tests = load_suite(str(test_suite)).tasks
    exact = {" ".join(re.findall(r"\w+", _key_text(t.messages).lower())) for t in tests}
    lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=NUM_PERM) \
        if threshold < 1.0 else None
    if lsh is not None:
        for i, t in enumerate(tests):
            lsh.insert(str(i), _minhash(_key_text(t.messages)))
    bad = []
    for i, p in enumerate(prompts):
        text = _key_text(p)
        if " ".join(re.findall(r"\w+", text.lower())) in exact or (
                lsh is not None and lsh.query(_minhash(text))):
            bad.append(i)
    return bad


def mine_logged(suites_dir: Path, out: Path, *, max_rows: int = 0, threshold: float = 0.8,
                log=lambda line: None) -> dict:
    """SFT rows from the logged answers of the train items of `suites_dir`'s combined suite
    (a row: the request's messages, then the logged answer as the assistant's turn), written
    as a tracetune dataset (`datasets.build`'s layout) to `out`. `max_rows` > 0 keeps the
    newest that many. Raises TracetuneError when a row would leak a test item's request
    (`check_leakage`), or when there is no train item."""
    from tracetune.datasets.build import _write
    from tracetune.datasets.mine import MineReport
    from tracetune.datasets.rows import Row, row_id
    from tracetune.tasks import load_suite

    train = load_suite(str(Path(suites_dir) / f"{COMBINED}.train.json")).tasks
    if max_rows:
        train = sorted(train, key=lambda t: t.tags[-1])[-max_rows:]
    if not train:
        raise TracetuneError(f"{suites_dir} has no train items to mine")
    rows = []
    for t in train:
        prompt = [{"role": m.get("role", "user"), "content": m.get("content", "")}
                  for m in t.messages]
        completion = {"role": "assistant", "content": t.reference}
        rows.append(Row(id=row_id("sft", prompt, completion), kind="sft", step="answer",
                        task=t.id, tiers=["logged"], prompt=prompt, code=t.reference,
                        provenance={"source": "logs", "run_id": "logs", "task": t.id,
                                    "trial": 0, "attempt": 1, "step": "answer",
                                    "model": "logged", "episode_seed": 0,
                                    "guard_result": "tests" if t.tests else "logged",
                                    "timestamp": t.tags[-1][2:]}, completion=completion))
    leaks = check_leakage(Path(suites_dir) / f"{COMBINED}.test.json", [r.prompt for r in rows],
                          threshold)
    if leaks:
        raise TracetuneError(f"{len(leaks)} training row(s) hold a test item's request (e.g. "
                             f"{rows[leaks[0]].task}); the suites leak, rebuild them")
    from tracetune.datasets.build import MineConfig

    report = MineReport(rows={"sft": rows})
    _write(Path(out), [Path(suites_dir)], MineConfig(tokenizer=None), report)
    log(f"[mine] {len(rows)} SFT rows from logged answers of train items; no test request "
        "among them")
    return {"counts": {"sft": len(rows)}, "dropped": {}}
