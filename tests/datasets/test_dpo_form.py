"""Both sides of a mined DPO pair are in the same form: the extracted code in one python fence,
so the preference is about correctness, not about closing a fence or trailing prose."""

import json

from tracetune.datasets.build import MineConfig, mine
from tracetune.datasets.mine import fenced
from tracetune.eval.runner import EvalConfig, run_eval

SUITE = '''[suite]
name = "pairs"
train_pct = 100

[[task]]
id = "pairs/double"
names = ["double"]
spec = "Write `double(x)` returning 2 * x."
reference = "def double(x):\\n    return 2 * x\\n"
tests = "from solution import double\\n\\ndef test_a():\\n    assert double(2) == 4\\n"
'''


def test_chosen_and_rejected_share_one_form(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    answers = [
        "Here it is:\n```python\ndef double(x):\n    return 2 * x\n```\nHope it helps.",
        "```python\ndef double(x):\n    return x + x + 1\n",  # no closing fence, wrong
        "I cannot write code today.",  # no code: the text itself, fenced like code
    ]
    script = tmp_path / "r.jsonl"
    script.write_text("\n".join(json.dumps({"text": t}) for t in answers) + "\n")
    run_eval(EvalConfig(suite=str(tmp_path / "s.toml"), model=f"replay:{script}", trials=3,
                        workflow="direct,max_attempts=1", concurrency=1), tmp_path / "run")
    report = mine([tmp_path / "run"], tmp_path / "data",
                  MineConfig(kinds=("dpo",), tokenizer=None, leakage_suites=()))
    pairs = report.rows["dpo"]
    assert len(pairs) == 2
    for pair in pairs:
        assert pair.chosen["content"] == fenced("def double(x):\n    return 2 * x\n")
    # Each rejected answer is its extracted code, re-fenced exactly like the chosen one.
    assert sorted(p.rejected["content"] for p in pairs) == sorted([
        fenced("def double(x):\n    return x + x + 1\n"), fenced("I cannot write code today.")])
