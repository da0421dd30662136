"""Seed 001's multi-stage training (tracetune.testgen.stages): the stage file format, its errors,
and a miniature A -> B run on the CPU (the synthetic tiny model, the loaders' fixtures)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.testgen.stages import MARKER, check_sources, load_stages, plan, run_stages

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
KODCODE = FIXTURES / "kodcode_sft_r1.jsonl"
TESTGENEVAL = FIXTURES / "testgeneval"

HEAD = """
[stages]
name = "t"
base = "hf:example-org/tiny-coder"
[train]
r = 16
alpha = 32
"""
A = """
[[stage]]
name = "A"
data = { loader = "kodcode", limit = 100, max_tokens = 2048 }
train = { learning_rate = 2e-4, epochs = 1 }
"""
B = """
[[stage]]
name = "B"
data = { loader = "testgeneval", split = "train" }
train = { learning_rate = 1e-4 }
"""
C = """
[[stage]]
name = "C"
data = { runs = ["runs/x"], kinds = ["fix"] }
train = { learning_rate = 5e-5 }
"""


def write(tmp_path, text, name="stages.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the experiment file ----------------------------------------------------------------------


def test_the_experiment_file_is_seed_001s_three_stages():
    """Parse + validate only: no dataset, run directory, network or GPU is touched."""
    spec = load_stages(REPO / "experiments" / "testgen_stages.toml")
    assert spec.info.base == "hf:deepseek-ai/deepseek-coder-6.7b-instruct"
    a, b, c = spec.stages
    assert [s.name for s in spec.stages] == ["A", "B", "C"]
    assert [s.parent for s in spec.stages] == [None, "A", "B"]
    assert [s.train.learning_rate for s in spec.stages] == [2e-4, 1e-4, 5e-5]
    for s in spec.stages:
        t = s.train
        assert (t.qlora, t.device, t.r, t.alpha, t.dropout, t.max_seq_len) == \
            (True, "cuda", 16, 32, 0.05, 2048)
        assert len(t.target_modules) == 7 and t.init_adapter is None
    assert (a.train.epochs, b.train.epochs) == (1.0, 1.0)
    assert (a.data.loader, a.data.source, a.data.split, a.data.limit, a.data.max_tokens) == \
        ("kodcode", "KodCode/KodCode-V1-SFT-R1", "train", 40000, 2048)
    assert a.data.tokenizer == spec.info.base  # rows measured with the base's tokenizer
    assert (b.data.loader, b.data.source, b.data.split) == \
        ("testgeneval", "kjain14/testgeneval", "train")
    assert c.data.runs == ("runs/testgen/baseline",) and c.data.mine.kinds == ("fix",)
    assert (c.data.mine.max_seq_len, c.data.mine.tokenizer) == (2048, spec.info.base)
    # warm-up ~3% of each stage's optimizer steps (the file's comments give the counts)
    assert a.train.warmup_steps == 75 and a.train.batch_size * a.train.grad_accumulation == 16


def test_defaults_and_from(tmp_path):
    spec = load_stages(write(tmp_path, HEAD + A + B + C.replace(
        'name = "C"', 'name = "C"\nfrom = "A"')))
    assert [s.parent for s in spec.stages] == [None, "A", "A"]
    assert spec.stage("B").data.source == "kjain14/testgeneval"
    assert spec.stage("B").data.tokenizer is None  # no max_tokens: nothing to measure
    assert spec.stage("B").train.r == 16 and spec.stage("B").train.learning_rate == 1e-4
    spec = load_stages(write(tmp_path, HEAD + A + B.replace(
        'name = "B"', 'name = "B"\nfrom = "base"').replace(
        "learning_rate = 1e-4", "learning_rate = 1e-4, r = 8")))
    assert spec.stage("B").parent is None and spec.stage("B").train.r == 8  # a fresh LoRA


# --- bad files --------------------------------------------------------------------------------


BAD = [
    ("unknown table", HEAD + "[defaults]\nx = 1\n" + A, r"unknown key\(s\) or table\(s\) defaults"),
    ("no [stages]", A, r"no \[stages\] table"),
    ("no base", HEAD.replace('base = "hf:example-org/tiny-coder"', "") + A,
     r"\[stages\]: no base"),
    ("unknown [stages] key", HEAD.replace('name = "t"', 'name = "t"\nmodel = "x"') + A,
     r"\[stages\]: unknown key\(s\) model"),
    ("empty stages", HEAD, r"no stages; add at least one \[\[stage\]\]"),
    ("[stage] not [[stage]]", HEAD + '[stage]\nname = "A"\n', r"\[\[stage\]\] \(an array"),
    ("no name", HEAD + A.replace('name = "A"', ""), r"\[\[stage\]\] 1 has no name"),
    ("bad name", HEAD + A.replace('name = "A"', 'name = "a/b"'), r"name 'a/b' is not a stage"),
    ("reserved name", HEAD + A.replace('name = "A"', 'name = "base"'),
     r"name 'base' is not a stage"),
    ("duplicate names", HEAD + A + B.replace('name = "B"', 'name = "A"'),
     r"two stages are named 'A' \(\[\[stage\]\] 1 and 2\)"),
    ("unknown stage key", HEAD + A.replace('name = "A"', 'name = "A"\nlr = 1'),
     r"stage 'A': unknown key\(s\) lr \(valid: name, from, data, train\)"),
    ("no data", HEAD + A.replace('data = { loader = "kodcode", limit = 100, max_tokens = 2048 }',
                                 ""), r"stage 'A': no data"),
    ("unknown loader", HEAD + A.replace('"kodcode"', '"kodkode"'),
     r"stage 'A' data: unknown loader 'kodkode' \(loaders: kodcode, testgeneval\)"),
    ("loader and runs", HEAD + A.replace("limit = 100", 'runs = ["r"]'),
     r"stage 'A' data: give either loader .* not both"),
    ("unknown data key", HEAD + A.replace("limit = 100", "limt = 100"),
     r"stage 'A' data: unknown key\(s\) limt"),
    ("bad split", HEAD + A + B.replace('split = "train"', 'split = "validation"'),
     r"stage 'B' data: split 'validation' is not a TestGenEval split"),
    ("bad limit", HEAD + A.replace("limit = 100", "limit = 0"),
     r"stage 'A' data: limit must be at least 1"),
    ("empty runs", HEAD + A + B + C.replace('["runs/x"]', "[]"), r"stage 'C' data: runs is empty"),
    ("unknown mine key", HEAD + A + B + C.replace('kinds = ["fix"]', 'kind = ["fix"]'),
     r"stage 'C' data: unknown key\(s\) kind"),
    ("unknown row kind", HEAD + A + B + C.replace('["fix"]', '["fixes"]'),
     r"stage 'C' data: unknown row kind 'fixes'"),
    ("from a later stage", HEAD + A.replace('name = "A"', 'name = "A"\nfrom = "B"') + B,
     r"stage 'A': from = 'B' names a later stage \(stages run in file order: A -> B\)"),
    ("from itself", HEAD + A + B.replace('name = "B"', 'name = "B"\nfrom = "B"'),
     r"stage 'B': from = 'B' names the stage itself"),
    ("from nowhere", HEAD + A + B.replace('name = "B"', 'name = "B"\nfrom = "Z"'),
     r"stage 'B': from = 'Z' names no stage \(stages: A, B; or \"base\"\)"),
    ("unknown [train] key", HEAD.replace("r = 16", "rank = 16") + A,
     r"\[train\]: unknown key\(s\) rank"),
    ("unknown stage train key", HEAD + A.replace("epochs = 1", "epoch = 1"),
     r"stage 'A' train: unknown key\(s\) epoch"),
    ("wrong type", HEAD + A.replace("learning_rate = 2e-4", 'learning_rate = "fast"'),
     r"stage 'A' train: learning_rate must be a number"),
    ("out of range", HEAD + A.replace("epochs = 1", "epochs = 0"),
     r"stage 'A' train: .*epochs > 0"),
    ("init_adapter", HEAD + A.replace("epochs = 1", 'epochs = 1, init_adapter = "x"'),
     r"stage 'A' train: init_adapter is set by the runner .* from = "),
    ("init_adapter in [train]", HEAD.replace("r = 16", 'init_adapter = "x"') + A,
     r"\[train\]: init_adapter is set by the runner"),
    ("LoRA shape of a continued adapter", HEAD + A + B.replace("1e-4", "1e-4, r = 8"),
     r"stage 'B' train: r = 8 but stage 'A', whose adapter it continues, has r = 16"),
    ("a base that stacks an adapter", HEAD.replace("tiny-coder", "tiny-coder,adapter=x") + A,
     r"stage 'A' train: .*adapter= is not trained on"),
]


@pytest.mark.parametrize("text, pattern", [(t, p) for _, t, p in BAD],
                         ids=[name for name, _, _ in BAD])
def test_bad_files_name_the_problem(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(TracetuneError, match=pattern) as info:
        load_stages(path)
    assert str(path) in str(info.value)  # every message names the file


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(TracetuneError, match="config file not found"):
        load_stages(tmp_path / "none.toml")
    with pytest.raises(TracetuneError, match="not valid TOML"):
        load_stages(write(tmp_path, "[stages\n"))


def test_check_sources_names_missing_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = HEAD + A.replace("limit = 100", 'source = "no/such/file.jsonl"')
    with pytest.raises(TracetuneError, match=r"stage 'A' data: source no/such/file.jsonl: no "):
        check_sources(load_stages(write(tmp_path, missing)))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    spec = load_stages(write(tmp_path, HEAD + A + B + C))
    with pytest.raises(TracetuneError, match=r"stage 'C' data: runs/x is not a run directory"):
        check_sources(spec)
    (tmp_path / "runs" / "x").rmdir()
    with pytest.raises(TracetuneError, match=r"stage 'C' data: run directory runs/x does not"):
        check_sources(spec)
    lines = check_sources(load_stages(write(tmp_path, HEAD + A + B)))
    assert lines[0].startswith("A: from base; kodcode KodCode/KodCode-V1-SFT-R1 [train]")
    assert "hub dataset" in lines[0] and lines[1].startswith("B: from A;")


def test_cli_check(tmp_path):
    path = write(tmp_path, HEAD + A.replace("limit = 100", f'source = "{KODCODE}"') + B)
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "stages", str(path), "--check"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ok t: stages A -> B" in r.stdout and "(local)" in r.stdout
    bad = write(tmp_path, HEAD + A + A, "bad.toml")
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "stages", str(bad), "--check"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "two stages are named 'A'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback


# --- a miniature run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import synthetic

    return synthetic.make_model_dir("tiny", tmp_path_factory.mktemp("tiny") / "model",
                                    dtype="float32")


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mini(model: Path, b_lr: str) -> str:
    return f"""
[stages]
name = "mini"
base = "hf:{model}"
[train]
device = "cpu"
r = 4
alpha = 8
dropout = 0.0
target_modules = ["q_proj", "v_proj"]
batch_size = 16
epochs = 1
warmup_steps = 0
max_seq_len = 2048
[[stage]]
name = "A"
data = {{ loader = "kodcode", source = "{KODCODE}", split = "train" }}
train = {{ learning_rate = 5e-3 }}
[[stage]]
name = "B"
data = {{ loader = "testgeneval", source = "{TESTGENEVAL}", split = "train" }}
train = {{ learning_rate = {b_lr} }}
"""


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_b_starts_from_a_reruns_skip_and_a_change_redoes_only_b(tmp_path, tiny, one_thread):
    import torch

    # TrainConfig refuses learning_rate = 0: 1e-30 moves no float32 weight of size ~1e-3.
    path = write(tmp_path, mini(tiny, "1e-30"))
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_stages(path, out, log=lines.append)
    assert [(r.name, r.skipped) for r in results] == [("A", False), ("B", False)]
    a_dir, b_dir = out / "A", out / "B"
    for d in (a_dir, b_dir):
        assert (d / "data" / "manifest.json").is_file() and (d / "adapter").is_dir()
    a_marker = json.loads((a_dir / MARKER).read_text())
    b_marker = json.loads((b_dir / MARKER).read_text())
    assert a_marker["init_adapter"] is None and a_marker["parent"] is None
    assert b_marker["init_adapter"] == str((a_dir / "adapter").resolve())
    assert b_marker["config"]["init_adapter"] == b_marker["init_adapter"]
    meta = json.loads((b_dir / "adapter" / "tracetune_adapter.json").read_text())
    assert meta["config"]["init_adapter"] == b_marker["init_adapter"]  # what B trained with
    assert a_marker["report"]["dataset"] == "kodcode" and a_marker["rows"] > 0
    assert b_marker["report"]["dataset"] == "testgeneval" and b_marker["rows"] > 0
    assert a_marker["final_loss"] is not None and a_marker["seconds"] > 0
    assert any("stage A (1/2): building data" in x for x in lines)
    assert any("stage B (2/2): training from stage A" in x for x in lines)

    a, b = adapter_tensors(a_dir / "adapter"), adapter_tensors(b_dir / "adapter")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    # A trained: its B matrices left zero. A fresh LoRA for B (same seed) would have A's initial
    # lora_A and zero lora_B, so equality below means B continued A's trained adapter.
    assert any(bool(v.any()) for k, v in a.items() if "lora_B" in k)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # A rerun skips both and rewrites nothing.
    before = {d: (d / MARKER).read_bytes() for d in (a_dir, b_dir)}
    assert plan(load_stages(path), out) == {"A": "done", "B": "done"}
    lines.clear()
    results = run_stages(path, out, log=lines.append)
    assert [(r.name, r.skipped) for r in results] == [("A", True), ("B", True)]
    assert all("up to date, skipped" in x for x in lines) and len(lines) == 2
    assert {d: (d / MARKER).read_bytes() for d in (a_dir, b_dir)} == before

    # A changed B redoes B only.
    write(tmp_path, mini(tiny, "5e-2"))
    assert plan(load_stages(path), out) == {"A": "done", "B": "to run"}
    lines.clear()
    results = run_stages(path, out, log=lines.append)
    assert [(r.name, r.skipped) for r in results] == [("A", True), ("B", False)]
    assert any("stage B (2/2): its settings, inputs or a stage it continues changed" in x
               for x in lines)
    assert (a_dir / MARKER).read_bytes() == before[a_dir]
    assert json.loads((b_dir / MARKER).read_text())["hash"] != b_marker["hash"]
    b2 = adapter_tensors(b_dir / "adapter")
    assert any(not torch.equal(a[k], b2[k]) for k in a)  # the comparison above can fail
    assert not [p for p in b_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_stage_directory_with_foreign_files_is_refused(tmp_path):
    path = write(tmp_path, HEAD + A.replace("limit = 100", f'source = "{KODCODE}"'))
    (tmp_path / "out" / "A").mkdir(parents=True)
    (tmp_path / "out" / "A" / "notes.txt").write_text("mine")
    with pytest.raises(TracetuneError, match=r"out/A holds files `tracetune stages` did not"):
        run_stages(path, tmp_path / "out", log=lambda _: None)
    assert (tmp_path / "out" / "A" / "notes.txt").read_text() == "mine"
