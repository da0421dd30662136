"""Pre-registration: an experiment's hypotheses and decision criteria are frozen into the run
directory, with their SHA-256, before the first stage produces any result. Every later loop and
every report checks that the experiment still states exactly what was frozen, and that the frozen
file itself was not edited; otherwise it refuses, naming what changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.spec import (Experiment, Hypothesis, as_json, experiment_hash,
                                      field_defaults, same_settings)

PREREG = "preregistration.json"
"""The frozen record's file name in the run directory. Named here, beside its only writer;
RunLayout.prereg (every other reader's path) uses it. This module builds its own path from it
rather than asking RunLayout, because layout imports this name: either way round is fine, both
would be an import cycle."""


def freeze(exp: Experiment, out: Path) -> dict:
    """Write RUN/preregistration.json (once). Returns the frozen record."""
    path = Path(out) / PREREG
    content = exp.preregistered()
    record = {"experiment": exp.info.name, "frozen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
              "sha256": experiment_hash(content), "content": content}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(path)
    return record


def load(out: Path) -> dict | None:
    path = Path(out) / PREREG
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        content, digest = record["content"], record["sha256"]
    except (ValueError, KeyError, TypeError):
        raise TracetuneError(f"{path} is damaged; the pre-registration cannot be checked") \
            from None
    if experiment_hash(content) != digest:
        raise TracetuneError(f"{path} was edited after it was frozen (its content no longer "
                             f"matches its hash {digest[:12]}); refusing to report against it")
    return record


def verify(exp: Experiment, out: Path) -> dict:
    """The frozen record, after checking `exp` states the same hypotheses and criteria."""
    record = load(out)
    if record is None:
        raise TracetuneError(f"{out} has no {PREREG}: results without a pre-registration "
                             "cannot be reported")
    now = exp.preregistered()
    if not same_settings(record["content"], as_json(now),
                         {"hypotheses": field_defaults(Hypothesis)}):
        raise TracetuneError(
            f"the hypotheses or decision criteria in {exp.path} differ from those pre-registered "
            f"in {out} at {record['frozen_at']} (hash {record['sha256'][:12]}, now "
            f"{experiment_hash(now)[:12]}): " + "; ".join(_changes(record["content"], now))
            + ". Results were judged against the frozen ones; start a new run directory to "
            "test new hypotheses")
    return record


def _changes(old: dict, new: dict) -> list[str]:
    out = []
    old_h = {h["id"]: h for h in old["hypotheses"]}
    new_h = {h["id"]: h for h in new["hypotheses"]}
    for hid in old_h.keys() - new_h.keys():
        out.append(f"{hid} removed")
    for hid in new_h.keys() - old_h.keys():
        out.append(f"{hid} added")
    for hid in old_h.keys() & new_h.keys():
        for key in sorted(set(old_h[hid]) | set(new_h[hid])):
            if old_h[hid].get(key) != new_h[hid].get(key):
                out.append(f"{hid}.{key} {old_h[hid].get(key)!r} -> {new_h[hid].get(key)!r}")
    for key in ("go", "abort"):
        if old["decision"][key] != new["decision"][key]:
            out.append(f"decision.{key} {old['decision'][key]} -> {new['decision'][key]}")
    return out or ["order changed"]
