"""What was checked on the GPU: a bf16 training step through `tracetune train` (its CUDA
defaults: packing, varlen attention, Liger when installed), a QLoRA step, packed rows that do not
see each other under the varlen kernel, and batched sampled generation with per-row seeds."""

import json
import subprocess
import sys

import pytest

from tracetune.train.config import load_config
from tracetune.train.recipe import train


def _lora_b_nonzero(adapter) -> bool:
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return any(bool(v.any()) for k, v in weights.items() if "lora_B" in k)


def test_bf16_training_steps_through_the_command_line(small_model, dataset, tmp_path):
    # The base spec's device and dtype reach training (they were once refused).
    out = tmp_path / "adapter"
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 1.0\nbatch_size = 16\nwarmup_steps = 0\n"
                      "learning_rate = 1e-3\n")
    proc = subprocess.run([sys.executable, "-m", "tracetune.cli", "train", str(dataset),
                           "--base", f"hf:{small_model},device=cuda,dtype=bfloat16",
                           "--out", str(out), "--config", str(config)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    assert meta["steps"] == 4 and meta["config"]["device"] == "cuda"
    assert meta["kernels"].startswith("packed, varlen attention")
    assert meta["kernels"].endswith("no input cast")  # cast_adapter_inputs: off under bf16
    losses = [json.loads(x)["loss"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses) and losses[-1] < losses[0]
    assert _lora_b_nonzero(out)


def test_qlora_step(small_model, dataset, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = load_config(None, qlora=True, epochs=1.0, batch_size=16, warmup_steps=0)
    out = train(dataset, f"hf:{small_model},device=cuda", tmp_path / "q", cfg)
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    assert meta["steps"] == 4 and meta["config"]["qlora"] is True
    assert _lora_b_nonzero(out)


def test_packed_rows_do_not_see_each_other_under_varlen(small_model):
    """The per-row loss of rows packed into one sequence (TRL's padding-free collator, the
    varlen kernel) equals each row's loss alone (SDPA), within bf16 rounding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    import synthetic
    from tracetune.train.fast import register_varlen_attention

    tok = AutoTokenizer.from_pretrained(small_model)
    rows = synthetic.make_rows(6, min_tokens=30, max_tokens=120, seed=5)
    ids = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                   return_dict=True)["input_ids"] for r in rows]
    torch.manual_seed(0)
    alone_model = AutoModelForCausalLM.from_pretrained(small_model, dtype=torch.bfloat16,
                                                       attn_implementation="sdpa").cuda()
    packed_model = AutoModelForCausalLM.from_pretrained(
        small_model, dtype=torch.bfloat16,
        attn_implementation=register_varlen_attention()).cuda()

    def row_losses(logits, labels):  # (tokens, vocab), (tokens,) -> per-position loss
        return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:],
                                                 reduction="none", ignore_index=-100)

    with torch.no_grad():
        alone = [row_losses(alone_model(torch.tensor([x]).cuda(), use_cache=False).logits[0],
                            torch.tensor(x).cuda())[:] for x in ids]
        batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id,
                                                padding_free=True)(
            [{"input_ids": x} for x in ids])
        batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = packed_model(**batch, use_cache=False).logits[0]
        packed = row_losses(logits, labels[0])
    start = 0
    for x, ref in zip(ids, alone):
        got = packed[start:start + len(x) - 1]
        assert torch.allclose(got, ref, rtol=0.05, atol=0.05), (got - ref).abs().max()
        start += len(x)


def test_batched_sampled_generation_keeps_each_rows_seed(small_model):
    from concurrent.futures import ThreadPoolExecutor

    from tracetune.models import load_model
    from tracetune.types import GenerationRequest, SamplingParams, chat

    # float32: a batch's matrix products round differently from one row's; in float32 that
    # cannot move a sampled token, in bf16 it occasionally can.
    model = load_model(f"hf:{small_model},device=cuda,dtype=float32")
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24)
    reqs = [GenerationRequest(chat(" ".join(f"w{(i * 7 + j) % 1000}" for j in range(5 + i))),
                              params, seed=100 + i) for i in range(12)]
    assert model.batch_size(reqs) > 8  # sized from free memory, not a fixed 8
    alone = [model._run([r])[0].text for r in reqs]
    together = [c.text for c in model.generate_many(reqs)]
    assert together == alone
    with ThreadPoolExecutor(12) as pool:  # concurrent single calls are batched
        threaded = list(pool.map(model.generate, reqs))
    assert [c.text for c in threaded] == alone
    other = model._run([GenerationRequest(reqs[0].messages, params, seed=999)])[0].text
    assert other != alone[0]
    word = alone[0].split()[2]
    stop = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, stop=(word,))
    cut = model.generate(GenerationRequest(reqs[0].messages, stop, seed=100))
    assert cut.text == alone[0][:alone[0].index(word)]
    model.close()
