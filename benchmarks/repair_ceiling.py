"""Can the model write the fix at all? Held-out bugs repaired in one reply, with no tool protocol.

The repair agent's pass rate is bounded twice: by the protocol (does the model reach a valid
edit?) and by the model's ability to write the fix. `benchmarks/repair_ablation.py` measures the
first; this measures the second, by taking the protocol away. Each held-out bug (the `bugs`
suite's 70/30 split, the test side: 18 bugs) is asked for in one plain chat message and the
reply's code block is run against the task's tests in the sandbox, as the `direct` workflow does
(one attempt). Three prompts, each with more of what the agent's first message holds:

    spec      the bug report alone (what `--workflow direct` sends for a repair task): the model
              writes the module from scratch
    module    the report and the buggy module: "reply with the corrected module"
    failures  the report, the buggy module and the tests' verdict on it (failed test names
              and the first assertion message, as `show_file` gives the agent)

and prints, per prompt, how many replies pass (k/n, the share with its 95% Wilson interval
clustered by bug), how many bugs are solved at least once, and how many replies return the
buggy module unchanged. The same seeds serve every prompt (sample j of bug b is seeded
derive_seed(seed, b, j)).

    python benchmarks/repair_ceiling.py                                  # embedded, llama.cpp
    python benchmarks/repair_ceiling.py --trials 8 --model hf:model.gguf,device=cuda,batch_size=144

Not part of CI (18 x 3 x trials generations; about 90 s per prompt and sample on 2 cores).
"""

from __future__ import annotations

import argparse
import sys

from tracetune.agents.extract import extract_code, sanitize
from tracetune.agents.repair import run_tests, tests_text
from tracetune.agents.workflow import FENCE_END, IMPL_PROMPT
from tracetune.models import load_model
from tracetune.sandbox import Job, Sandbox
from tracetune.stats import clustered_wilson_interval
from tracetune.tasks import load_suite
from tracetune.tasks.splits import select
from tracetune.types import GenerationRequest, Message, SamplingParams, derive_seed

FIX_PROMPT = (
    "{spec}\n\nThe module {file}:\n```python\n{buggy}\n```\n{verdict}\n"
    "Reply with the complete corrected module in a single ```python code block."
)
PROMPTS = ("spec", "module", "failures")


def prompt(kind: str, task, verdict: str = "") -> str:
    """The one user message of prompt `kind` (PROMPTS) for repair task `task`."""
    if kind == "spec":
        return IMPL_PROMPT.format(spec=task.spec)
    shown = f"\nThe tests' verdict on it:\n{verdict}\n" if kind == "failures" else ""
    return FIX_PROMPT.format(spec=task.spec, file=task.file, buggy=task.buggy.strip(),
                             verdict=shown)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--trials", type=int, default=1, help="samples per bug and prompt")
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--train-pct", type=int, default=70, help="the split; held-out = the rest")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.prompts.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in PROMPTS]
    if unknown or args.trials < 1:
        ap.error(f"--prompts takes {', '.join(PROMPTS)}; --trials at least 1")
    tasks = select(load_suite("bugs").tasks, "test", args.train_pct)
    params = SamplingParams(temperature=args.temperature, top_p=0.95,
                            max_tokens=args.max_tokens, stop=(FENCE_END,))
    model = load_model(args.model)
    with Sandbox() as sandbox:
        verdicts = {t.id: tests_text(run_tests(t, t.buggy, sandbox)) for t in tasks}
        print(f"{len(tasks)} held-out bugs x {args.trials} sample(s), T={args.temperature}, "
              f"model {args.model}")
        print(f"{'prompt':<10}{'passed':>10}  {'share [95% CI, clustered by bug]':<34}"
              f"{'bugs solved':>12}{'unchanged':>11}")
        for kind in kinds:
            cells = [(t, j) for t in tasks for j in range(args.trials)]
            requests = [GenerationRequest(
                (Message("user", prompt(kind, t, verdicts[t.id])),), params,
                seed=derive_seed(args.seed, t.id, j)) for t, j in cells]
            completions = model.generate_many(requests)
            codes = [sanitize(extract_code(c.text + FENCE_END, t.names))
                     for (t, _), c in zip(cells, completions)]
            results = sandbox.map([Job.tests(t.tests, module=code, module_name=t.module)
                                   for (t, _), code in zip(cells, codes)])
            per_bug = {t.id: 0 for t in tasks}
            for (t, _), r in zip(cells, results):
                per_bug[t.id] += r.passed
            unchanged = sum(code.strip() == t.buggy.strip() for (t, _), code in zip(cells, codes))
            k = sum(per_bug.values())
            low, high = clustered_wilson_interval(list(per_bug.values()),
                                                  [args.trials] * len(tasks))
            share = f"{100 * k / len(cells):5.1f}% [{100 * low:5.1f}%, {100 * high:5.1f}%]"
            print(f"{kind:<10}{f'{k}/{len(cells)}':>10}  {share:<34}"
                  f"{sum(v > 0 for v in per_bug.values()):>8}/{len(tasks):<3}"
                  f"{unchanged:>11}", flush=True)
            solved = [f"{b.split('/')[-1]} {v}" for b, v in per_bug.items() if v]
            if solved:
                print(f"{'':<10}solved: {', '.join(solved)}")
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
