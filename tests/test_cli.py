"""The CLI as a user runs it: a real subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "tracetune.cli"]


def run(*args, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args", [[], ["models"], ["generate"], ["sandbox"], ["sandbox", "run"],
                                  ["demo"]])
def test_help_everywhere(args):
    r = run(*args, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout


def test_models_lists_every_backend():
    r = run("models")
    assert r.returncode == 0
    for name in ("llamacpp", "hf", "openai", "replay"):
        assert name in r.stdout


def test_models_resolves_a_spec():
    r = run("models", "embedded,n_ctx=1024", "--load")
    assert r.returncode == 0 and "n_ctx = 1024" in r.stdout and "loaded in" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["models", "nonsense:x"], "unknown model spec"),
    (["models", "gguf:/no/such.gguf", "--load"], "model file not found"),
    (["generate", "-m", "gguf:/no/such.gguf", "hi"], "model file not found"),
    (["generate", "-m", "openai:m@http://127.0.0.1:9/v1,max_retries=0", "hi"], "cannot reach"),
    (["sandbox", "run", "/no/such/file.py"], "no such file"),
    (["sandbox", "run", "x.py", "--timeout", "0"], "--timeout must be positive"),
    (["demo", "--suite", "nope"], "unknown suite"),
])
def test_user_errors_are_one_line_without_traceback(args, message):
    r = run(*args)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback():
    for args in (["--debug", "models", "nonsense:x"], ["models", "nonsense:x", "--debug"]):
        r = run(*args)
        assert r.returncode != 0 and "Traceback" in r.stderr


def test_generate_with_replay(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"text": "def f():\n    return 1"}) + "\n")
    r = run("generate", "-m", f"replay:{script}", "write f", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["text"] == "def f():\n    return 1"


def test_generate_with_the_embedded_model():
    r = run("generate", "Say hello.", "--max-tokens", "8")
    assert r.returncode == 0 and r.stdout.strip()
    assert "tokens/s" in r.stderr


def test_sandbox_run_program_and_tests(tmp_path):
    mod = tmp_path / "mathx.py"
    mod.write_text("def double(x):\n    return 2 * x\n")
    tests = tmp_path / "test_mathx.py"
    tests.write_text("from mathx import double\ndef test_d():\n    assert double(2) == 4\n"
                     "def test_e():\n    assert double(0) == 1\n")
    r = run("sandbox", "run", str(mod), "--tests", str(tests), "--json")
    result = json.loads(r.stdout)
    assert r.returncode == 1 and result["status"] == "fail"
    assert [t["outcome"] for t in result["tests"]] == ["passed", "failed"]
    prog = tmp_path / "hello.py"
    prog.write_text("print('hi')\n")
    r = run("sandbox", "run", str(prog))
    assert r.returncode == 0 and "PASS" in r.stdout and "hi" in r.stdout


def test_sandbox_run_non_utf8_output_and_source(tmp_path):
    prog = tmp_path / "bytes.py"
    prog.write_bytes(b"x = '\xff'\n")
    r = run("sandbox", "run", str(prog), "--json")
    assert r.returncode == 1  # the source is not UTF-8: Python refuses it, recorded as an error
    assert json.loads(r.stdout)["status"] == "error"
    prog.write_bytes(b"import sys\nsys.stdout.buffer.write(b'ok\\xff')\n")
    r = run("sandbox", "run", str(prog), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["stdout"] == "ok\\xff"


def test_sandbox_run_timeout(tmp_path):
    prog = tmp_path / "spin.py"
    prog.write_text("while True:\n    pass\n")
    r = run("sandbox", "run", str(prog), "--timeout", "1")
    assert r.returncode == 1 and "TIMEOUT" in r.stdout


def test_tasks_commands():
    r = run("tasks", "list")
    assert r.returncode == 0 and all(s in r.stdout for s in ("funcs", "tdd6", "humaneval"))
    r = run("tasks", "list", "--suite", "tdd6")
    assert r.returncode == 0 and "tdd6/lru_cache" in r.stdout
    r = run("tasks", "show", "tdd6/stack", "--suite", "tdd6")
    assert r.returncode == 0 and "class Stack" in r.stdout and "acceptance tests" in r.stdout
    r = run("tasks", "split", "--suite", "funcs", "--train-pct", "70", "--json")
    split = json.loads(r.stdout)
    assert len(split["train"]) + len(split["test"]) == 160
    assert run("tasks", "split", "--suite", "funcs", "--train-pct", "70", "--json").stdout == r.stdout
    r = run("tasks", "check", "--suite", "demo", "--suite", "tdd6")
    assert r.returncode == 0 and "tdd6: 6/6 tasks: references pass their tests" in r.stdout
    r = run("tasks", "check", "--suite", "bugs")
    assert r.returncode == 0 and \
        "bugs: 52/52 tasks: references pass their tests and buggy modules fail them" in r.stdout
    r = run("tasks", "split", "--suite", "bugs", "--json")
    assert (json.loads(r.stdout)["train_pct"], len(json.loads(r.stdout)["test"])) == (70, 18)
    r = run("tasks", "show", "bugs/gcd", "--suite", "bugs")
    assert r.returncode == 0 and "gcd.py (buggy, as the agent first sees it)" in r.stdout


def test_tasks_check_rejects_a_broken_suite(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite]\nname = 'bad'\n[[task]]\nid = 'b/one'\nnames = ['f']\nspec = 's'\n"
                   'reference = "def f():\\n    return 1\\n"\n'
                   'tests = "from solution import f\\ndef test_f():\\n    assert f() == 2\\n"\n')
    r = run("tasks", "check", "--suite", str(bad))
    assert r.returncode == 1 and "b/one: reference fails its tests: fail" in r.stdout
    missing = tmp_path / "missing.toml"
    missing.write_text("[suite]\nname = 'm'\n[[task]]\nid = 'm/one'\nspec = 's'\n")
    r = run("tasks", "check", "--suite", str(missing))
    assert r.returncode == 1 and "missing names, reference, tests" in r.stderr


def test_eval_with_the_embedded_model_on_two_tasks(tmp_path):
    r = run("eval", "--suite", "demo", "--limit", "2", "--max-attempts", "1", "--temperature", "0",
            "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "overall" in r.stdout and "demo/is_even" in r.stdout
    again = run("show", str(tmp_path / "run"))
    assert again.returncode == 0 and again.stdout.split("demo/is_even")[1].split("\n")[0] in \
        r.stdout


def test_mine_cli_from_a_replay_run(tmp_path):
    script = tmp_path / "r.jsonl"
    good = "```python\ndef is_even(n):\n    return n % 2 == 0\n```"
    script.write_text(json.dumps({"text": good, "match": "is_even"}) + "\n")
    r = run("eval", "--suite", "demo", "--task", "demo/is_even", "--model", f"replay:{script}",
            "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    r = run("mine", str(tmp_path / "run"), "--out", str(tmp_path / "ds"), "--allow-heldout",
            "--tokenizer", "none", "--stats")
    assert r.returncode == 0, r.stderr
    assert "sft: 1" in r.stdout and "dropped by filters" in r.stdout
    r = run("mine", str(tmp_path / "run"), "--out", str(tmp_path / "ds2"), "--train-pct", "0",
            "--tokenizer", "none")
    assert r.returncode == 1 and "no rows left" in r.stderr and not (tmp_path / "ds2").exists()
    r = run("mine", str(tmp_path / "run"), "--out", str(tmp_path / "ds3"), "--tier", "impl")
    assert r.returncode == 1 and "STEP=TIER" in r.stderr


def test_export_dispatch_errors(tmp_path):
    r = run("export", str(tmp_path))
    assert r.returncode == 1 and "neither a run directory" in r.stderr
    (tmp_path / "adapter_config.json").write_text("{}")
    r = run("export", str(tmp_path))
    assert r.returncode == 1 and "needs --to" in r.stderr


def test_train_cli_rejects_bad_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nrank = 8\n")
    r = run("train", str(tmp_path), "--out", str(tmp_path / "a"), "--config", str(cfg))
    assert r.returncode == 1 and "unknown key(s) rank" in r.stderr


def test_show_counts_failed_episodes_by_kind(tmp_path):
    script = tmp_path / "r.jsonl"
    wrong = "```python\ndef is_even(n):\n    return n % 2 == 1\n```"
    script.write_text(json.dumps({"text": wrong, "match": "is_even"}) + "\n")
    r = run("eval", "--suite", "demo", "--task", "demo/is_even", "--model", f"replay:{script}",
            "--max-attempts", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    r = run("show", str(tmp_path / "run"))
    assert r.returncode == 0 and "failed episodes by last attempt: wrong answer 1" in r.stdout


def test_python_dash_m_runs_the_cli():
    """`python -m tracetune` is the command, for a package on the path but not installed."""
    out = subprocess.run([sys.executable, "-m", "tracetune", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("tracetune "), out
