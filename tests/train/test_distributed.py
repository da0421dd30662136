"""`tracetune train` in two processes (torchrun; DDP over gloo on the CPU, the same code path as
NCCL on two GPUs): the main process alone stages and saves, the adapter it saves is not empty,
and it equals the one-process adapter in effect (the known trap: an adapter saved from a
wrapped or sharded model comes out empty or partial)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import synthetic  # noqa: E402


def _train(tmp_path, out, batch, processes):
    config = tmp_path / f"c{batch}.toml"
    config.write_text(f"[train]\nepochs = 1.0\nbatch_size = {batch}\nwarmup_steps = 0\n"
                      "dropout = 0.0\nmax_seq_len = 128\nlearning_rate = 0.01\n")
    command = ["-m", "tracetune.cli", "train", str(tmp_path / "data"), "--base",
               f"hf:{tmp_path / 'model'},device=cpu", "--out", str(out), "--config", str(config)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                str(processes)] if processes > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(launcher + command, capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_save_the_adapter_one_process_trains(tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    synthetic.make_model_dir("tiny", tmp_path / "model", dtype="float32")
    synthetic.write_dataset(synthetic.make_rows(32, min_tokens=20, max_tokens=60, seed=1),
                            tmp_path / "data")
    one = _train(tmp_path, tmp_path / "one", batch=4, processes=1)
    two = _train(tmp_path, tmp_path / "two", batch=2, processes=2)  # the same 4 rows a step
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".train-")]  # no leftovers
    meta = json.loads((two / "tracetune_adapter.json").read_text())
    assert meta["steps"] == 8
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (one, two))
    assert a.keys() == b.keys() and any(bool(v.any()) for k, v in b.items() if "lora_B" in k)
    losses = [[json.loads(x)["loss"] for x in (d / "loss.jsonl").read_text().splitlines()]
              for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)

    # Equal in effect: adapted minus base logits, as the export parity check measures it.
    ids = torch.tensor([[5 + i for i in range(40)]])
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        effects = []
        for d in (one, two):
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32), d)
            effects.append(model(ids).logits - plain)
    ref, got = effects
    assert float((got * ref).sum() / (ref * ref).sum()) == pytest.approx(1.0, abs=0.01)
    assert float((got - ref).norm() / ref.norm()) < 0.01
