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
    # One step each: without warm-up, so that it moves the weights (at lr 0 both adapters
    # would be the zero-B initialization, equal whatever the seed does).
    cfg = load_config(None, r=4, alpha=8, epochs=1.0, target_modules=["q_proj"], seed=5,
                      warmup_steps=0)
    a = load_file(str(train(data, "embedded", tmp_path / "a", cfg) / "adapter_model.safetensors"))
    b = load_file(str(train(data, "embedded", tmp_path / "b", cfg) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any(abs(v).max() > 0 for k, v in a.items() if "lora_B" in k)
    dpo = train(data, "embedded", tmp_path / "dpo", load_config(
        None, method="dpo", r=4, alpha=8, epochs=1.0, target_modules=["q_proj"], warmup_steps=0))
    meta = json.loads((dpo / "tracetune_adapter.json").read_text())
    assert meta["config"]["method"] == "dpo" and meta["steps"] == 1


# --- the base spec's options (device, dtype, ...) reach training --------------------------------

@pytest.mark.parametrize("spec, config, device, dtype", [
    ("hf:/ckpt,device=cuda,dtype=bfloat16", {}, "cuda", "bfloat16"),
    ("hf:/ckpt,device=cpu", {"dtype": "float32"}, "cpu", "float32"),
    ("hf:/ckpt,device=cuda", {"device": "cuda"}, "cuda", "auto"),  # agreeing is fine
    ("hf:/ckpt,device=auto,dtype=auto", {"device": "cpu", "dtype": "float16"}, "cpu", "float16"),
    ("Qwen/X,dtype=float16", {}, "auto", "float16"),
    ("embedded,n_ctx=2048,n_threads=2", {"device": "cpu"}, "cpu", "auto"),  # serving options
    ("hf:/ckpt,batch_size=16,trust_remote_code=true", {}, "auto", "auto"),
])
def test_spec_options_set_the_training_device_and_dtype(spec, config, device, dtype):
    from tracetune.train.recipe import base_config

    merged = base_config(spec, load_config(None, **config))
    assert (merged.device, merged.dtype) == (device, dtype)
    assert merged.r == load_config(None).r  # nothing else changes


@pytest.mark.parametrize("spec, config, message", [
    ("hf:/ckpt,device=cuda", {"device": "cpu"},
     r"base model 'hf:/ckpt,device=cuda' sets device=cuda but the training config sets "
     r"device = 'cpu'; keep one of them"),
    ("hf:/ckpt,dtype=bfloat16", {"dtype": "float32"}, "sets dtype=bfloat16 but the training "
                                                      "config sets dtype = 'float32'"),
    ("hf:/ckpt,device=cuda:1", {}, r"base model 'hf:/ckpt,device=cuda:1': device must be one "
                                   r"of auto, cpu, cuda, not 'cuda:1' .*CUDA_VISIBLE_DEVICES"),
    ("hf:/ckpt,adapter=/out/a", {}, r"adapter= is not trained on .*init_adapter = '/out/a'"),
    ("embedded,lora=/x/a.gguf", {}, r"lora= is not trained on .*GGUF LoRA"),
    ("gguf:/m/x.gguf,lora=/x/a.gguf", {}, "lora= is not trained on"),
    ("openai:m@http://h/v1", {}, "names no weights or tokenizer to load"),
    ("oracle", {}, "names no weights or tokenizer to load"),
    ("hf:/ckpt,dtype=fp8", {}, "dtype='fp8' is not one of"),
])
def test_spec_options_training_cannot_honour_are_refused_in_one_line(spec, config, message):
    from tracetune.train.recipe import base_config

    with pytest.raises(TracetuneError, match=message) as info:
        base_config(spec, load_config(None, **config))
    assert "\n" not in str(info.value)


def test_train_refuses_a_bad_base_before_any_work(tmp_path):
    with pytest.raises(TracetuneError, match="sets device=cuda but"):
        train(tmp_path / "missing", "hf:/ckpt,device=cuda", tmp_path / "a",
              load_config(None, device="cpu"))
    assert not (tmp_path / "a").exists()


def test_config_device_and_dtype_are_checked(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[train]\ndtype = 'half'\n")
    with pytest.raises(TracetuneError, match="dtype must be one of auto, float32"):
        load_config(bad)
    bad.write_text("[train]\ndevice = 'gpu'\n")
    with pytest.raises(TracetuneError, match="device must be one of auto, cpu, cuda"):
        load_config(bad)


@pytest.mark.slow
def test_trains_on_an_hf_directory_spec_with_options(tmp_path):
    # `--base hf:DIR,device=cpu,dtype=float32` used to fail with "options are not accepted".
    from tracetune.models.hf import resolve_model_source

    data = make_dataset(tmp_path / "ds", n=2)
    base = f"hf:{resolve_model_source('embedded')},device=cpu,dtype=bfloat16,batch_size=4"
    cfg = load_config(None, r=2, alpha=4, epochs=1.0, batch_size=2, target_modules=["q_proj"],
                      warmup_steps=0)
    out = train(data, base, tmp_path / "adapter", cfg)
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    assert meta["base"] == base and meta["steps"] == 1
    assert (meta["config"]["device"], meta["config"]["dtype"]) == ("cpu", "bfloat16")
    assert meta["base_source"] == resolve_model_source("embedded")
