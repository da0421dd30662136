"""Agent roles of interactions: stated, by rules, or by a model.

Order of evidence for one interaction:
    1. the role it already carries (the proxy's X-Agent-Role header, an importer's field);
    2. the agent's name (`agent`, e.g. "test_writer" -> tester), matched against RULES' name
       keywords;
    3. the tools offered or called (`params.tools`, `tool_calls`): e.g. run_tests -> tester,
       web_search -> researcher, assign_task -> coordinator;
    4. the system prompt's keywords, then the last user message's;
    5. otherwise `other` (or, with `classify(..., model=SPEC)`, the model's one-word answer,
       accepted only when it is one of ROLES).
Within one level the role with the most keyword hits wins; ties go to the earlier role in
ROLES. Each decision records its evidence ("stated", "agent name", "tools", "system prompt",
"prompt", "model", "default") so a suite can say how its roles were assigned.

Seed 003 classified its 302 interactions by keyword matching of the task text; the rules here
add the stronger evidence agent systems carry (names, tools) before falling back to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracetune.logs.record import ROLES, Interaction

RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "coder": {
        "names": ("coder", "developer", "engineer", "implement", "programmer", "builder"),
        "tools": ("write_file", "edit_file", "apply_patch", "str_replace", "create_file",
                  "patch"),
        "words": ("implement", "write a function", "write a python function", "refactor",
                  "fix the bug", "code", "function", "class ", "def ", "return "),
    },
    "tester": {
        "names": ("tester", "test", "qa", "verif"),
        "tools": ("run_tests", "pytest", "run_test", "coverage"),
        "words": ("unit test", "pytest", "test case", "write tests", "edge case", "assert",
                  "coverage", "test suite"),
    },
    "researcher": {
        "names": ("research", "analyst", "search", "investigat"),
        "tools": ("web_search", "search", "browse", "fetch_url", "retrieve", "lookup"),
        "words": ("research", "compare", "explain", "what is", "why does", "summarize",
                  "summarise", "find out", "sources", "trade-off", "tradeoff"),
    },
    "coordinator": {
        "names": ("coordinat", "orchestrat", "planner", "manager", "supervisor", "router"),
        "tools": ("assign_task", "delegate", "handoff", "create_plan", "dispatch"),
        "words": ("plan", "break down", "subtask", "assign", "delegate", "milestone",
                  "coordinate", "next step", "priorit"),
    },
    "reviewer": {
        "names": ("review", "critic", "judge", "audit"),
        "tools": ("approve", "request_changes", "comment", "review"),
        "words": ("review", "code review", "feedback on", "approve", "critique",
                  "what is wrong with", "smell", "solid principles"),
    },
}
"""role -> keywords for agent names, tool names and prompt text (lower-case substrings)."""


@dataclass(frozen=True)
class RoleDecision:
    role: str
    evidence: str


def _best(text: str, kind: str) -> str | None:
    text = text.lower()
    scores = {role: sum(text.count(k) for k in rule[kind]) for role, rule in RULES.items()}
    top = max(scores.values())
    return None if top == 0 else next(r for r in ROLES if scores.get(r) == top)


def _tool_names(rec: Interaction) -> str:
    names = [t.get("function", {}).get("name", "") if isinstance(t, dict) else ""
             for t in rec.params.get("tools") or ()]
    names += [c.get("function", {}).get("name", "") for c in rec.tool_calls
              if isinstance(c, dict)]
    return " ".join(n for n in names if n)


def classify_one(rec: Interaction) -> RoleDecision:
    """The role of one interaction by the rules above (no model)."""
    if rec.role in ROLES:
        return RoleDecision(rec.role, "stated")
    for evidence, text, kind in (("agent name", rec.agent or "", "names"),
                                 ("tools", _tool_names(rec), "tools"),
                                 ("system prompt", rec.system, "words"),
                                 ("prompt", rec.prompt, "words")):
        role = _best(re.sub(r"[_\-]", " ", text) if kind == "names" else text, kind) \
            if text else None
        if role:
            return RoleDecision(role, evidence)
    return RoleDecision("other", "default")


JUDGE_PROMPT = ("Classify the job of the agent that sent this request to a language model. "
                "Answer with exactly one word: coder, tester, researcher, coordinator, "
                "reviewer or other.\n\nSystem prompt:\n{system}\n\nRequest:\n{prompt}")


def classify(records: list[Interaction], *, model: str | None = None) -> dict[str, RoleDecision]:
    """id -> RoleDecision for each record. With `model` (a model spec), records the rules leave
    at `other` by default are asked of that model (greedy, one word); an answer that is not a
    role keeps `other`. Raises ModelSpecError/ModelError when the model cannot be loaded."""
    decisions = {r.id: classify_one(r) for r in records}
    undecided = [r for r in records if decisions[r.id].evidence == "default"]
    if model and undecided:
        from tracetune.models import load_model
        from tracetune.types import GenerationRequest, SamplingParams, chat

        m = load_model(model)
        try:
            requests = [GenerationRequest(chat(JUDGE_PROMPT.format(
                system=r.system[:1500], prompt=r.prompt[:1500])),
                SamplingParams(temperature=0.0, max_tokens=4)) for r in undecided]
            for rec, c in zip(undecided, m.generate_many(requests)):
                word = re.sub(r"[^a-z]", "", c.text.strip().split()[0].lower()) \
                    if c.text.strip() else ""
                if word in ROLES:
                    decisions[rec.id] = RoleDecision(word, "model")
        finally:
            m.close()
    return decisions
