"""tracetune trajectories as ATIF (Agent Trajectory Interchange Format) and back.

ATIF is Harbor's RFC 0001 ("Agent Trajectory Interchange Format (ATIF) Specification"): a
trajectory {schema_version, session_id, agent{name, version, model_name, extra}, steps[...],
final_metrics{...}, extra}, each step {step_id (1, 2, ...), timestamp (ISO 8601), source
(system | user | agent), message, model_name, reasoning_content, tool_calls[{tool_call_id,
function_name, arguments}], observation{results[{source_call_id, content}]}, metrics{prompt_tokens,
completion_tokens, ...}, extra}. tracetune writes "ATIF-v1.4" and reads any "ATIF-v1.x".

The file (`tracetune export RUN --atif`): JSON Lines, one whole trajectory per line, one per
finished episode in task/trial order. Each line is a complete ATIF document on its own, so a
consumer can validate or stream them one at a time (the RFC defines one trajectory, not a
container of several). `tracetune import --format atif` also reads a JSON file holding one
trajectory or an array of them.

One episode, one trajectory:
    session_id      "{run_id}:{task_id}:{trial}"
    agent           {"name": "tracetune", "version": tracetune's version, "model_name": the run's
                    model spec}
    steps           for each attempt, in recording order: the system and user messages of its
                    prompt that the trajectory does not hold yet (source system / user), then one
                    agent step: message = the raw output, timestamp = when it was recorded,
                    metrics {prompt_tokens, completion_tokens}. A repair-agent step also has
                    tool_calls (a tool call of its JSON protocol: tool_call_id "call_{step_id}",
                    function_name = the tool, arguments = its args) and an observation whose one
                    result is the driver's reply (source_call_id = that tool_call_id, none for a
                    final answer or a parse error).
    final_metrics   total_prompt_tokens, total_completion_tokens (the episode's), total_steps
    extra           {"tracetune": {"format": 1, "episode": every other episode column}}
An agent step's extra {"tracetune": {...}} holds the attempt's other fields (attempt_id, step,
attempt, seed, code, passed, guards, latency_s, check_s, facts, finish_reason, created_at, and
feedback where no observation carries it).

The prompt of an agent step is read as ATIF reads a trajectory: every earlier step in order (agent
steps as assistant messages, an observation as the user message that follows). Where tracetune's
prompt was something else (a guarded retry keeps only the latest failed answer; tdd's second step
starts a new conversation), the step's extra.tracetune.context lists the items it was made of,
[[step_id, "message" | "observation"], ...]; where it cannot be made of them (the repair agent's
elided history), extra.tracetune.messages holds it verbatim. So `atif_to_episodes` gives back
exactly what `tracetune.traces.export.iter_episodes` yields.

Validation: `validate` checks a trajectory against nvidia-nat-atif's pydantic models (`nat.atif`,
derived from Harbor's reference implementation; Harbor's own package needs Python 3.12), an
optional extra: `pip install 'tracetune[atif]'`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from tracetune.errors import TracetuneError
from tracetune.logs.record import content_text

SCHEMA_VERSION = "ATIF-v1.4"
AGENT_NAME = "tracetune"
EXTRA_FORMAT = 1
"""Version of the layout of tracetune's own fields under `extra.tracetune`."""

# episode columns carried elsewhere in the trajectory than extra.tracetune.episode
_ELSEWHERE = ("attempts", "model", "prompt_tokens", "completion_tokens")


# --- writing ---------------------------------------------------------------------------------------
def episode_to_atif(episode: dict) -> dict:
    """One episode (the dict `tracetune.traces.export.iter_episodes` yields) as an ATIF
    trajectory (a JSON-ready dict, layout in the module docstring)."""
    from tracetune import __version__

    steps: list[dict] = []
    items: list[tuple[tuple[int, str], dict]] = []  # the conversation's pieces, in order

    def add_step(step: dict) -> int:
        step["step_id"] = len(steps) + 1
        steps.append(step)
        return step["step_id"]

    for a in episode["attempts"]:
        prompt = [dict(m) for m in a["messages"]]
        tt: dict = {"attempt_id": a["id"], "step": a["step"], "attempt": a["attempt"],
                    "seed": a["seed"], "code": a["code"], "passed": a["passed"],
                    "guards": a["guards"], "latency_s": a["latency_s"], "check_s": a["check_s"],
                    "facts": a["facts"], "finish_reason": a["finish_reason"],
                    "created_at": a["created_at"]}
        refs = _refs(prompt, items)
        if refs is None:
            tt["messages"] = prompt
        else:
            for i, ref in enumerate(refs):
                if ref is None:  # a system or user message not in the trajectory yet
                    sid = add_step({"source": prompt[i]["role"], "message": prompt[i]["content"]})
                    refs[i] = (sid, "message")
                    items.append((refs[i], prompt[i]))
            if refs != [ref for ref, _ in items]:
                tt["context"] = [list(r) for r in refs]
        sid = len(steps) + 1
        step = {"source": "agent", "message": a["raw_output"],
                "timestamp": datetime.fromtimestamp(a["created_at"], timezone.utc).isoformat(),
                "metrics": {"prompt_tokens": a["prompt_tokens"],
                            "completion_tokens": a["completion_tokens"]}}
        items.append(((sid, "message"), {"role": "assistant", "content": a["raw_output"]}))
        if a["facts"] is None:  # a guarded attempt: its feedback is in the next prompt, if any
            tt["feedback"] = a["feedback"]
        else:  # an agent step: the driver's reply is what the environment answered
            call = _protocol_call(a["code"])
            result: dict = {"content": a["feedback"]}
            if call is not None:
                step["tool_calls"] = [{"tool_call_id": f"call_{sid}", "function_name": call[0],
                                       "arguments": call[1]}]
                result = {"source_call_id": f"call_{sid}", **result}
            step["observation"] = {"results": [result]}
            items.append(((sid, "observation"), {"role": "user", "content": a["feedback"]}))
        step["extra"] = {AGENT_NAME: tt}
        add_step(step)

    final = {k: v for k, v in (("total_prompt_tokens", episode.get("prompt_tokens")),
                               ("total_completion_tokens", episode.get("completion_tokens")))
             if v is not None}
    return {
        "schema_version": SCHEMA_VERSION,
        "session_id": f"{episode['run_id']}:{episode['task_id']}:{episode['trial']}",
        "agent": {"name": AGENT_NAME, "version": __version__, "model_name": episode["model"]},
        "steps": steps,
        "final_metrics": {**final, "total_steps": len(steps)},
        "extra": {AGENT_NAME: {"format": EXTRA_FORMAT,
                               "episode": {k: v for k, v in episode.items()
                                           if k not in _ELSEWHERE}}},
    }


def _refs(prompt: list[dict], items: list[tuple[tuple[int, str], dict]]
          ) -> list[tuple[int, str] | None] | None:
    """Where each prompt message already is in the trajectory, None for a new system/user
    message to add as a step. None overall when the prompt is not made of the trajectory's items
    plus new messages at its end (an elided tool result, an assistant message that is no output
    of the episode, a message with more than role and content): it is then kept verbatim."""
    refs: list[tuple[int, str] | None] = []
    at = -1  # the item matched last: the next message is looked for after it first
    for m in prompt:
        found = next((i for i in range(at + 1, len(items)) if items[i][1] == m), None)
        if found is None:
            found = next((i for i in reversed(range(len(items))) if items[i][1] == m), None)
        if found is not None:
            if refs and refs[-1] is None:  # a new message before an old one: not a growth
                return None
            refs.append(items[found][0])
            at = found
        elif m.get("role") in ("system", "user") and set(m) == {"role", "content"} \
                and isinstance(m["content"], str):
            refs.append(None)
        else:
            return None
    return refs


def _protocol_call(code: str) -> tuple[str, dict] | None:
    """The (tool, args) of a repair-agent message in canonical JSON (`agents.tools.Parsed`), None
    for a final answer or a parse error."""
    try:
        obj = json.loads(code) if code else None
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("type") == "tool_call" and isinstance(obj.get("args"), dict):
        return str(obj.get("name")), obj["args"]
    return None


def export_atif(run_dir: Path, out: Path | None = None, *, force: bool = False) -> int:
    """Write the run's finished episodes as ATIF trajectories, one JSON line each, to `out`
    (stdout when None); returns how many.

    Written beside `out` and renamed into place when complete. Raises TracetuneError when run_dir
    holds no readable store, when `out` is the store itself, a directory, or exists without
    `force` (checked before anything is opened for writing)."""
    from tracetune.traces.export import export_jsonl

    return export_jsonl(run_dir, out, force=force, line=episode_to_atif)


# --- reading ---------------------------------------------------------------------------------------
def problem(obj) -> str | None:
    """Why `obj` is not an ATIF trajectory this module reads (None when it is one): a JSON
    object with a steps array and an "ATIF-v1.x" schema_version."""
    if not isinstance(obj, dict) or not isinstance(obj.get("steps"), list):
        return "not an ATIF trajectory (no steps array)"
    if not str(obj.get("schema_version", "")).startswith("ATIF-v1"):
        return f"schema_version {obj.get('schema_version')!r} is not ATIF-v1.x"
    return None


def is_tracetune(trajectory: dict) -> bool:
    """Whether tracetune wrote the trajectory (its extra.tracetune layout)."""
    extra = (trajectory.get("extra") or {}).get(AGENT_NAME)
    return isinstance(extra, dict) and extra.get("format") == EXTRA_FORMAT


def prompts(trajectory: dict) -> Iterator[tuple[dict, list[dict]]]:
    """(agent step, the chat messages it answered) for each agent step, in order.

    The conversation so far, in OpenAI chat shape: a system/user step is a message of that role,
    an agent step an assistant message (with its tool_calls as OpenAI tool calls), and each
    observation result a "tool" message answering its source_call_id, or a user message when it
    has none. For tracetune's own trajectories the exact prompts (module docstring).

    Raises ValueError / KeyError / TypeError on a step that breaks the schema (no source, a
    context naming a missing item)."""
    mine = is_tracetune(trajectory)
    items: dict[tuple[int, str], dict] = {}
    order: list[tuple[int, str]] = []

    def add(ref: tuple[int, str], message: dict) -> None:
        items[ref] = message
        order.append(ref)

    for step in trajectory["steps"]:
        sid, source = step["step_id"], step["source"]
        text = _text(step.get("message"))
        if source in ("system", "user"):
            add((sid, "message"), {"role": source, "content": text})
            continue
        if source != "agent":
            raise ValueError(f"step {sid}: source {source!r} is not system, user or agent")
        tt = (step.get("extra") or {}).get(AGENT_NAME) if mine else None
        if tt and "messages" in tt:
            prompt = [dict(m) for m in tt["messages"]]
        elif tt and "context" in tt:
            prompt = [dict(items[(int(r[0]), str(r[1]))]) for r in tt["context"]]
        else:
            prompt = [dict(items[r]) for r in order]
        yield step, prompt
        calls = openai_tool_calls(step)
        if calls and not mine:
            add((sid, "message"), {"role": "assistant", "content": text, "tool_calls": calls})
        else:
            add((sid, "message"), {"role": "assistant", "content": text})
        results = (step.get("observation") or {}).get("results") or []
        for i, r in enumerate(results):
            content = _text(r.get("content"))
            ref = (sid, "observation") if i == 0 else (sid, f"observation {i + 1}")
            if r.get("source_call_id") is not None and not mine:
                add(ref, {"role": "tool", "tool_call_id": r["source_call_id"], "content": content})
            else:
                add(ref, {"role": "user", "content": content})


def openai_tool_calls(step: dict) -> list[dict]:
    """An ATIF step's tool_calls in OpenAI shape ({"id", "type": "function", "function": {"name",
    "arguments": JSON text}})."""
    return [{"id": c["tool_call_id"], "type": "function",
             "function": {"name": c["function_name"],
                          "arguments": json.dumps(c.get("arguments") or {}, ensure_ascii=False)}}
            for c in step.get("tool_calls") or []]


def _text(message) -> str:
    """A step message or result content as text: a string as is; ATIF v1.6 content parts
    ([{"type": "text", "text"}, {"type": "image", ...}]) joined, images dropped."""
    return content_text(message) if message is not None else ""


def atif_to_episode(trajectory: dict) -> dict:
    """The episode (as `iter_episodes` yields it) a tracetune-written trajectory holds.

    Raises TracetuneError when the trajectory was not written by tracetune (no extra.tracetune),
    and KeyError / TypeError / ValueError when its tracetune fields are broken."""
    if not is_tracetune(trajectory):
        raise TracetuneError(f"trajectory {trajectory.get('session_id')!r} was not written by "
                             f"tracetune (no extra.{AGENT_NAME} of format {EXTRA_FORMAT})")
    ep = trajectory["extra"][AGENT_NAME]["episode"]
    final = trajectory.get("final_metrics") or {}
    attempts = []
    for step, prompt in prompts(trajectory):
        tt = step["extra"][AGENT_NAME]
        results = (step.get("observation") or {}).get("results") or []
        metrics = step.get("metrics") or {}
        attempts.append({
            "id": tt["attempt_id"], "episode_id": ep["id"], "step": tt["step"],
            "attempt": tt["attempt"], "seed": tt["seed"], "messages": prompt,
            "raw_output": step["message"], "code": tt["code"], "passed": tt["passed"],
            "guards": tt["guards"],
            "feedback": tt["feedback"] if "feedback" in tt else results[0]["content"],
            "prompt_tokens": metrics["prompt_tokens"],
            "completion_tokens": metrics["completion_tokens"], "latency_s": tt["latency_s"],
            "check_s": tt["check_s"], "facts": tt["facts"], "finish_reason": tt["finish_reason"],
            "created_at": tt["created_at"]})
    return {**ep, "model": trajectory["agent"].get("model_name"),
            "prompt_tokens": final.get("total_prompt_tokens"),
            "completion_tokens": final.get("total_completion_tokens"), "attempts": attempts}


def atif_to_episodes(source: Path | Iterable[dict]) -> list[dict]:
    """The episodes of an ATIF file written by `export_atif` (JSON Lines), or of trajectories
    already read (`tracetune import --format atif` reads other layouts too).

    Raises TracetuneError when the file cannot be read, or naming the line of a record that is
    not JSON or not a tracetune trajectory."""
    if isinstance(source, (str, Path)):
        found = _json_lines(Path(source))
    else:
        found = [(f"record {i}", t) for i, t in enumerate(source, 1)]
    episodes = []
    for where, traj in found:
        if problem(traj):
            raise TracetuneError(f"{where}: {problem(traj)}")
        try:
            episodes.append(atif_to_episode(traj))
        except TracetuneError as exc:
            raise TracetuneError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TracetuneError(f"{where}: broken tracetune trajectory ({type(exc).__name__}: "
                                 f"{exc})") from None
    return episodes


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TracetuneError(f"cannot read {path}: {exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except ValueError as exc:
                raise TracetuneError(f"{path} line {n}: not JSON ({exc})") from None


# --- validation ------------------------------------------------------------------------------------
def validate(trajectory: dict) -> None:
    """Check one trajectory against the published ATIF models: nvidia-nat-atif's pydantic models
    (`nat.atif.Trajectory`), plus the two rules of Harbor's reference models that NAT relaxes
    (at least one step; every step has a message).

    Raises TracetuneError when nvidia-nat-atif is not installed (saying how to install it) or
    naming the first fields that do not conform."""
    try:
        from nat.atif import Trajectory
    except ImportError:
        raise TracetuneError("validating ATIF needs nvidia-nat-atif: pip install "
                             "'tracetune[atif]'") from None
    from pydantic import ValidationError

    try:
        Trajectory.model_validate(trajectory)
    except ValidationError as exc:
        first = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise TracetuneError(f"not a valid ATIF trajectory: {first}") from None
    if not trajectory["steps"]:
        raise TracetuneError("not a valid ATIF trajectory: steps is empty")
    missing = [s.get("step_id") for s in trajectory["steps"] if "message" not in s]
    if missing:
        raise TracetuneError(f"not a valid ATIF trajectory: step(s) {missing} have no message")
