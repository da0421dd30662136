"""Training for real on the embedded model (CPU): a few steps on a tiny memorization set."""

import json

import pytest

from tracetune.errors import TracetuneError
from tracetune.train.config import load_config
from tracetune.train.recipe import train


def make_dataset(path, n=4):
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    rows = [{"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
             "completion": [{"role": "assistant", "content": f"zebra-{i} quartz"}]}
            for i in range(n)]
    (path / "formats" / "sft.prompt_completion.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_config_errors(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[train]\nr = 8\nlearning_rte = 1e-4\n")
    with pytest.raises(TracetuneError, match="unknown key.*learning_rte"):
        load_config(bad)
    bad.write_text("[train]\nr = 'eight'\n")
    with pytest.raises(TracetuneError, match="r must be an integer"):
        load_config(bad)
    bad.write_text("[train]\ntarget_modules = 'q_proj'\n")
    with pytest.raises(TracetuneError, match="list of strings"):
        load_config(bad)
    good = tmp_path / "g.toml"
    good.write_text("[train]\nr = 8\nepochs = 2\ntarget_modules = ['q_proj']\n")
    cfg = load_config(good, seed=3)
    assert (cfg.r, cfg.epochs, cfg.target_modules, cfg.seed) == (8, 2.0, ("q_proj",), 3)


def test_steps_change_the_adapter_and_the_loss_falls(tmp_path):
    from safetensors.numpy import load_file

    data = make_dataset(tmp_path / "ds")
    cfg = load_config(None, r=4, alpha=8, learning_rate=5e-3, epochs=10.0, batch_size=4,
                      warmup_steps=0, target_modules=["q_proj", "v_proj"], dropout=0.0)
    out = train(data, "embedded", tmp_path / "adapter", cfg)
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(abs(v).max() > 0 for v in lora_b)  # B starts at zero
    losses = [json.loads(x)["loss"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    assert meta["steps"] == 10 and meta["base"] == "embedded"
    assert (out / "loss.png").is_file() and not (out / "checkpoints").exists()


def test_refuses_bad_inputs(tmp_path):
    cfg = load_config(None)
    with pytest.raises(TracetuneError, match="not a tracetune dataset"):
        train(tmp_path, "embedded", tmp_path / "a", cfg)
    data = make_dataset(tmp_path / "ds")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(TracetuneError, match="not empty"):
        train(data, "embedded", tmp_path / "busy", cfg)
    with pytest.raises(TracetuneError, match="no dpo rows"):
        train(data, "embedded", tmp_path / "b", load_config(None, method="dpo"))


def test_same_seed_same_adapter_and_dpo_runs(tmp_path):
    from safetensors.numpy import load_file

    data = make_dataset(tmp_path / "ds", n=4)
    pairs = [{"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
              "chosen": [{"role": "assistant", "content": f"zebra-{i}"}],
              "rejected": [{"role": "assistant", "content": "I don't know."}]} for i in range(4)]
    (data / "formats" / "dpo.trl.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = load_config(None, r=4, alpha=8, epochs=1.0, target_modules=["q_proj"], seed=5)
    a = load_file(str(train(data, "embedded", tmp_path / "a", cfg) / "adapter_model.safetensors"))
    b = load_file(str(train(data, "embedded", tmp_path / "b", cfg) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    dpo = train(data, "embedded", tmp_path / "dpo", load_config(
        None, method="dpo", r=4, alpha=8, epochs=1.0, target_modules=["q_proj"]))
    meta = json.loads((dpo / "tracetune_adapter.json").read_text())
    assert meta["config"]["method"] == "dpo" and meta["steps"] == 1
