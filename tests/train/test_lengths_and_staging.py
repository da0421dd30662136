"""Rows longer than max_seq_len are dropped and counted, never cut by the trainer; a failed train
writes nothing; an experiment whose mining keeps rows training would drop is refused.

Most tests stop the trainer at `train()` (replaced by a function that records what the trainer
was given), so they check the very rows TRL would train on without paying for optimizer steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.train.config import load_config
from tracetune.train.recipe import META, train

TINY_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiment" / "tiny.toml"
CLI = [sys.executable, "-m", "tracetune.cli"]
LONG = "zebra quartz " * 60  # a completion of a few hundred tokens


def sft_row(i: int, answer: str | None = None) -> dict:
    return {"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
            "completion": [{"role": "assistant", "content": answer or f"zebra-{i} quartz"}]}


def dpo_row(i: int, chosen: str | None = None, rejected: str | None = None) -> dict:
    return {"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
            "chosen": [{"role": "assistant", "content": chosen or f"zebra-{i}"}],
            "rejected": [{"role": "assistant", "content": rejected or "I don't know."}]}


def write_dataset(path: Path, sft: list[dict], dpo: list[dict] = ()) -> Path:
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    for name, rows in (("sft.prompt_completion", sft), ("dpo.trl", dpo)):
        if rows:
            (path / "formats" / f"{name}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
    return path


def lengths(rows: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    from tracetune.models.resolve import hf_source
    from tracetune.train.lengths import row_lengths

    return row_lengths(AutoTokenizer.from_pretrained(hf_source("embedded")), rows)


def small(**overrides):
    # No warm-up: with it, a one- or two-step training runs at learning rate 0 or barely more
    # (refused or warned about, tests/train/test_bad_input.py).
    return load_config(None, **{"r": 2, "alpha": 4, "epochs": 1.0, "batch_size": 2,
                                "warmup_steps": 0, "target_modules": ["q_proj"], **overrides})


@pytest.fixture
def stop_training(monkeypatch):
    """Replace the trainers' train() by a recorder: it keeps the trainer (its train_dataset is
    what TRL would train on), sets one LoRA B weight as a step would (unless not `updates`) and
    returns at once, or raises `raises` after writing a file into the checkpoint directory (a
    run that fails mid-way)."""
    import trl
    from transformers.trainer_utils import TrainOutput

    seen = {}

    def install(raises: BaseException | None = None, updates: bool = True):
        def fake_train(self, resume_from_checkpoint=None, **kwargs):
            seen.update(trainer=self, resume_from_checkpoint=resume_from_checkpoint)
            if raises is not None:
                os.makedirs(self.args.output_dir, exist_ok=True)
                Path(self.args.output_dir, "partial.bin").write_bytes(b"x" * 100)
                raise raises
            if updates:
                lora_b = next(p for n, p in self.model.named_parameters() if "lora_B" in n)
                lora_b.data[0, 0] = 1e-3
            return TrainOutput(global_step=0, training_loss=0.0, metrics={})

        monkeypatch.setattr(trl.SFTTrainer, "train", fake_train)
        monkeypatch.setattr(trl.DPOTrainer, "train", fake_train)
        return seen

    return install


def test_a_row_over_the_limit_is_dropped_counted_and_never_reaches_the_trainer(
        tmp_path, stop_training):
    rows = [sft_row(i) for i in range(4)] + [sft_row(9, LONG)]
    n = lengths(rows)
    limit = max(n[:4])  # the longest short row fits exactly; the long one does not
    assert n[4] > limit
    data = write_dataset(tmp_path / "ds", rows)
    seen, said = stop_training(), []
    out = train(data, "embedded", tmp_path / "adapter", small(max_seq_len=limit),
                log=said.append)

    assert said == [f"dropped 1 of 5 rows longer than max_seq_len {limit} tokens"]
    trainer = seen["trainer"]
    assert trainer.args.max_length is None  # the trainer itself cuts nothing
    ds = trainer.train_dataset
    tok = trainer.processing_class
    assert len(ds) == 4
    for i, (ids, labels) in enumerate(zip(ds["input_ids"], ds["labels"])):
        assert len(ids) == n[i] <= limit  # the trainer's own tokens, as measured
        text = tok.decode(ids)
        assert text.rstrip().endswith(f"zebra-{i} quartz<|im_end|>")  # whole answer
        assert "zebra quartz" not in text
        assert tok.decode([t for t in labels if t != -100]).startswith(f"zebra-{i} quartz")
    meta = json.loads((out / META).read_text())
    assert (meta["rows"], meta["rows_too_long"], meta["longest_row_tokens"]) == (4, 1, limit)


def test_a_dpo_pair_is_as_long_as_its_longer_side(tmp_path, stop_training):
    pairs = [dpo_row(0), dpo_row(1, chosen=LONG), dpo_row(2, rejected=LONG), dpo_row(3)]
    n = lengths(pairs)
    limit = max(n[0], n[3])
    data = write_dataset(tmp_path / "ds", [sft_row(0)], pairs)
    seen, said = stop_training(), []
    out = train(data, "embedded", tmp_path / "dpo", small(method="dpo", max_seq_len=limit),
                log=said.append)

    assert said == [f"dropped 2 of 4 rows longer than max_seq_len {limit} tokens"]
    ds = seen["trainer"].train_dataset
    assert seen["trainer"].args.max_length is None
    assert len(ds) == 2
    for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]):
        assert len(p) + max(len(c), len(r)) <= limit
    assert json.loads((out / META).read_text())["rows_too_long"] == 2


def test_no_row_within_the_limit_is_one_line_and_writes_nothing(tmp_path, stop_training):
    rows = [sft_row(i) for i in range(3)] + [sft_row(9, LONG)]
    n = lengths(rows)
    data = write_dataset(tmp_path / "ds", rows)
    seen = stop_training()
    out = tmp_path / "new" / "adapter"
    with pytest.raises(TracetuneError) as info:
        train(data, "embedded", out, small(max_seq_len=min(n) - 1))
    message = str(info.value)
    assert message == (f"no training row fits max_seq_len {min(n) - 1} tokens: all 4 rows are "
                       f"longer ({min(n)} to {max(n)} tokens with the chat template); raise "
                       "max_seq_len or mine shorter rows")
    assert not seen  # no trainer was built
    assert not (tmp_path / "new").exists()


def test_the_cli_says_it_in_one_line_and_exits_1(tmp_path):
    data = write_dataset(tmp_path / "ds", [sft_row(i) for i in range(3)])
    cfg = tmp_path / "train.toml"
    cfg.write_text("[train]\nmax_seq_len = 16\nepochs = 1\n")
    r = subprocess.run(CLI + ["train", str(data), "--config", str(cfg), "--out",
                              str(tmp_path / "adapter")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: no training row fits max_seq_len 16 tokens: all 3 rows are longer (")
    assert "num_samples" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("failure, out_existed", [(RuntimeError("disk full"), False),
                                                  (KeyboardInterrupt(), True)])
def test_a_failed_train_leaves_nothing(tmp_path, stop_training, failure, out_existed):
    data = write_dataset(tmp_path / "ds", [sft_row(i) for i in range(2)])
    parent = tmp_path / "runs"
    out = parent / "adapter" if out_existed else parent / "new" / "adapter"
    if out_existed:
        out.mkdir(parents=True)  # an empty --out is the user's: it stays, empty
    else:
        parent.mkdir()
    seen = stop_training(raises=failure)
    with pytest.raises(type(failure)):
        train(data, "embedded", out, small())
    assert not Path(seen["trainer"].args.output_dir).exists()
    assert [p.name for p in parent.iterdir()] == (["adapter"] if out_existed else [])
    if out_existed:
        assert list(out.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_resume_continues_a_killed_run_of_the_same_training_only(tmp_path, monkeypatch):
    import shutil

    import trl
    from transformers import TrainerCallback

    data = write_dataset(tmp_path / "ds", [sft_row(i) for i in range(2)])
    cfg = small(batch_size=1, epochs=2.0, save_steps=2, warmup_steps=0)  # 4 steps
    out = tmp_path / "adapter"
    real_train = trl.SFTTrainer.train
    left = tmp_path / f".train-{_dead_pid()}-abc123"

    class KilledAfterLoggingStep3(TrainerCallback):
        # What a run killed during step 4 leaves: checkpoint-2, and the loss of step 3 logged.
        def on_log(self, args, state, control, **kwargs):
            if state.global_step == 3:
                shutil.copytree(Path(args.output_dir).parent, left)
                raise RuntimeError("killed")

    def train_until_killed(self, **kwargs):
        self.add_callback(KilledAfterLoggingStep3())
        return real_train(self, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "train", train_until_killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(data, "embedded", out, cfg)
    assert not out.exists()
    assert [p.name for p in (left / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    first = [json.loads(x) for x in (left / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in first] == [1, 2, 3]

    monkeypatch.setattr(trl.SFTTrainer, "train", real_train)
    train(data, "embedded", out, cfg, resume=True)
    losses = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in losses] == [1, 2, 3, 4]  # from checkpoint-2: steps 3, 4 again
    assert losses[:2] == first[:2]
    assert json.loads((out / META).read_text())["steps"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ds"]


def test_resume_does_not_adopt_another_trainings_leftover(tmp_path, stop_training):
    data = write_dataset(tmp_path / "ds", [sft_row(i) for i in range(2)])
    left = tmp_path / f".train-{_dead_pid()}-abc123"
    (left / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (left / ".tracetune-train.json").write_text(json.dumps({"config": "another"}))
    seen = stop_training()
    train(data, "embedded", tmp_path / "adapter", small(), resume=True)
    assert seen["resume_from_checkpoint"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ds"]  # leftover removed


# --- an experiment's mining and training agree on the longest row --------------------------------

def _experiment(tmp_path, mine: int | None, train_len: int | None) -> Path:
    text = TINY_EXPERIMENT.read_text()
    assert "max_seq_len = 512\n" in text and "[train]\n" in text
    text = text.replace("max_seq_len = 512\n", "" if mine is None else f"max_seq_len = {mine}\n")
    if train_len is not None:
        text = text.replace("[train]\n", f"[train]\nmax_seq_len = {train_len}\n")
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("mine, train_len, message", [
    (512, 128, r"exp.toml \[mine\] max_seq_len = 512 is greater than \[train\] max_seq_len = "
               r"128: training would drop the mined rows between the two"),
    (2048, None, r"\[mine\] max_seq_len = 2048 is greater than \[train\] max_seq_len = 1024 "
                 r"\(the default\)"),
    (None, 512, r"\[mine\] max_seq_len = 1024 \(the default\) is greater than \[train\] "
                r"max_seq_len = 512"),
])
def test_an_experiment_mining_longer_rows_than_training_takes_is_refused(
        tmp_path, mine, train_len, message):
    from tracetune.experiment.spec import load_experiment

    with pytest.raises(TracetuneError, match=message) as info:
        load_experiment(_experiment(tmp_path, mine, train_len))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mine, train_len", [(512, 512), (128, 512), (512, None)])
def test_an_experiment_mining_at_most_what_training_takes_is_accepted(tmp_path, mine, train_len):
    from tracetune.experiment.spec import load_experiment

    exp = load_experiment(_experiment(tmp_path, mine, train_len))
    assert exp.mine.max_seq_len <= exp.train_config.max_seq_len


def test_check_experiment_refuses_it_in_one_line(tmp_path):
    r = subprocess.run(CLI + ["check-experiment", str(_experiment(tmp_path, 512, 128))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'exp.toml'} [mine] max_seq_len = 512 is greater than [train] "
        "max_seq_len = 128: training would drop the mined rows between the two; make [mine] "
        "max_seq_len at most [train]'s"]
