"""Padding-free packing (TrainConfig.packing) on the CPU: rows packed into one sequence give
each row the loss it has alone, and a training with packing gives the losses of one without.
The GPU's varlen kernel is checked the same way in tests/gpu. Also the adapters' input cast
(TrainConfig.cast_adapter_inputs): when it is resolved, that skipping it under autocast gives
the cast's loss and gradients, and that training runs inside the resolved setting."""

import contextlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import synthetic  # noqa: E402
from tracetune.errors import TracetuneError  # noqa: E402
from tracetune.train.config import load_config  # noqa: E402
from tracetune.train.fast import resolve_kernels  # noqa: E402
from tracetune.train.recipe import train  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic.make_model_dir("tiny", tmp_path_factory.mktemp("tiny") / "model",
                                    dtype="float32")


def _per_position_loss(model, batch):
    import torch

    labels = batch["labels"][0]
    # use_cache=False as in training: with a cache, transformers reads restarting positions as
    # a continuation, not as packed rows.
    logits = model(**{k: v for k, v in batch.items() if k != "labels"},
                   use_cache=False).logits[0]
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], reduction="none",
                                             ignore_index=-100)


def test_packed_rows_have_the_loss_they_have_alone(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    rows = synthetic.make_rows(5, min_tokens=10, max_tokens=40, seed=4)
    ids = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                   return_dict=True)["input_ids"] for r in rows]
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    packed_batch = collate([{"input_ids": x} for x in ids])
    assert packed_batch["input_ids"].shape == (1, sum(map(len, ids)))  # no pad token at all
    with torch.no_grad():
        packed = _per_position_loss(model, packed_batch)
        # The control: the same tokens with positions running on across rows, so that rows
        # attend to the rows before them. If this matched too, the test could not fail.
        leaky = _per_position_loss(model, {
            "input_ids": packed_batch["input_ids"], "labels": packed_batch["labels"],
            "position_ids": torch.arange(packed_batch["input_ids"].shape[1])[None]})
        start, leaked = 0, []
        for x in ids:
            alone = _per_position_loss(model, {"input_ids": torch.tensor([x]),
                                               "labels": torch.tensor([x])})
            got = packed[start:start + len(x) - 1]
            assert torch.allclose(got, alone, rtol=1e-4, atol=1e-5), (got - alone).abs().max()
            leaked.append(float((leaky[start:start + len(x) - 1] - alone).abs().max()))
            # The position that predicts the next row's first token is not trained on.
            if start + len(x) - 1 < len(packed):
                assert packed[start + len(x) - 1] == 0
            start += len(x)
    assert leaked[0] < 1e-5 and min(leaked[1:]) > 1e-3  # the first row has nothing before it


def test_training_with_packing_gives_the_losses_of_padded_batches(tiny, tmp_path):
    data = synthetic.write_dataset(synthetic.make_rows(12, min_tokens=20, max_tokens=60, seed=6),
                                   tmp_path / "data")
    base = f"hf:{tiny},device=cpu"
    losses = {}
    for packing in (False, True):
        cfg = load_config(None, epochs=1.0, batch_size=4, warmup_steps=0, dropout=0.0,
                          max_seq_len=128, packing=packing, learning_rate=1e-2)
        out = train(data, base, tmp_path / f"a{packing}", cfg)
        losses[packing] = [json.loads(x)["loss"] for x in
                           (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] != losses[True][0]  # the steps trained: the comparison is not empty


def test_cpu_defaults_are_the_padded_path_and_gpu_settings_are_refused_there():
    cpu = resolve_kernels(load_config(None), cuda=False)
    assert (cpu.packing, cpu.attention, cpu.liger, cpu.compile) == (False, "sdpa", False, False)
    assert resolve_kernels(load_config(None, method="dpo"), cuda=False).packing is False
    for setting, message in [({"attention": "varlen"}, "needs a CUDA device"),
                             ({"liger": True}, "needs a CUDA device"),
                             ({"compile": True}, "needs a CUDA device")]:
        with pytest.raises(TracetuneError, match=message):
            resolve_kernels(load_config(None, **setting), cuda=False)
    with pytest.raises(TracetuneError, match="packing applies to sft only"):
        load_config(None, method="dpo", packing=True)
    with pytest.raises(TracetuneError, match="needs packing"):
        load_config(None, attention="varlen", packing=False)
    with pytest.raises(TracetuneError, match="attention must be one of auto, sdpa, varlen"):
        load_config(None, attention="flash")


def test_adapter_input_cast_is_off_under_cuda_mixed_precision_only():
    assert resolve_kernels(load_config(None), cuda=False).cast_inputs is True
    assert resolve_kernels(load_config(None), cuda=True).cast_inputs is False  # auto: bf16
    assert "no input cast" in resolve_kernels(load_config(None), cuda=True).describe()
    assert resolve_kernels(load_config(None, dtype="float32"), cuda=True).cast_inputs is True
    assert resolve_kernels(load_config(None, cast_adapter_inputs=True),
                           cuda=True).cast_inputs is True
    for dtype, cuda in [("float32", True), ("auto", False)]:
        with pytest.raises(TracetuneError, match="needs CUDA mixed precision"):
            resolve_kernels(load_config(None, dtype=dtype, cast_adapter_inputs=False), cuda)


def test_uncast_adapter_inputs_give_the_cast_result_under_autocast(tiny):
    # The claim cast_adapter_inputs = false rests on: under autocast the adapters' matmuls run
    # in 16 bits whether or not PEFT first copies their inputs to float32, so the loss and the
    # adapters' gradients are the same. Checked with CPU autocast (bf16), dropout off.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tracetune.train.fast import adapter_input_cast

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules="all-linear", init_lora_weights=False))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # PEFT keeps adapters in fp32
    ids = torch.randint(0, base.config.vocab_size, (2, 24))
    seen = []  # the dtype the first adapter's A matrix is given
    first_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    first_a.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))

    def loss_and_grads(cast: bool):
        model.zero_grad()
        seen.clear()
        with adapter_input_cast(model, cast), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lora]

    cast_loss, cast_grads = loss_and_grads(True)
    assert seen == [torch.float32]  # PEFT's copy of the activations
    loss, grads = loss_and_grads(False)
    assert seen == [torch.bfloat16]  # no copy
    assert loss == pytest.approx(cast_loss, rel=1e-3)
    for a, b in zip(grads, cast_grads):
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-4 * b.abs().max().item())
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)  # restored after the block


def test_training_runs_inside_the_kernels_input_cast_setting(tiny, tmp_path, monkeypatch):
    # The wiring: recipe.train trains inside adapter_input_cast with the resolved setting, the
    # LoRA layers uncast during the steps and cast again afterwards. Forced on the CPU (float32,
    # where skipping the cast changes nothing) since the setting resolves off only on CUDA.
    import dataclasses

    import tracetune.train.recipe as recipe
    from tracetune.train import fast

    resolve = recipe.resolve_kernels
    monkeypatch.setattr(recipe, "resolve_kernels", lambda config, cuda: dataclasses.replace(
        resolve(config, cuda), cast_inputs=False))
    seen = {}

    @contextlib.contextmanager
    def recording(model, enabled):
        with fast.adapter_input_cast(model, enabled):
            layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
            seen["inside"] = (enabled, len(layers), {m.cast_input_dtype_enabled for m in layers})
            yield
        seen["after"] = {m.cast_input_dtype_enabled for m in layers}

    monkeypatch.setattr(recipe, "adapter_input_cast", recording)
    data = synthetic.write_dataset(synthetic.make_rows(8, min_tokens=20, max_tokens=40, seed=7),
                                   tmp_path / "data")
    cfg = load_config(None, epochs=1.0, batch_size=4, warmup_steps=0, max_seq_len=128)
    out = train(data, f"hf:{tiny},device=cpu", tmp_path / "adapter", cfg)
    assert (out / "adapter_model.safetensors").is_file()
    enabled, n_layers, inside = seen["inside"]
    assert enabled is False and n_layers > 0 and inside == {False}
    assert seen["after"] == {True}
