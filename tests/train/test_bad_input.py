"""What `tracetune train` refuses, in one line, before it trains: an unknown config section, a
damaged dataset file (named, with its line), a schedule that cannot change the weights; after
training, an adapter that is still zero is not written. And it reports its progress: steps done
of the total, with the loss, ending at total.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.train.config import load_config
from tracetune.train.recipe import META, check_schedule, optimizer_steps, train

CLI = [sys.executable, "-m", "tracetune.cli"]
AGAIN = "mine the dataset again with `tracetune mine`"


def sft_row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
            "completion": [{"role": "assistant", "content": f"zebra-{i} quartz"}]}


def dataset(path: Path, n: int = 4, *, lines: list[bytes] | None = None,
            manifest: bytes = b'{"schema_version": 1}') -> Path:
    """A dataset directory with `n` SFT rows (or these raw `lines`) and this manifest."""
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_bytes(manifest)
    if lines is None:
        lines = [json.dumps(sft_row(i)).encode() for i in range(n)]
    (path / "formats" / "sft.prompt_completion.jsonl").write_bytes(b"".join(x + b"\n"
                                                                            for x in lines))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


# --- unknown names in a config file --------------------------------------------------------------

@pytest.mark.parametrize("text", ["[train]\nr = 8\n[trian]\nepochs = 1\n",  # the case as found
                                  "[trian]\nepochs = 1\n",
                                  "r = 8\n[trian]\nepochs = 1\n"])
def test_an_unknown_section_is_refused_naming_it_and_the_valid_one(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(TracetuneError) as info:
        load_config(path, epochs=3.0)
    assert str(info.value) == f"{path}: unknown section(s) [trian] (valid: [train])"


def test_keys_outside_train_and_unknown_keys_are_refused_naming_them(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("epochs = 1\n[train]\nr = 8\n")
    with pytest.raises(TracetuneError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: key(s) epochs outside [train] (put them under [train])"
    path.write_text("[train]\nepocs = 1\n")
    with pytest.raises(TracetuneError, match=re.escape(f"{path} [train]: unknown key(s) epocs "
                                                       "(valid: alpha, attention, batch_size,")):
        load_config(path)
    path.write_text("r = 8\nepochs = 1\n")  # keys at the top level, no [train]: still read
    assert (load_config(path).r, load_config(path).epochs) == (8, 1.0)
    path.write_text("[train]\nwarmup_steps = -1\n")
    with pytest.raises(TracetuneError, match="warmup_steps must be 0 or more, not -1"):
        load_config(path)


def test_the_cli_refuses_an_unknown_section_in_one_line_and_trains_nothing(tmp_path):
    data = dataset(tmp_path / "ds", 1)
    (tmp_path / "c.toml").write_text("[train]\nr = 8\n[trian]\nepochs = 1\n")
    r = cli("train", str(data), "--out", "a", "--config", "c.toml", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == ["error: c.toml: unknown section(s) [trian] (valid: [train])"]
    assert not (tmp_path / "a").exists()


# --- damaged dataset files -------------------------------------------------------------------------

@pytest.mark.parametrize("manifest, problem", [
    (b'{"schema_version": 1,\n', "not valid JSON (Expecting property name enclosed in double "
                                 "quotes at line 2 column 1)"),  # truncated, the case as found
    (b'{"schema_version": 1, "note": "\xff"}', "not UTF-8 text (byte 32)"),
    (b'[1]', "its top level is not a JSON object"),
])
def test_a_damaged_manifest_is_named_with_what_is_wrong_and_the_fix(tmp_path, manifest, problem):
    data = dataset(tmp_path / "ds", manifest=manifest)
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", tmp_path / "a", load_config(None))
    assert str(info.value) == f"{data / 'manifest.json'} is damaged: {problem}; {AGAIN}"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("bad, problem", [
    (b'{"prompt": [{"role": "user", "content": "x"}', "not valid JSON (Expecting ',' delimiter "
                                                      "at column 45)"),
    (b'{"prompt": "caf\xe9"}', "not UTF-8 text (byte 16 of the line)"),
    (b"", "an empty line"),
    (b"[1, 2]", "not a JSON object"),
])
def test_a_damaged_row_file_is_named_with_its_line(tmp_path, bad, problem):
    good = json.dumps(sft_row(0)).encode()
    data = dataset(tmp_path / "ds", lines=[good, good, bad, good])
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", tmp_path / "a", load_config(None))
    rows = data / "formats" / "sft.prompt_completion.jsonl"
    assert str(info.value) == f"{rows} line 3 is damaged: {problem}; {AGAIN}"


def test_a_line_separator_inside_a_row_is_text_not_a_line_break(tmp_path):
    from tracetune.datasets.build import read_rows

    row = {"prompt": "a\u2028b\u0085c", "completion": "d"}  # json.dumps(ensure_ascii=False)
    path = tmp_path / "rows.jsonl"                           # writes both raw, as mine does
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_rows(path) == [row]


def test_a_row_of_the_wrong_shape_names_its_file(tmp_path):
    good = json.dumps(sft_row(0)).encode()
    data = dataset(tmp_path / "ds", lines=[good, b'{"completion": []}'])
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", tmp_path / "a", load_config(None))
    rows = data / "formats" / "sft.prompt_completion.jsonl"
    assert str(info.value) == f"{rows}: training row 2 has no prompt"


def test_the_cli_names_a_truncated_manifest_in_one_line(tmp_path):
    data = dataset(tmp_path / "ds", manifest=b'{"schema_version": 1,\n')
    r = cli("train", str(data), "--out", "a", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: {data / 'manifest.json'} is damaged: not valid JSON (Expecting property name "
        f"enclosed in double quotes at line 2 column 1); {AGAIN}"]
    assert not (tmp_path / "a").exists()


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path):
    data = dataset(tmp_path / "ds")
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", tmp_path / "afile.txt", load_config(None))
    assert str(info.value) == f"--out must be a directory: {tmp_path / 'afile.txt'} is a file"
    assert (tmp_path / "afile.txt").read_text() == "x"


# --- training that cannot change the weights -------------------------------------------------------

@pytest.fixture
def fake_trainer(monkeypatch):
    """The trainers' train() replaced: it keeps the trainer and returns at once, having set one
    LoRA B weight (a step that moved the adapter) only when `updates`."""
    import trl
    from transformers.trainer_utils import TrainOutput

    seen = {}

    def install(updates: bool):
        def fake_train(self, resume_from_checkpoint=None, **kwargs):
            seen["trainer"] = self
            if updates:
                next(p for n, p in self.model.named_parameters() if "lora_B" in n).data += 1e-3
            return TrainOutput(global_step=1, training_loss=1.0, metrics={})

        monkeypatch.setattr(trl.SFTTrainer, "train", fake_train)
        return seen

    return install


def test_a_schedule_that_gives_no_update_is_refused_before_anything_loads(tmp_path, fake_trainer):
    # The case as found: one row, one epoch, batch 4 -> one optimizer step, and warm-up (3 steps)
    # runs its first step at learning rate 0: every lora_B stayed 0, reported as trained.
    data = dataset(tmp_path / "ds", 1)
    seen = fake_trainer(updates=True)
    out = tmp_path / "new" / "adapter"
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", out, load_config(None, epochs=1.0))
    assert str(info.value) == (
        "the schedule gives no update: 1 optimizer step (1 row, batch_size 4, grad_accumulation "
        "1, epochs 1) <= warmup_steps 3, and warm-up runs its first step at learning rate 0; "
        "lower warmup_steps or add rows or epochs")
    assert not seen  # refused before any trainer was built
    assert not (tmp_path / "new").exists()


def test_a_warm_up_longer_than_the_training_is_a_warning(tmp_path, fake_trainer):
    data = dataset(tmp_path / "ds", 4)
    fake_trainer(updates=True)
    said = []
    train(data, "embedded", tmp_path / "a", load_config(None, epochs=2.0, r=2, alpha=4,
                                                        target_modules=["q_proj"]),
          log=said.append)
    assert said == ["warning: warmup_steps 3 >= 2 optimizer steps (4 rows, batch_size 4, "
                    "grad_accumulation 1, epochs 2): the learning rate peaks at 6.67e-05, not "
                    "learning_rate 0.0002; lower warmup_steps or add rows or epochs"]
    assert check_schedule(4, load_config(None, epochs=2.0, warmup_steps=1)) is None


def test_an_adapter_left_at_zero_is_not_written(tmp_path, fake_trainer):
    data = dataset(tmp_path / "ds", 2)
    seen = fake_trainer(updates=False)
    parent = tmp_path / "runs"
    parent.mkdir()
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", parent / "adapter",
              load_config(None, r=2, alpha=4, batch_size=1, warmup_steps=0,
                          target_modules=["q_proj"]))
    assert str(info.value) == (
        "training left every LoRA B matrix at zero after 0 optimizer steps: the adapter would "
        "not change the model, so none is written; raise learning_rate, lower warmup_steps or "
        "add rows or epochs")
    assert "trainer" in seen
    assert list(parent.iterdir()) == []  # no adapter, no staging directory


@pytest.mark.parametrize("rows, batch, accumulation, epochs", [
    (1, 4, 1, 1.0), (4, 4, 1, 3.0), (5, 2, 1, 1.0), (5, 2, 2, 1.5), (7, 1, 3, 2.0),
    (3, 4, 8, 0.5), (10, 3, 2, 2.5)])
def test_optimizer_steps_are_counted_as_the_trainer_counts_them(
        tmp_path, fake_trainer, rows, batch, accumulation, epochs):
    import copy

    from torch.utils.data import DataLoader

    data = dataset(tmp_path / "ds", 3)
    seen = fake_trainer(updates=True)
    cfg = load_config(None, r=2, alpha=4, warmup_steps=0, target_modules=["q_proj"],
                      batch_size=2, epochs=1.0)
    train(data, "embedded", tmp_path / "a", cfg)
    trainer = seen["trainer"]
    # The trainer's own data loader and count for this training...
    assert trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1] \
        == optimizer_steps(3, cfg)
    # ...and its count for other shapes of training.
    args = copy.copy(trainer.args)
    args.per_device_train_batch_size, args.gradient_accumulation_steps = batch, accumulation
    args.num_train_epochs = epochs
    loader = DataLoader(list(range(rows)), batch_size=batch)
    other = load_config(None, batch_size=batch, grad_accumulation=accumulation, epochs=epochs)
    assert trainer.set_initial_training_values(args, loader)[-1] == optimizer_steps(rows, other)


@pytest.mark.parametrize("steps, warmup", [(1, 3), (1, 0), (2, 3), (3, 3), (5, 2), (4, 0)])
def test_learning_rates_are_the_trainers_schedule(steps, warmup):
    import torch
    from transformers import get_scheduler

    from tracetune.train.recipe import learning_rates

    cfg = load_config(None, warmup_steps=warmup)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.learning_rate)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup,
                              num_training_steps=steps)
    expected = []
    for _ in range(steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert learning_rates(steps, cfg) == pytest.approx(expected)


# --- progress ----------------------------------------------------------------------------------

def test_on_progress_counts_steps_to_the_total_with_the_loss(tmp_path):
    data = dataset(tmp_path / "ds", 2)
    cfg = load_config(None, r=2, alpha=4, batch_size=1, epochs=2.0, warmup_steps=0,
                      logging_steps=2, target_modules=["q_proj"])  # 4 steps, loss at 2 and 4
    calls = []
    out = train(data, "embedded", tmp_path / "a", cfg,
                on_progress=lambda step, total, loss: calls.append((step, total, loss)))
    losses = [json.loads(x)["loss"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2
    assert calls == [(0, 4, None), (1, 4, None), (2, 4, losses[0]), (3, 4, losses[0]),
                     (4, 4, losses[1])]
    assert json.loads((out / META).read_text())["steps"] == 4


def test_the_train_stage_reports_steps_and_loss_to_the_loop(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import tracetune.train.recipe as recipe
    from tracetune.experiment.progress import ProgressLines
    from tracetune.experiment.stages import train as train_stage

    def fake_train(data, base, out, config, *, resume, log, on_progress):
        for step, loss in ((0, None), (1, 2.5), (2, 2.0), (3, 1.25)):
            on_progress(step, 3, loss)
        out.mkdir()
        (out / META).write_text(json.dumps({"rows": 3, "steps": 3, "train_seconds": 1.0,
                                            "first_loss": 2.5, "last_loss": 1.25}))
        return out

    monkeypatch.setattr(recipe, "train", fake_train)
    reported, lines = [], ProgressLines(interval_s=0)
    ctx = SimpleNamespace(
        exp=SimpleNamespace(models=SimpleNamespace(train_base=None, base="embedded"),
                            train_config=load_config(None)),
        layout=SimpleNamespace(data=tmp_path / "data", adapter=tmp_path / "adapter"),
        log=lambda line: None,
        progress=lambda *call: (reported.append(call), lines.line(*call)))
    assert train_stage(ctx)["steps"] == 3
    assert reported == [("train", 0, 3, ""), ("train", 1, 3, "loss 2.500"),
                        ("train", 2, 3, "loss 2.000"), ("train", 3, 3, "loss 1.250")]
    final = lines.line(*reported[-1])  # what the stage log prints last (the loop's format)
    assert re.search(r"\[train\] (\d+)/\1 steps \(100%\).*loss \d", final), final


def _cli_train(monkeypatch, capsys, tmp_path, fails: bool) -> tuple[int, str, str]:
    """`tracetune train` in this process with a trainer that reports 2 of 3 steps and then
    fails (`fails`) or finishes."""
    import tracetune.cli
    import tracetune.train.recipe as recipe

    def fake_train(data, base, out, config, *, resume, log, on_progress):
        on_progress(0, 3, None)
        on_progress(2, 3, 2.0)
        if fails:
            raise TracetuneError("the disk is full")
        on_progress(3, 3, 0.5)
        out.mkdir()
        (out / META).write_text(json.dumps({"rows": 3, "steps": 3, "train_seconds": 1.0,
                                            "first_loss": 2.5, "last_loss": 0.5}))
        return out

    monkeypatch.setattr(recipe, "train", fake_train)
    monkeypatch.setattr(sys, "argv", ["tracetune", "train", str(dataset(tmp_path / "ds")),
                                      "--out", str(tmp_path / "a")])
    try:
        tracetune.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_bar_ends_at_the_total_with_the_loss(tmp_path, monkeypatch, capsys):
    code, out, err = _cli_train(monkeypatch, capsys, tmp_path, fails=False)
    assert code == 0
    assert re.search(r"training steps .* 3/3 loss 0\.500", err), err
    assert out.startswith(f"adapter: {tmp_path / 'a'} (3 rows, 3 steps")


def test_the_cli_clears_its_bar_before_an_error(tmp_path, monkeypatch, capsys):
    code, out, err = _cli_train(monkeypatch, capsys, tmp_path, fails=True)
    assert (code, out) == (1, "")
    assert err.splitlines() == ["error: the disk is full"]
