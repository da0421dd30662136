"""Padding-free packing (TrainConfig.packing) on the CPU: rows packed into one sequence give
each row the loss it has alone, and a training with packing gives the losses of one without.
The GPU's varlen kernel is checked the same way in tests/gpu."""

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
