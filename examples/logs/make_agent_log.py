"""Write examples/logs/agents.jsonl: an example production log of a multi-agent coding system.

The log is made for tracetune's documentation and tests, in the shape seed 003 describes (about
300 calls of five agents to two large-model providers): coder, tester, researcher, coordinator
and reviewer agents; 98-99% of calls succeed; latencies drawn from a log-normal around seed
003's median of 10.9 s (mean about 20 s); 71% of calls to one provider, 28% to another. The
coder's requests are the `funcs` suite's specifications with their tests; its logged answers are
the reference solutions (as a strong model would give them). The other agents' requests and
answers are written from templates below. A few coder requests are asked again in other words
(near-duplicates). Every value comes from `random.Random(SEED)`: running this script again
writes the same file byte for byte.

    python examples/logs/make_agent_log.py [--out examples/logs/agents.jsonl]

The format is tracetune's `openai-jsonl` import envelope (see `tracetune.logs.importers`): one
{"id", "started_at", "latency_s", "agent", "session_id", "provider", "request", "response"}
object per line, request and response in OpenAI's chat-completions shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

SEED = 3
START = 1_759_276_800.0  # 2025-10-01 00:00 UTC
DAYS = 30

SYSTEMS = {
    "coder": "You are the coder agent of a software team. Implement exactly what is asked in "
             "clean, idiomatic Python. Reply with the code in one ```python block.",
    "tester": "You are the tester agent of a software team. Write pytest unit tests covering "
              "normal use and edge cases. Reply with the test code only.",
    "researcher": "You are the researcher agent of a software team. Explain and compare "
                  "options briefly and precisely, for engineers.",
    "coordinator": "You are the coordinator agent. Break the work into subtasks, assign each "
                   "to coder, tester, researcher or reviewer, and state the order.",
    "reviewer": "You are the reviewer agent. Review the code for bugs, naming and SOLID "
                "principles; give concise feedback and a verdict.",
}
AGENT_NAMES = {"coder": "coder-agent", "tester": "test-writer", "researcher": "research-agent",
               "coordinator": "coordinator", "reviewer": "code-reviewer"}
PROVIDERS = (("replicate", "meta/llama-3.1-70b-instruct", 0.715),
             ("tongyi", "alibaba/tongyi-deepresearch-30b", 0.285))

TOPICS = [
    ("list comprehensions versus map and filter", "List comprehensions are usually clearer "
     "and about as fast as map/filter; map with a named function can be slightly faster, "
     "and generator expressions avoid building the list when you only iterate once."),
    ("dataclasses versus namedtuples", "Dataclasses are mutable by default, support defaults, "
     "methods and type hints naturally; namedtuples are immutable tuples with named fields, "
     "lighter and hashable. Use frozen dataclasses when you want both."),
    ("threading versus multiprocessing in CPython", "Threads share memory but the GIL lets one "
     "thread run Python bytecode at a time, so they help with I/O-bound work; processes run "
     "in parallel on several cores and suit CPU-bound work, at the cost of pickling data."),
    ("SQLite write-ahead logging", "WAL mode writes changes to a separate log and lets readers "
     "continue while one writer appends; commits are cheaper and survive a process crash. "
     "Checkpoints move the log back into the database file."),
    ("Python's functools.lru_cache", "lru_cache memoizes a function by its arguments, which "
     "must be hashable; maxsize bounds the cache and evicts the least recently used entry. "
     "cache_info() reports hits and misses."),
    ("asyncio versus threads for network clients", "asyncio runs many connections on one "
     "thread with explicit await points and low overhead per connection; threads need no "
     "code changes but cost more memory and context switches."),
    ("type hints and mypy", "Type hints document intent and let mypy find mismatched calls "
     "before runtime; they have no effect at run time unless a library reads them."),
    ("pytest fixtures", "Fixtures provide setup and teardown as function arguments, with "
     "scopes (function, module, session) and yield for cleanup; parametrize multiplies tests "
     "over inputs."),
    ("semantic versioning", "MAJOR.MINOR.PATCH: breaking changes bump the major version, new "
     "compatible features the minor, fixes the patch. Pin exact versions for reproducible "
     "builds and ranges for libraries."),
    ("the repository pattern in clean architecture", "A repository hides storage behind an "
     "interface of domain operations, so use cases depend on the interface and tests can use "
     "an in-memory implementation."),
    ("Python generators", "A generator function yields values lazily and keeps its state "
     "between calls; it is memory-efficient for streams and can be chained into pipelines."),
    ("exceptions versus return codes", "Exceptions separate the error path from the normal "
     "path and cannot be silently ignored; return codes are explicit but easy to forget. In "
     "Python, raise specific exception types and catch them narrowly."),
]
QUESTION_FORMS = ["Explain {t}.", "Compare {t} for our team.", "What should we know about {t}?",
                  "Summarize {t} in a few sentences."]
FEATURES = ["user registration with email confirmation", "a CSV export of monthly invoices",
            "rate limiting for the public API", "a background job that cleans expired sessions",
            "password reset by email", "an audit log of admin actions",
            "pagination for the orders endpoint", "a health-check endpoint",
            "caching of product search results", "a retry policy for payment webhooks",
            "feature flags per customer", "a command that imports legacy users"]
REVIEW_NOTES = ["The function name says what it does and the loop is correct; consider an "
                "early return for the empty case. Verdict: approve.",
                "There is an off-by-one risk at the boundary and the variable names are terse; "
                "add a test for the edge case. Verdict: request changes.",
                "Clear single responsibility and no side effects. Verdict: approve."]


def _latency(rng: random.Random) -> float:
    # log-normal with median 10.9 s and mean about 20 s (seed 003's profile)
    return round(min(138.0, max(0.03, rng.lognormvariate(math.log(10.9), 1.1))), 3)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _coder_items(rng: random.Random) -> list[tuple[str, str, str]]:
    from tracetune.tasks import load_suite

    items = []
    for t in load_suite("funcs").tasks:
        tests = "\n".join(line for line in t.tests.splitlines()
                          if not line.startswith(("from solution", "import solution")))
        prompt = f"{t.spec}\n\nThe code must pass these tests:\n```python\n{tests.strip()}\n```"
        answer = f"```python\n{t.reference.strip()}\n```"
        items.append(("coder", prompt, answer))
    # near-duplicates: the same request asked again in other words
    for t in rng.sample(list(load_suite("funcs").tasks), 12):
        items.append(("coder", f"Again please: {t.spec} Keep it short.",
                      f"```python\n{t.reference.strip()}\n```"))
    return items


def _tester_items(rng: random.Random) -> list[tuple[str, str, str]]:
    from tracetune.tasks import load_suite

    tasks = rng.sample(list(load_suite("funcs").tasks), 76)
    return [("tester", f"Write pytest unit tests for this function:\n```python\n"
                       f"{t.reference.strip()}\n```", t.tests.strip()) for t in tasks]


def _researcher_items(rng: random.Random) -> list[tuple[str, str, str]]:
    out = []
    for i in range(26):
        topic, answer = TOPICS[i % len(TOPICS)]
        form = QUESTION_FORMS[(i // len(TOPICS)) % len(QUESTION_FORMS)]
        out.append(("researcher", form.format(t=topic), answer))
    return out


def _coordinator_items(rng: random.Random) -> list[tuple[str, str, str]]:
    out = []
    for i in range(20):
        feature = FEATURES[i % len(FEATURES)]
        plan = (f"Plan for {feature}:\n1. researcher: check existing modules and constraints.\n"
                f"2. coder: implement {feature} behind an interface.\n"
                f"3. tester: write unit tests for the normal and edge cases.\n"
                f"4. reviewer: review the change.\nOrder: 1, 2, 3, 4; 3 may start after 2's "
                f"interface is fixed.")
        out.append(("coordinator", f"Break down this feature and assign the subtasks: "
                                   f"{feature}.", plan))
    return out


def _reviewer_items(rng: random.Random) -> list[tuple[str, str, str]]:
    from tracetune.tasks import load_suite

    tasks = rng.sample(list(load_suite("funcs").tasks), 3)
    return [("reviewer", f"Review this code:\n```python\n{t.reference.strip()}\n```",
             REVIEW_NOTES[i]) for i, t in enumerate(tasks)]


def make_log(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    items = (_coder_items(rng) + _tester_items(rng) + _researcher_items(rng)
             + _coordinator_items(rng) + _reviewer_items(rng))
    rng.shuffle(items)
    times = sorted(START + rng.random() * DAYS * 86400 for _ in items)
    lines = []
    for i, ((role, prompt, answer), t) in enumerate(zip(items, times)):
        r = rng.random()
        provider, model = PROVIDERS[0][:2] if r < PROVIDERS[0][2] else PROVIDERS[1][:2]
        latency = _latency(rng)
        messages = [{"role": "system", "content": SYSTEMS[role]},
                    {"role": "user", "content": prompt}]
        request = {"model": model, "messages": messages, "temperature": 0.2,
                   "max_tokens": 1024}
        line = {"id": f"call-{i:04d}", "started_at": round(t, 3), "latency_s": latency,
                "agent": AGENT_NAMES[role], "session_id": f"run-{int((t - START) // 3600):04d}",
                "provider": provider, "request": request}
        if rng.random() < 0.013:  # failed calls (seed 003: 4 of 302)
            line["error"] = rng.choice(["upstream timeout after 120 s",
                                        "HTTP 503: model overloaded"])
            line["response"] = None
        else:
            line["response"] = {
                "id": f"chatcmpl-{i:04d}", "object": "chat.completion", "created": int(t),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": sum(_tokens(m["content"]) for m in messages),
                          "completion_tokens": _tokens(answer),
                          "total_tokens": sum(_tokens(m["content"]) for m in messages)
                          + _tokens(answer)}}
        lines.append(line)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("agents.jsonl"))
    args = ap.parse_args()
    lines = make_log()
    args.out.write_text("".join(json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n"
                                for x in lines))
    print(f"wrote {len(lines)} interactions to {args.out}")


if __name__ == "__main__":
    main()
