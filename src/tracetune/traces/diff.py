"""Where two runs of the same experiment part ways: the first model call whose output differs.

Two runs with the same settings and seeds give every (task, trial, step, attempt) the same
sampling seed, so on one machine they are identical to the byte; across machines (another CPU, a
llama.cpp built with other instructions, another library version) the floating-point path of
generation can differ in its last bits, and at temperature > 0 one differing token changes the
rest of an answer. `diff_runs` finds, for each (task, trial) both runs finished, the first
attempt whose prompt, output or verdict differs, and names the first character where the
outputs part; `diff_datasets` lists the mined rows (by content id) only one data set holds;
`diff_loops` does both for a loop's stages (baseline, data, adapted) and compares the adapters'
weights, so the first stage that differs is the place to look.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.traces.store import DB_NAME, Store


@dataclass(frozen=True)
class AttemptDiff:
    """The first differing model call of one (task, trial)."""

    task: str
    trial: int
    step: str
    attempt: int
    what: str
    """prompt (the model saw different messages), output, verdict (same output, other check
    result) or attempts (one run has more attempts)."""
    at_char: int | None = None
    """For output: the first character (0-based) where the two outputs differ."""
    a: str = ""
    """A short excerpt of run A's side around the difference (or its verdict)."""
    b: str = ""


@dataclass
class RunDiff:
    """Comparison of two runs' finished episodes."""

    same: int = 0
    """(task, trial) pairs whose every attempt is identical (prompt, output, verdict)."""
    differs: list[AttemptDiff] = field(default_factory=list)
    only_a: list[tuple[str, int]] = field(default_factory=list)
    only_b: list[tuple[str, int]] = field(default_factory=list)
    success_flips: int = 0
    """(task, trial) pairs that succeeded in one run and failed in the other."""


def _excerpt(text: str, at: int, width: int = 40) -> str:
    return json.dumps(text[max(0, at - 10):at + width])


def _first_char(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def diff_runs(run_a: Path, run_b: Path) -> RunDiff:
    """Compare the finished episodes of two run directories (or stores), attempt by attempt,
    in recording order. Raises TracetuneError when either holds no readable store."""
    stores = [Store(run_a), Store(run_b)]
    try:
        eps = [{(e["task_id"], e["trial"]): e for e in s.episodes()} for s in stores]
        out = RunDiff(only_a=sorted(eps[0].keys() - eps[1].keys()),
                      only_b=sorted(eps[1].keys() - eps[0].keys()))
        for key in sorted(eps[0].keys() & eps[1].keys()):
            ea, eb = eps[0][key], eps[1][key]
            out.success_flips += bool(ea["success"]) != bool(eb["success"])
            first = _first_difference(key, stores[0].attempts(ea["id"]),
                                      stores[1].attempts(eb["id"]))
            if first is None:
                out.same += 1
            else:
                out.differs.append(first)
        return out
    finally:
        for s in stores:
            s.close()


def _first_difference(key, attempts_a, attempts_b) -> AttemptDiff | None:
    task, trial = key
    for x, y in zip(attempts_a, attempts_b):
        where = dict(task=task, trial=trial, step=x.step, attempt=x.attempt)
        if x.messages != y.messages:
            return AttemptDiff(**where, what="prompt")
        if x.raw_output != y.raw_output:
            at = _first_char(x.raw_output, y.raw_output)
            return AttemptDiff(**where, what="output", at_char=at,
                               a=_excerpt(x.raw_output, at), b=_excerpt(y.raw_output, at))
        if (x.passed, _verdicts(x.guards)) != (y.passed, _verdicts(y.guards)):
            return AttemptDiff(**where, what="verdict", a="pass" if x.passed else "fail",
                               b="pass" if y.passed else "fail")
    if len(attempts_a) != len(attempts_b):
        longer = attempts_a if len(attempts_a) > len(attempts_b) else attempts_b
        extra = longer[min(len(attempts_a), len(attempts_b))]
        return AttemptDiff(task=task, trial=trial, step=extra.step, attempt=extra.attempt,
                           what="attempts", a=str(len(attempts_a)), b=str(len(attempts_b)))
    return None


def _verdicts(guards: list[dict]) -> list:
    """Guard results without what differs in every run: a check's duration, and the feedback
    text, whose pytest summary carries timings ("1 error in 0.05s")."""
    return [{"guard": g.get("guard"), "passed": g.get("passed"),
             "details": {k: v for k, v in (g.get("details") or {}).items()
                         if k != "duration_s"}} for g in guards]


def diff_datasets(data_a: Path, data_b: Path) -> dict[str, dict[str, list[str]]]:
    """{kind: {"only_a": [row ids], "only_b": [row ids]}} of two mined data sets (rows are
    compared by their content id, `datasets.rows.row_id`). Raises TracetuneError when either
    is not a data set."""
    from tracetune.datasets.build import load_manifest, read_rows, rows_path

    out = {}
    manifests = [load_manifest(data_a), load_manifest(data_b)]
    kinds = set(manifests[0]["counts"]) | set(manifests[1]["counts"])
    for kind in sorted(kinds):
        ids = []
        for data in (data_a, data_b):
            path = rows_path(data, kind)
            ids.append({r["id"]: r for r in read_rows(path)} if path.is_file() else {})
        out[kind] = {"only_a": [f"{i} ({ids[0][i]['task']})" for i in sorted(ids[0].keys()
                                                                              - ids[1].keys())],
                     "only_b": [f"{i} ({ids[1][i]['task']})" for i in sorted(ids[1].keys()
                                                                              - ids[0].keys())]}
    return out


def weights_digest(adapter: Path) -> str | None:
    """sha256 of an adapter's weights file (None when there is none)."""
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_run(path: Path) -> bool:
    return (Path(path) / DB_NAME).is_file()


def require_comparable(a: Path, b: Path) -> str:
    """"runs", "datasets" or "loops": what the two paths are. Raises TracetuneError when they are
    not both runs, both data sets or both loop run directories."""
    from tracetune.datasets.build import MANIFEST
    from tracetune.experiment.layout import RunLayout

    kinds = []
    for p in (a, b):
        if is_run(p):
            kinds.append("runs")
        elif (Path(p) / MANIFEST).is_file():
            kinds.append("datasets")
        elif RunLayout(Path(p)).results.is_file() or (Path(p) / "stages").is_dir():
            kinds.append("loops")
        else:
            raise TracetuneError(f"{p} is neither a run (trajectories.sqlite), a data set "
                                 "(manifest.json) nor a loop's run directory")
    if kinds[0] != kinds[1]:
        raise TracetuneError(f"cannot compare a {kinds[0][:-1]} with a {kinds[1][:-1]}")
    return kinds[0]
