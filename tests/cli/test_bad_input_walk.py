"""A walk over the CLI with bad inputs, one or more per kind: each must exit non-zero with one
line that names the file, key or option, print no traceback, and leave the output location
exactly as it was."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.eval.runner import EvalConfig, run_eval

CLI = [sys.executable, "-m", "tracetune.cli"]
SUITE = '''[suite]
name = "walk"

[[task]]
id = "w/t1"
names = ["add"]
spec = "Write add(a, b) returning a + b."
reference = "def add(a, b):\\n    return a + b\\n"
tests = "from solution import add\\n\\ndef test_a():\\n    assert add(1, 2) == 3\\n"
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    (root / "suite.toml").write_text(SUITE)
    (root / "latin1.toml").write_bytes(SUITE.replace("a + b", "a + b \xe9").encode("latin-1"))
    (root / "names_str.toml").write_text(SUITE.replace('names = ["add"]', 'names = "add"'))
    (root / "spec_int.toml").write_text(
        SUITE.replace('spec = "Write add(a, b) returning a + b."', "spec = 42"))
    (root / "extra_section.toml").write_text(SUITE + "\n[suit]\nname = 'x'\n")
    (root / "a_file.txt").write_text("keep me\n")
    (root / "logged.json").write_text(json.dumps({
        "suite": {"name": "logged", "kind": "logged"},
        "task": [{"id": "l/1", "spec": "hi", "reference": "hello",
                  "chat": json.dumps([{"role": "user", "content": "hi"}])}]}))
    run_eval(EvalConfig(suite=str(root / "suite.toml"), model="oracle"), root / "run")
    (root / "changed.toml").write_text(SUITE)
    run_eval(EvalConfig(suite=str(root / "changed.toml"), model="oracle"), root / "run2")
    (root / "changed.toml").write_text(SUITE.replace("w/t1", "w/t9"))
    exp = (Path(__file__).parents[1] / "experiment" / "tiny.toml").read_text()
    (root / "exp_ok.toml").write_text(exp)
    (root / "exp_section.toml").write_text(exp + "\n[trian]\nepochs = 1\n")
    (root / "exp_key.toml").write_text(exp.replace("[train]\n", "[train]\nepochz = 1\n", 1))
    (root / "exp_nan.toml").write_text(exp.replace("temperature = 0.8", "temperature = nan", 1))
    (root / "bad.jsonl").write_bytes(b'{"text": "x"\n')
    (root / "good.jsonl").write_text('{"text": "x"}\n')
    distill = (Path(__file__).parents[2] / "experiments" / "distill_logs.toml").read_text()
    (root / "distill_fmt.toml").write_text(distill.replace(
        'source = "../examples/logs/agents.jsonl"',
        f'source = "{Path(__file__).parents[2] / "examples" / "logs" / "agents.jsonl"}"').replace(
        'format = "openai-jsonl"', 'format = "csv"'))
    cl = (Path(__file__).parents[2] / "experiments" / "continual_quick.toml").read_text()
    explicit = ('[stream]\nby = "explicit"\nsuite = "demo"\nsessions = [{name = "a", tasks = '
                '["demo/is_even"]}, {name = "b", tasks = [%s]}]\n\n[eval]')
    stream = cl[cl.index("[stream]"):cl.index("[eval]") + len("[eval]")]
    (root / "cl_ok.toml").write_text(cl)
    (root / "cl_empty.toml").write_text(cl.replace(stream, explicit % ""))
    (root / "cl_twice.toml").write_text(cl.replace(stream, explicit % '"demo/is_even"'))
    (root / "cl_setting.toml").write_text(cl + "\n[continual.sequential]\nbuffer_size = 3\n")
    return root


# (id, argv with {w} for the work folder, the output path the command must leave as it was,
#  words the one line must contain)
CASES = [
    ("non-utf8 suite", ["eval", "--suite", "{w}/latin1.toml", "--model", "oracle",
                        "--out", "{w}/o1"], "{w}/o1", ["latin1.toml", "UTF-8"]),
    ("wrong-typed names", ["eval", "--suite", "{w}/names_str.toml", "--model", "oracle",
                           "--out", "{w}/o2"], "{w}/o2", ["names_str.toml", "names"]),
    ("wrong-typed spec", ["eval", "--suite", "{w}/spec_int.toml", "--model", "oracle",
                          "--out", "{w}/o3"], "{w}/o3", ["spec_int.toml", "spec"]),
    ("unknown suite section", ["eval", "--suite", "{w}/extra_section.toml", "--model", "oracle",
                               "--out", "{w}/o4"], "{w}/o4", ["extra_section.toml", "suit"]),
    ("nan temperature", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle",
                         "--temperature", "nan", "--out", "{w}/o5"], "{w}/o5", ["temperature"]),
    ("negative limit", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle", "--limit",
                        "-1", "--out", "{w}/o6"], "{w}/o6", ["limit"]),
    ("top_p out of range", ["generate", "--model", "oracle", "--top-p", "7", "hi"], None,
     ["top_p"]),
    ("not a number", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle", "--trials",
                      "many", "--out", "{w}/o7"], "{w}/o7", ["--trials"]),
    ("negative memory", ["sandbox", "run", "{w}/a_file.txt", "--memory-mb", "-1"], None,
     ["memory_mb"]),
    ("unknown workflow option", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle",
                                 "--workflow", "direct,max_atempts=2", "--out", "{w}/o8"],
     "{w}/o8", ["max_atempts"]),
    ("negative max_mutants", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle",
                              "--workflow", "testgen,max_mutants=-1", "--out", "{w}/o8"],
     "{w}/o8", ["max_mutants"]),
    ("testgen on a logged suite", ["eval", "--suite", "{w}/logged.json", "--model", "oracle",
                                   "--workflow", "testgen", "--out", "{w}/o8"],
     "{w}/o8", ["testgen", "logged"]),
    ("continual: empty session", ["continual", "{w}/cl_empty.toml", "--out", "{w}/o18"],
     "{w}/o18", ["cl_empty.toml", "b", "empty"]),
    ("continual: a task in two sessions", ["continual", "{w}/cl_twice.toml", "--out",
                                           "{w}/o18"], "{w}/o18", ["demo/is_even"]),
    ("continual: a setting sequential does not take", ["continual", "{w}/cl_setting.toml",
                                                       "--out", "{w}/o18"], "{w}/o18",
     ["sequential", "no settings"]),
    ("continual: out is a file", ["continual", "{w}/cl_ok.toml", "--out", "{w}/a_file.txt"],
     "{w}/a_file.txt", ["a_file.txt"]),
    ("unknown experiment section", ["check-experiment", "{w}/exp_section.toml"], None,
     ["trian"]),
    ("unknown experiment key", ["check-experiment", "{w}/exp_key.toml"], None, ["epochz"]),
    ("nan in an experiment", ["check-experiment", "{w}/exp_nan.toml"], None,
     ["exp_nan.toml", "temperature"]),
    ("out is a file", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle", "--out",
                       "{w}/a_file.txt"], "{w}/a_file.txt", ["a_file.txt", "file"]),
    ("eval out under a file", ["eval", "--suite", "{w}/suite.toml", "--model", "oracle",
                               "--out", "{w}/a_file.txt/run"], "{w}/a_file.txt",
     ["a_file.txt", "not a folder"]),
    ("mine out under a file", ["mine", "{w}/run", "--out", "{w}/a_file.txt/data"],
     "{w}/a_file.txt", ["a_file.txt", "not a folder"]),
    ("loop out is a file", ["loop", "{w}/exp_ok.toml", "--out", "{w}/a_file.txt"],
     "{w}/a_file.txt", ["a_file.txt"]),
    ("out under a file", ["export", "{w}/run", "--jsonl", "--out", "{w}/a_file.txt/x.jsonl"],
     "{w}/a_file.txt", ["a_file.txt"]),
    ("out exists", ["export", "{w}/run", "--jsonl", "--out", "{w}/a_file.txt"],
     "{w}/a_file.txt", ["a_file.txt", "--force"]),
    ("out is its own input", ["export", "{w}/run", "--jsonl", "--force", "--out",
                              "{w}/run/trajectories.sqlite"], "{w}/run",
     ["trajectories.sqlite", "own input"]),
    ("mine into a full folder", ["mine", "{w}/run", "--out", "{w}/run"], "{w}/run",
     ["run", "not empty"]),
    ("changed suite on resume", ["eval", "--resume", "--out", "{w}/run2"], "{w}/run2",
     ["changed", "w/t1"]),
    ("model file missing", ["eval", "--suite", "{w}/suite.toml", "--model",
                            "replay:{w}/nosuch.jsonl", "--out", "{w}/o9"], "{w}/o9",
     ["nosuch.jsonl"]),
    ("model file malformed", ["eval", "--suite", "{w}/suite.toml", "--model",
                              "replay:{w}/bad.jsonl", "--out", "{w}/o10"], "{w}/o10",
     ["bad.jsonl"]),
    ("gguf missing", ["eval", "--suite", "{w}/suite.toml", "--model", "gguf:{w}/no.gguf",
                      "--out", "{w}/o11"], "{w}/o11", ["no.gguf"]),
    ("not a run", ["compare", "{w}", "{w}/run"], None, ["trajectories.sqlite"]),
    ("import: unknown format", ["import", "{w}/bad.jsonl", "--format", "csv", "--out",
                                "{w}/o12"], "{w}/o12", ["csv"]),
    ("import: missing file", ["import", "{w}/nosuch.jsonl", "--format", "litellm", "--out",
                              "{w}/o13"], "{w}/o13", ["nosuch.jsonl"]),
    ("import: out is a file", ["import", "{w}/bad.jsonl", "--format", "openai-jsonl", "--out",
                               "{w}/a_file.txt"], "{w}/a_file.txt", ["a_file.txt"]),
    ("logs baseline: no store", ["logs", "baseline", "{w}"], None, ["interactions.sqlite"]),
    ("logs suite: no store", ["logs", "suite", "{w}", "--out", "{w}/o14"], "{w}/o14",
     ["interactions.sqlite"]),
    ("logs suite: bad split", ["logs", "suite", "{w}", "--out", "{w}/o15", "--split", "a,b"],
     "{w}/o15", ["--split"]),
    ("proxy: unknown upstream", ["proxy", "--upstream", "nosuch:model", "--port", "8799",
                                 "--out", "{w}/o16"], "{w}/o16", ["nosuch:model"]),
    ("proxy: malformed upstream file", ["proxy", "--upstream", "replay:{w}/bad.jsonl",
                                        "--port", "8799", "--out", "{w}/o17"], "{w}/o17",
     ["bad.jsonl"]),
    ("proxy: out is a file", ["proxy", "--upstream", "replay:{w}/good.jsonl", "--port", "8799",
                              "--out", "{w}/a_file.txt"], "{w}/a_file.txt", ["a_file.txt"]),
    ("distill: unknown log format", ["check-experiment", "{w}/distill_fmt.toml"], None,
     ["[logs] format", "csv"]),
]


def _snapshot(path: Path | None):
    if path is None or not path.exists():
        return None
    if path.is_file():
        return ("file", path.read_bytes())
    return ("dir", sorted((str(p.relative_to(path)), p.is_file() and p.read_bytes())
                          for p in path.rglob("*")))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_the_output_as_it_was(work, case):
    _, argv, out, words = case
    argv = [a.format(w=work) for a in argv]
    target = Path(out.format(w=work)) if out else None
    before = _snapshot(target)
    proc = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    text = (proc.stdout + proc.stderr).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert proc.returncode != 0, text
    assert "Traceback" not in text and "unexpected" not in text, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(target) == before, f"{target} changed"
    if before is None and target is not None:
        assert not target.exists()
