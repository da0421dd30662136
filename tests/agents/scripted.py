"""Scripted repair episodes for the agent tests: a replay model answers with the given messages,
on the tiny repair suite's `maximum` bug (fixtures `task` and `sandbox` in conftest.py)."""

import json
from pathlib import Path

from tracetune.agents.configs import RepairConfig
from tracetune.agents.repair import run_repair_episode
from tracetune.models import load_model
from tracetune.types import SamplingParams

TINY = Path(__file__).parents[1] / "data" / "repair_suite.toml"
FINAL = '{"type": "final", "message": "done"}'


def call(name, **args):
    return json.dumps({"type": "tool_call", "name": name, "args": args})


def episode(tmp_path, task, sandbox, texts, **wf):
    """One episode of the repair agent (options `wf`) whose model answers `texts` in turn."""
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return run_repair_episode(task, RepairConfig(**wf), load_model(f"replay:{script}"), sandbox,
                              params=SamplingParams(), seed=1)
