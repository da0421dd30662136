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
