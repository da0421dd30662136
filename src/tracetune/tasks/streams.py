"""Task streams for continual learning (seed 004): one suite's tasks cut into ordered sessions.

An agent works through the sessions in order; what it learned from sessions 0..k-1 may be used
on session k, never a task of a later session. A stream comes from an experiment file's
[stream] table (`stream_from_table`), one of four kinds chosen by `by`:

    by = "tags"      suite, groups = ["strings", ["lists", "dicts"], ...]: one session per group,
                     in the stated order; a group that is a list of tags takes a task with any of
                     them. A task goes to the FIRST group, in stated order, that has one of its
                     tags (a task tagged lists and math lands in whichever of the two comes
                     first); a task matching no group is left out. A session lists its tasks
                     by id. Options: max_difficulty (drop harder tasks first), max_per_session
                     (keep the first N by task id), min_per_session (default 1: a session with
                     fewer tasks is an error).
    by = "field"     suite, field = "order" | "created_at", per_session = N: the suite's tasks
                     sorted by that task field (ties by id), cut into sessions of N (the last
                     may be shorter). Every task must state the field.
    by = "explicit"  suite, sessions = [{name = "...", tasks = ["id", ...]}, ...].
    by = "builtin"   name = "funcs-topics": the funcs suite by topic, strings -> lists -> dicts
                     -> math -> recursion -> dates; or "bugs-categories": the bugs suite by
                     category, lists -> strings -> math -> sorting -> recursion -> graphs -> dp
                     -> searching. Both are `by = "tags"` presets and take its options and a
                     `groups` that overrides the preset's. In funcs every recursion task of
                     difficulty 1-2 is also tagged math, so with max_difficulty <= 2 the math
                     session takes them all and recursion is empty (an error): leave recursion
                     out of `groups` there.

The tags, field and explicit kinds take an optional `name` for the stream. A suite given as a
file path (.toml / .json) is read relative to the experiment file's folder (`base_dir`).

`reorder` applies seed 004's split designs A-E to the session order, so the same sessions can be
run in five orders and an effect told apart from an ordering artifact.

SWE-Bench-CL (Joshi et al., 2025: 8 sequences of real GitHub issues, one per repository) is read
by `read_swe_bench_cl` for its sequences and metadata. Executing its tasks needs the SWE-bench
Docker harness, which users bring; tracetune does not fake it. The path: have the agent write a
patch per instance, save them as SWE-bench predictions (JSONL lines of instance_id,
model_name_or_path, model_patch), run `python -m swebench.harness.run_evaluation --dataset_name
princeton-nlp/SWE-bench_Verified --predictions_path PREDS --run_id ID` (SWE-Bench-CL's tasks are
SWE-bench Verified instances), then feed its report back as per-task pass/fail: an instance
passes when the harness lists it as resolved (its FAIL_TO_PASS tests now pass and its
PASS_TO_PASS tests still do).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.tasks.schema import Task

ORDERINGS = ("A", "B", "C", "D", "E")
"""Seed 004's split designs as session orders: A as stated, B reversed, C odd-numbered sessions
first then even ones, D and E random permutations (seeds 42 and 123)."""
_SHUFFLE_SEEDS = {"D": 42, "E": 123}

STREAM_KINDS = ("tags", "field", "explicit", "builtin")
FIELDS = ("order", "created_at")
BUILTINS = {
    "funcs-topics": ("funcs", ("strings", "lists", "dicts", "math", "recursion", "dates")),
    "bugs-categories": ("bugs", ("lists", "strings", "math", "sorting", "recursion", "graphs",
                                 "dp", "searching")),
}
"""Built-in stream name -> (suite, its groups in session order)."""

_TAG_OPTIONS = ("max_difficulty", "max_per_session", "min_per_session")
_KEYS = {  # kind -> (required keys, optional keys), besides `by`
    "tags": (("suite", "groups"), ("name",) + _TAG_OPTIONS),
    "field": (("suite", "field", "per_session"), ("name",)),
    "explicit": (("suite", "sessions"), ("name",)),
    "builtin": (("name",), ("groups",) + _TAG_OPTIONS),
}


@dataclass(frozen=True)
class Session:
    name: str
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Stream:
    name: str
    suite: str
    """The suite as `load_suite` takes it (a file path is already resolved against base_dir)."""
    sessions: tuple[Session, ...]
    ordering: str = "A"
    """The split design (ORDERINGS) that put the sessions in this order."""

    def task_ids(self) -> tuple[str, ...]:
        """Every task's id, session by session."""
        return tuple(t.id for s in self.sessions for t in s.tasks)

    def session_of(self, task_id: str) -> int:
        """The 0-based index of the session holding `task_id` (KeyError for a task not here)."""
        for i, session in enumerate(self.sessions):
            if any(t.id == task_id for t in session.tasks):
                return i
        raise KeyError(f"task {task_id} is in no session of stream {self.name}")


def seen_task_ids(stream: Stream, upto_session: int) -> frozenset[str]:
    """The ids of the tasks of sessions 0 .. upto_session-1 (0-based): what an agent has seen
    before it starts session `upto_session`. 0 gives the empty set; len(sessions) every task."""
    if not 0 <= upto_session <= len(stream.sessions):
        raise ValueError(f"upto_session must be within 0..{len(stream.sessions)}, not "
                         f"{upto_session}")
    return frozenset(t.id for s in stream.sessions[:upto_session] for t in s.tasks)


def reorder(stream: Stream, design: str) -> Stream:
    """The stream with its sessions in seed 004's split design `design` (ORDERINGS):
    A the stated order, B reversed, C the 1st, 3rd, 5th... sessions then the 2nd, 4th...,
    D and E `random.Random(seed).shuffle` of the sessions with seed 42 and 123 (deterministic).
    The designs are defined on the stated order, so `stream` must be in it (ordering A)."""
    if design not in ORDERINGS:
        raise TracetuneError(f"unknown ordering {design!r} (seed 004's split designs: "
                             f"{', '.join(ORDERINGS)})")
    if stream.ordering != "A":
        raise ValueError(f"reorder takes a stream in its stated order (A), not {stream.ordering}")
    sessions = list(stream.sessions)
    if design == "B":
        sessions.reverse()
    elif design == "C":
        sessions = sessions[0::2] + sessions[1::2]
    elif design in _SHUFFLE_SEEDS:
        random.Random(_SHUFFLE_SEEDS[design]).shuffle(sessions)
    return replace(stream, sessions=tuple(sessions), ordering=design)


def stream_from_table(table: dict, *, base_dir: Path | None = None) -> Stream:
    """A stream from an experiment file's [stream] table (the kinds are in the module
    docstring). Every problem is one TracetuneError: the table is checked whole before the
    suite is loaded, and the sessions before the stream is returned."""
    if not isinstance(table, dict):
        raise TracetuneError("[stream] must be a table")
    kind = table.get("by")
    if kind not in STREAM_KINDS:
        raise TracetuneError(f"by must be one of {', '.join(STREAM_KINDS)}, not {kind!r}")
    required, optional = _KEYS[kind]
    accepted = ("by",) + required + optional
    unknown = sorted(set(table) - set(accepted))
    if unknown:
        raise TracetuneError(f"unknown key(s) {', '.join(unknown)} for by = {kind!r} "
                             f"(accepted: {', '.join(accepted)})")
    missing = [k for k in required if k not in table]
    if missing:
        raise TracetuneError(f"by = {kind!r} needs {', '.join(missing)} (accepted: "
                             f"{', '.join(accepted)})")
    name = table.get("name")
    if name is not None and not (isinstance(name, str) and name):
        raise TracetuneError(f"name must be a non-empty string, not {name!r}")

    if kind == "explicit":
        sessions = _explicit_sessions(table["sessions"])
        suite, ref = _load(table["suite"], base_dir)
        by_id = {t.id: t for t in suite.tasks}
        unknown_ids = [i for _, ids in sessions for i in ids if i not in by_id]
        if unknown_ids:
            raise TracetuneError(f"unknown task id(s) in suite {suite.name}: "
                                 f"{', '.join(unknown_ids)}")
        return Stream(name or f"{suite.name}-explicit", ref,
                      tuple(Session(s, tuple(by_id[i] for i in ids)) for s, ids in sessions))

    if kind == "field":
        field = table["field"]
        if field not in FIELDS:
            raise TracetuneError(f"field must be one of {', '.join(FIELDS)}, not {field!r}")
        per_session = _count(table, "per_session")
        suite, ref = _load(table["suite"], base_dir)
        return Stream(name or f"{suite.name}-by-{field}", ref,
                      _field_sessions(suite.tasks, field, per_session))

    if kind == "builtin":
        if name not in BUILTINS:
            raise TracetuneError(f"unknown built-in stream {name!r} (built-in: "
                                 f"{', '.join(BUILTINS)})")
        suite_ref, preset = BUILTINS[name]
        groups = _groups(table["groups"]) if "groups" in table else tuple((g,) for g in preset)
        base_dir = None  # a built-in suite is found by name
    else:
        suite_ref, groups = table["suite"], _groups(table["groups"])
    max_difficulty, max_per_session = (_count(table, k) for k in _TAG_OPTIONS[:2])
    min_per_session = _count(table, "min_per_session") or 1
    suite, ref = _load(suite_ref, base_dir)
    sessions = _tag_sessions(suite.tasks, groups, max_difficulty, max_per_session,
                             min_per_session)
    return Stream(name or f"{suite.name}-tags", ref, sessions)


def _count(table: dict, key: str) -> int | None:
    """An optional integer setting of at least 1 (None when absent)."""
    value = table.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
        raise TracetuneError(f"{key} must be an integer of at least 1, not {value!r}")
    return value


def _too_few(n: int) -> None:
    if n < 2:
        raise TracetuneError(f"a stream needs at least 2 sessions, this one has {n}")


def _load(suite_ref, base_dir: Path | None):
    """(the suite, the reference that loads it from anywhere): a relative suite file path is
    resolved against base_dir. An unknown suite is load_suite's TracetuneError."""
    from tracetune.tasks import load_suite, split_suffix

    if not (isinstance(suite_ref, str) and suite_ref):
        raise TracetuneError(f"suite must be a suite name or file path, not {suite_ref!r}")
    base, split = split_suffix(suite_ref)
    path = Path(base)
    if base_dir is not None and path.suffix in (".toml", ".json") and not path.is_absolute():
        base = str(Path(base_dir) / path)
    ref = base if split is None else f"{base}:{split}"
    return load_suite(ref), ref


def _groups(value) -> tuple[tuple[str, ...], ...]:
    """`groups` as tuples of tags; a tag in two groups is refused (the first would take every
    task the second was meant to get through it)."""
    shape = ('groups must be a list of tags or lists of tags, e.g. '
             '["strings", ["lists", "dicts"]]')
    if not isinstance(value, list):
        raise TracetuneError(f"{shape}, not {value!r}")
    groups = []
    for g in value:
        tags = (g,) if isinstance(g, str) else tuple(g) if isinstance(g, list) else ()
        if not tags or not all(isinstance(t, str) and t for t in tags):
            raise TracetuneError(f"{shape}; {g!r} is not")
        groups.append(tags)
    _too_few(len(groups))
    first: dict[str, tuple[str, ...]] = {}
    for tags in groups:
        for tag in tags:
            if tag in first:
                raise TracetuneError(f"tag {tag!r} is in two groups ({'+'.join(first[tag])} "
                                     f"and {'+'.join(tags)})")
            first[tag] = tags
    return tuple(groups)


def _tag_sessions(tasks, groups, max_difficulty, max_per_session,
                  min_per_session) -> tuple[Session, ...]:
    eligible = [t for t in tasks if max_difficulty is None or t.difficulty <= max_difficulty]
    buckets: list[list[Task]] = [[] for _ in groups]
    for task in eligible:
        for bucket, tags in zip(buckets, groups):
            if set(tags) & set(task.tags):  # the first group with one of its tags takes it
                bucket.append(task)
                break
    sessions = []
    for bucket, tags in zip(buckets, groups):
        name = "+".join(tags)
        chosen = sorted(bucket, key=lambda t: t.id)[:max_per_session]
        if not chosen:
            tagged = sum(1 for t in eligible if set(tags) & set(t.tags))
            where = f" of difficulty <= {max_difficulty}" if max_difficulty is not None else ""
            why = (f"the {tagged} task(s){where} tagged {' or '.join(tags)} all carry a tag "
                   "of an earlier group, which takes them" if tagged else
                   f"no task{where} is tagged {' or '.join(tags)}")
            raise TracetuneError(f"session {name!r} is empty: {why}")
        if len(chosen) < min_per_session:
            raise TracetuneError(f"session {name!r} has {len(chosen)} task(s), fewer than "
                                 f"min_per_session = {min_per_session}")
        sessions.append(Session(name, tuple(chosen)))
    return tuple(sessions)


def _field_sessions(tasks, field: str, per_session: int) -> tuple[Session, ...]:
    unset = next((t for t in tasks if getattr(t, field) in (None, "")), None)
    if unset is not None:
        raise TracetuneError(f"task {unset.id} has no {field} (by = \"field\" sorts every task "
                             f"of the suite by it)")
    ordered = sorted(tasks, key=lambda t: (getattr(t, field), t.id))
    chunks = [ordered[i:i + per_session] for i in range(0, len(ordered), per_session)]
    _too_few(len(chunks))
    return tuple(Session(f"{field}-{k + 1}", tuple(c)) for k, c in enumerate(chunks))


def _explicit_sessions(value) -> list[tuple[str, list[str]]]:
    """[(session name, task ids)], checked: names unique, no session empty, no task twice."""
    shape = 'sessions must be a list of {name = "...", tasks = ["id", ...]} tables'
    if not isinstance(value, list):
        raise TracetuneError(f"{shape}, not {value!r}")
    out: list[tuple[str, list[str]]] = []
    home: dict[str, str] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"name", "tasks"}:
            raise TracetuneError(f"{shape}; session #{i + 1} is {entry!r}")
        name, ids = entry["name"], entry["tasks"]
        if not (isinstance(name, str) and name):
            raise TracetuneError(f"session #{i + 1}: name must be a non-empty string")
        if any(name == n for n, _ in out):
            raise TracetuneError(f"two sessions are named {name!r}")
        if not (isinstance(ids, list) and all(isinstance(t, str) for t in ids)):
            raise TracetuneError(f"session {name!r}: tasks must be a list of task ids")
        if not ids:
            raise TracetuneError(f"session {name!r} is empty")
        for task_id in ids:
            if task_id in home:
                where = (f"twice in session {name!r}" if home[task_id] == name else
                         f"in two sessions: {home[task_id]!r} and {name!r}")
                raise TracetuneError(f"task {task_id} is {where}")
            home[task_id] = name
        out.append((name, ids))
    _too_few(len(out))
    return out


# ---- SWE-Bench-CL ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClTask:
    """One SWE-Bench-CL task: a SWE-bench Verified instance at its place in a sequence."""
    instance_id: str
    repo: str
    created_at: str
    """ISO 8601 text, as the dataset writes it."""
    sequence_position: int
    """1-based place in the sequence (the dataset orders by difficulty, then date)."""
    problem_statement: str
    fail_to_pass: tuple[str, ...]
    """Tests a correct patch makes pass."""
    pass_to_pass: tuple[str, ...]
    """Tests that must keep passing."""
    difficulty: str = ""
    """The SWE-bench Verified label, e.g. "<15 min fix", "15 min - 1 hour"."""
    difficulty_score: int = 0
    """The label as 1 (<15 min) .. 4 (>4 hours); 0 when the file has none."""
    modified_files: tuple[str, ...] = ()
    """Files the reference patch touches."""
    dependencies: tuple[str, ...] = ()
    """Earlier instances of the sequence that modified one of the same files."""
    base_commit: str = ""
    hints: str = ""
    patch: str = ""
    """The reference (gold) patch."""
    test_patch: str = ""


@dataclass(frozen=True)
class ClSequence:
    id: str
    repo: str
    tasks: tuple[ClTask, ...]
    """In sequence_position order (ties by created_at, then instance_id)."""


_CL_REQUIRED = (("metadata", "instance_id"), ("metadata", "repo"), ("metadata", "created_at"),
                ("task", "problem_statement"), ("evaluation", "FAIL_TO_PASS"),
                ("evaluation", "PASS_TO_PASS"), ("continual_learning", "sequence_position"))


def read_swe_bench_cl(path: Path | str) -> list[ClSequence]:
    """The sequences of a SWE-Bench-CL dataset file: {"sequences": [{id, repo, tasks: [{metadata,
    task, evaluation, continual_learning}, ...]}, ...]} (other top-level and sequence keys,
    such as metadata and statistics, are ignored). A missing key is one TracetuneError naming
    it and the task's index."""
    path = Path(path)
    from tracetune.tasks import read_json

    data = read_json(path, "SWE-Bench-CL file")
    raw_sequences = data.get("sequences") if isinstance(data, dict) else None
    if not isinstance(raw_sequences, list) or not raw_sequences:
        raise TracetuneError(f"{path}: no \"sequences\" list (not a SWE-Bench-CL file?)")
    sequences = []
    for i, raw in enumerate(raw_sequences):
        where = f"{path}: sequences[{i}]"
        if not isinstance(raw, dict):
            raise TracetuneError(f"{where} is not an object")
        missing = [k for k in ("id", "repo", "tasks") if k not in raw]
        if missing:
            raise TracetuneError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(raw["tasks"], list):
            raise TracetuneError(f"{where}: tasks must be a list")
        where = f"{path}: sequences[{i}] ({raw['id']})"
        tasks = [_cl_task(t, f"{where}.tasks[{j}]") for j, t in enumerate(raw["tasks"])]
        ids = [t.instance_id for t in tasks]
        twice = sorted({x for x in ids if ids.count(x) > 1})
        if twice:
            raise TracetuneError(f"{where}: instance(s) listed twice: {', '.join(twice)}")
        tasks.sort(key=lambda t: (t.sequence_position, t.created_at, t.instance_id))
        sequences.append(ClSequence(str(raw["id"]), str(raw["repo"]), tuple(tasks)))
    return sequences


def sequence_sessions(seq: ClSequence, per_session: int) -> list[list[ClTask]]:
    """The sequence's tasks, in order, cut into sessions of `per_session` (the last may be
    shorter)."""
    if isinstance(per_session, bool) or not isinstance(per_session, int) or per_session < 1:
        raise TracetuneError(f"per_session must be an integer of at least 1, not "
                             f"{per_session!r}")
    return [list(seq.tasks[i:i + per_session]) for i in range(0, len(seq.tasks), per_session)]


def _cl_task(raw, where: str) -> ClTask:
    if not isinstance(raw, dict):
        raise TracetuneError(f"{where} is not an object")
    for section, key in _CL_REQUIRED:
        if not isinstance(raw.get(section), dict) or key not in raw[section]:
            raise TracetuneError(f"{where}: missing {section}.{key}")
    meta, task, ev, cl = (raw[s] for s in ("metadata", "task", "evaluation",
                                           "continual_learning"))
    position = cl["sequence_position"]
    if isinstance(position, bool) or not isinstance(position, int):
        raise TracetuneError(f"{where}: continual_learning.sequence_position must be an "
                             f"integer, not {position!r}")
    score = cl.get("difficulty_score") or 0
    if isinstance(score, bool) or not isinstance(score, int):
        raise TracetuneError(f"{where}: continual_learning.difficulty_score must be an "
                             f"integer, not {score!r}")
    return ClTask(
        instance_id=_text(meta, "instance_id", where, "metadata"),
        repo=_text(meta, "repo", where, "metadata"),
        created_at=_text(meta, "created_at", where, "metadata"),
        sequence_position=position,
        problem_statement=_text(task, "problem_statement", where, "task"),
        fail_to_pass=_names(ev, "FAIL_TO_PASS", where, "evaluation"),
        pass_to_pass=_names(ev, "PASS_TO_PASS", where, "evaluation"),
        difficulty=_text(meta, "difficulty", where, "metadata"),
        difficulty_score=score,
        modified_files=_names(cl, "modified_files", where, "continual_learning"),
        dependencies=_names(cl, "dependencies", where, "continual_learning"),
        base_commit=_text(meta, "base_commit", where, "metadata"),
        hints=_text(task, "hints_text", where, "task"),
        patch=_text(ev, "patch", where, "evaluation"),
        test_patch=_text(ev, "test_patch", where, "evaluation"))


def _text(section: dict, key: str, where: str, name: str) -> str:
    """A string field; absent or null (the dataset writes null for no hints) is ""."""
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TracetuneError(f"{where}: {name}.{key} must be a string, not {value!r}")
    return value


def _names(section: dict, key: str, where: str, name: str) -> tuple[str, ...]:
    """A list of strings; SWE-bench itself stores test lists as JSON text, so that is read too."""
    value = section.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise TracetuneError(f"{where}: {name}.{key} must be a list of strings")
    return tuple(value)
