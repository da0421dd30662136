"""Training throughput: a plain PEFT loop against `tracetune train`'s own code path, same data,
same model shape, same steps, in one run.

    python benchmarks/train_bench.py --shape qwen2.5-0.5b --device cuda        # one GPU
    python benchmarks/train_bench.py --shape smollm2-135m --device cuda
    python benchmarks/train_bench.py --shape qwen2.5-0.5b --gpus 2             # 1 -> 2 GPUs
    python benchmarks/train_bench.py --shape tiny --device cpu --rows 24 --max-tokens 60  # smoke

The model is the shape's config with random weights (benchmarks/synthetic.py: throughput depends
on the shape, not on the weights); the rows are synthetic prompt/completion chats of 99-499
tokens (loss on the completion only) in which a LoRA adapter learns a next-word rule, so losses
fall. Every side trains LoRA r=16, alpha 32, dropout 0.05 on all linear layers, lr 2e-4 (3 warm-up
steps, then linear decay), batch 16, one epoch, in bf16 on CUDA (fp32 on the CPU), each in its own
process:

  plain         a plain PEFT loop: batches padded to their longest row, model(...).loss
                (transformers' cross-entropy over the full logits), AdamW, gradient clipping 1.0
  tt-padded     `tracetune train` (tracetune.train.recipe.train, the command's code path) with
                packing, varlen attention and Liger off: what it did before the GPU path
  tt-packed     + padding-free packing (PyTorch SDPA over the block-diagonal mask)
  tt-varlen     + FlashAttention over the packed rows (torch.nn.attention.varlen)
  tt-liger      + Liger's RMSNorm, RoPE and SwiGLU kernels (PEFT still casting each adapter's
                input to float32, as every side above does)
  tt-default    `tracetune train` with its defaults (on CUDA: every setting above that the machine
                has, and no float32 cast of the adapters' inputs: cast_adapter_inputs), checkpointing
                every save_steps = 50 steps as it does by default; every other side saves no
                checkpoint
  tt-nodrop     the defaults with LoRA dropout 0 (PEFT then skips the dropout kernels; a change
                of the recipe, not only of its speed: its loss is compared like every other)
  tt-batch64    the defaults with batch_size 64 (a quarter of the optimizer steps)
  tt-compile    the defaults with compile = true
  tt-qlora      the defaults with qlora = true (the base in 4-bit NF4, bitsandbytes); its adapter is
                then exported (`tracetune export --to merged-hf`), whose parity check runs against
                the unquantized base

Printed per side: real (non-pad) tokens/s over the steps after the first eighth (compilation and
warm-up excluded), its ratio to `plain`, MFU, peak GPU memory, the slowest step, the mean training
loss of the last 10 steps and the final loss: the mean completion-token loss of the trained adapter
on 128 held-out rows, computed the same way for every side. MFU = 4 * N * tokens/s / 989e12, N
the base model's parameters (embeddings included) and 989 TFLOP/s the dense bf16 peak of an H100 or
H200 SXM: the 4 * N approximation counts the forward (2N per token) and the backward through the
frozen base to the adapters (2N; the frozen weights get no gradient), and leaves out attention's
own FLOPs and the adapters' (r=16: under 2% of N).

With --profile, PyTorch's profiler runs over 3 steps of each tracetune side (after the first
eighth) and a line per side gives their wall time, the time the GPU's kernels ran (on the CPU:
the operators' own time) and its split: matmul, copies (dtype casts), dropout, mul/add
(elementwise, e.g. LoRA's scaling and its sum with the base output), attention, other. The
profiled steps stay inside the measured ones, so take throughput from a run without it.

With --gpus 2: `tracetune train` through `accelerate launch` (DDP) on two GPUs against one GPU,
the whole command line each time: 1 GPU at batch 16; 2 GPUs at 8 per GPU (the same optimizer
steps: its adapter must equal the one-GPU adapter in effect); 2 GPUs at 16 per GPU (twice the
rows per step: the scaling figure); and FSDP on 2 GPUs at 8 per GPU (the adapter it saves must
not be empty). tokens/s there is the whole training's (meta's train_seconds), the same for all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402

PEAK_FLOPS = 989e12
"""Dense bf16 peak of one H100 / H200 SXM (NVIDIA's datasheet), FLOP/s."""
LORA = dict(r=16, alpha=32, dropout=0.05, learning_rate=2e-4, warmup_steps=3, epochs=1.0)
GPU_SIDES = ("plain", "tt-padded", "tt-packed", "tt-varlen", "tt-liger", "tt-default",
             "tt-nodrop", "tt-batch64", "tt-compile", "tt-qlora")
CPU_SIDES = ("plain", "tt-default")
SIDE_CONFIG = {  # TrainConfig overrides of each tracetune side
    "tt-padded": dict(packing=False, attention="sdpa", liger=False, cast_adapter_inputs=True),
    "tt-packed": dict(packing=True, attention="sdpa", liger=False, cast_adapter_inputs=True),
    "tt-varlen": dict(packing=True, attention="varlen", liger=False, cast_adapter_inputs=True),
    "tt-liger": dict(packing=True, attention="varlen", liger=True, cast_adapter_inputs=True),
    "tt-default": dict(),
    "tt-nodrop": dict(dropout=0.0),
    "tt-batch64": dict(batch_size=64),
    "tt-compile": dict(compile=True),
    "tt-qlora": dict(qlora=True),
}
EVAL_ROWS = 128


# --- the two sides ------------------------------------------------------------------------------

def tokenize(tok, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row as TRL's SFTTrainer builds them for prompt/completion chats:
    the whole conversation through the chat template, labels -100 on the prompt (its rendering
    with the generation prompt)."""
    out = []
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                      return_dict=True)["input_ids"]
        out.append((ids, [-100] * len(prompt) + ids[len(prompt):]))
    return out


def padded(batch, pad_id: int, device: str) -> dict:
    """Rows padded on the right to the batch's longest: input_ids, attention_mask, labels."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def eval_loss(model, tok, rows, device: str, batch_size: int = 16) -> float:
    """Mean completion-token loss of `model` on `rows` (padded batches, no gradient)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    data = tokenize(tok, rows)
    with torch.no_grad(), autocast(device):
        for start in range(0, len(data), batch_size):
            batch = padded(data[start:start + batch_size], tok.pad_token_id, device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def autocast(device: str):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else \
        contextlib.nullcontext()


def plain_side(args, work: Path) -> dict:
    """A plain PEFT training loop (what a first GPU script usually is)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from tracetune.train.config import ALL_LINEAR

    device = args.device
    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(work / "model")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(work / "model", dtype=dtype).to(device)
    n_params = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                            lora_dropout=LORA["dropout"],
                                            target_modules=list(ALL_LINEAR),
                                            task_type="CAUSAL_LM"))
    data = tokenize(tok, json.loads((work / "rows.json").read_text()))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(42)).tolist()
    batches = [[data[i] for i in order[s:s + args.batch]] for s in range(0, len(order),
                                                                         args.batch)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LORA["learning_rate"], fused=device == "cuda")
    sched = get_linear_schedule_with_warmup(opt, LORA["warmup_steps"], len(batches))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    stamps, tokens, losses = [time.perf_counter()], [0], []
    for b in batches:
        batch = padded(b, tok.pad_token_id, device)
        with autocast(device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))  # one sync a step, as logging every step does
        stamps.append(time.perf_counter())
        tokens.append(tokens[-1] + int(batch["attention_mask"].sum()))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    held_out = json.loads((work / "eval_rows.json").read_text())
    return dict(stamps=stamps, tokens=tokens, losses=losses, n_params=n_params, peak_gib=peak,
                final_loss=eval_loss(model, tok, held_out, device), kernels="padded, sdpa")


PROFILE_GROUPS = {  # operator -> group of the --profile breakdown
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_mm"),
    "copies": ("aten::copy_",),
    "dropout": ("aten::native_dropout", "aten::native_dropout_backward",
                "aten::bernoulli_"),  # the last: the CPU's dropout
    "mul/add": ("aten::mul", "aten::add", "aten::add_"),
}
PROFILE_STEPS = 3


def step_profiler(device: str):
    """A TrainerCallback that runs PyTorch's profiler over PROFILE_STEPS steps after the first
    eighth (the steps the throughput is measured on) and keeps, in its `result`, the wall time,
    the time the GPU's kernels ran (CUDA; on the CPU the operators' own CPU time) and its share
    by PROFILE_GROUPS (attention: operators whose name holds "attention"; other: the rest)."""
    import torch
    from transformers import TrainerCallback

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.prof, self.first, self.result = None, None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.first = max(1, state.max_steps // 8)
            self.last = min(self.first + PROFILE_STEPS, state.max_steps)

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == self.first and self.prof is None and self.last > self.first:
                sync()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is None or state.global_step != self.last:
                return
            sync()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            self.prof = None
            if device == "cuda":  # kernels are the device events; operators own their kernels
                busy = sum(e.self_device_time_total for e in events
                           if e.device_type == torch.autograd.DeviceType.CUDA)
                own = {e.key: e.self_device_time_total for e in events
                       if e.device_type != torch.autograd.DeviceType.CUDA}
            else:
                own = {e.key: e.self_cpu_time_total for e in events}
                busy = sum(own.values())
            groups = {g: sum(own.get(k, 0) for k in keys) for g, keys in PROFILE_GROUPS.items()}
            groups["attention"] = sum(v for k, v in own.items() if "attention" in k)
            groups["other"] = max(busy - sum(groups.values()), 0)
            self.result = dict(steps=self.last - self.first, first_step=self.first + 1,
                               wall_s=wall, busy_s=busy / 1e6,
                               shares={g: v / busy if busy else 0.0 for g, v in groups.items()})

    return StepProfiler()


def profile_line(side: str, prof: dict, device: str) -> str:
    """One line of --profile's breakdown for a side."""
    what = "GPU kernels" if device == "cuda" else "CPU operator time"
    shares = ", ".join(f"{g} {100 * v:.0f}%" for g, v in prof["shares"].items())
    return (f"{side} profile, {prof['steps']} steps from step {prof['first_step']}: wall "
            f"{prof['wall_s']:.2f} s, {what} {prof['busy_s']:.2f} s; {shares}")


def tracetune_side(args, work: Path, side: str) -> dict:
    """`tracetune train`'s code path (the function the command calls), timed step by step."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracetune.train.config import load_config
    from tracetune.train.recipe import train

    overrides = dict(LORA, batch_size=args.batch, max_seq_len=args.max_seq_len, seed=42)
    if side != "tt-default":
        overrides["save_steps"] = 10**6  # no checkpoint inside the measured steps
    overrides.update(SIDE_CONFIG[side])
    config = load_config(None, **overrides)
    base_spec = f"hf:{work / 'model'},device={args.device}," + \
        f"dtype={'bfloat16' if args.device == 'cuda' else 'float32'}"
    out = work / f"adapter-{side}"
    stamps = {}

    def on_progress(step: int, total: int, loss) -> None:
        stamps.setdefault(step, time.perf_counter())

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profiler = step_profiler(args.device) if args.profile else None
    train(work / "data", base_spec, out, config, on_progress=on_progress,
          callbacks=[profiler] if profiler else None)
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    log = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    steps = sorted(stamps)
    by_step = {x["step"]: x for x in log}
    tokens = [0] + [int(by_step[s]["num_tokens"]) for s in steps[1:]]
    tok = AutoTokenizer.from_pretrained(work / "model")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(work / "model", dtype=dtype).to(args.device)
    n_params = sum(p.numel() for p in base.parameters())
    model = PeftModel.from_pretrained(base, out)
    held_out = json.loads((work / "eval_rows.json").read_text())
    result = dict(stamps=[stamps[s] for s in steps], tokens=tokens,
                  losses=[x["loss"] for x in log], n_params=n_params,
                  peak_gib=meta.get("peak_gpu_memory_gib"),
                  final_loss=eval_loss(model, tok, held_out, args.device),
                  kernels=meta.get("kernels", "padded, sdpa") + (", qlora" if config.qlora
                                                                  else ""),
                  profile=profiler.result if profiler else None)
    if config.qlora:  # the export command's own parity check, against the unquantized base
        # In its own process, as the command runs: Liger's RoPE patch is global to the model's
        # module, and the export's parity check runs on the CPU.
        proc = subprocess.run([sys.executable, "-m", "tracetune.cli", "export", str(out), "--to",
                               "merged-hf", "--out", str(work / f"merged-{side}")],
                              capture_output=True, text=True)
        result["export"] = "merged-hf: " + " ".join(
            (proc.stdout if proc.returncode == 0 else "FAILED " + proc.stderr).split())[-400:]
    return result


def summarize(result: dict) -> dict:
    """Steady tokens/s (after the first eighth of the steps), slowest step, last-10 loss."""
    stamps, tokens = result["stamps"], result["tokens"]
    steps = len(stamps) - 1
    k0 = max(1, steps // 8)
    secs = stamps[-1] - stamps[k0]
    rate = (tokens[-1] - tokens[k0]) / secs if secs > 0 else float("nan")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return dict(steps=steps, tokens=tokens[-1], tokens_per_s=rate,
                mfu=4 * result["n_params"] * rate / PEAK_FLOPS, peak_gib=result["peak_gib"],
                slowest_step_s=max(gaps[k0:]) if gaps[k0:] else float("nan"),
                median_step_s=sorted(gaps[k0:])[len(gaps[k0:]) // 2] if gaps[k0:] else
                float("nan"), last_loss=sum(result["losses"][-10:]) / len(result["losses"][-10:]),
                final_loss=result["final_loss"], n_params=result["n_params"],
                kernels=result["kernels"], export=result.get("export"),
                profile=result.get("profile"))


# --- one GPU or the CPU: every side in its own process -------------------------------------------

def prepare(args, work: Path) -> None:
    """The model directory, the training rows (a data set directory) and the held-out rows."""
    synthetic.make_model_dir(args.shape, work / "model",
                             dtype="bfloat16" if args.device == "cuda" else "float32")
    low = min(99, args.max_tokens // 2)
    rows = synthetic.make_rows(args.rows, min_tokens=low, max_tokens=args.max_tokens, seed=1)
    synthetic.write_dataset(rows, work / "data")
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "eval_rows.json").write_text(json.dumps(synthetic.make_rows(
        min(EVAL_ROWS, args.rows), min_tokens=low, max_tokens=args.max_tokens, seed=2)))


def run_side(args, work: Path, side: str) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--device",
           args.device, "--batch", str(args.batch), "--max-seq-len", str(args.max_seq_len)] + \
        (["--profile"] if args.profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def single(args) -> dict:
    sides = args.sides.split(",") if args.sides else \
        list(GPU_SIDES if args.device == "cuda" else CPU_SIDES)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        prepare(args, work)
        results = {}
        for side in sides:
            results[side] = run_side(args, work, side)
            print(f"  {side}: {json.dumps(results[side])}", file=sys.stderr, flush=True)
    n_params = max((r.get("n_params", 0) for r in results.values()), default=0)
    print(f"{args.shape} shape ({n_params / 1e6:.0f}M "
          f"parameters, random weights), {args.rows} rows of up to {args.max_tokens} tokens, "
          f"batch {args.batch}, max_seq_len {args.max_seq_len}, one epoch, "
          f"{'bf16 on ' + gpu_name() if args.device == 'cuda' else 'fp32 on the CPU'}")
    plain = results.get("plain", {}).get("tokens_per_s")
    print(f"{'side':12}{'tokens/s':>10}{'vs plain':>9}{'MFU':>7}{'peak GiB':>9}"
          f"{'median s':>9}{'slowest s':>10}{'last loss':>10}{'final loss':>11}  kernels")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:12}  FAILED: {r['error']}")
            continue
        ratio = f"{r['tokens_per_s'] / plain:.2f}x" if plain else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if args.device == "cuda" else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{side:12}{r['tokens_per_s']:10.0f}{ratio:>9}{mfu:>7}{peak:>9}"
              f"{r['median_step_s']:9.3f}{r['slowest_step_s']:10.2f}{r['last_loss']:10.3f}"
              f"{r['final_loss']:11.4f}  {r['kernels']}")
    for side, r in results.items():
        if r.get("export"):
            print(f"{side} export: {r['export']}")
    for side, r in results.items():
        if r.get("profile"):
            print(profile_line(side, r["profile"], args.device))
    if args.profile:
        print("(--profile: the profiled steps' overhead is inside the tokens/s above)")
    if plain and "final_loss" in results.get("plain", {}):
        ref = results["plain"]["final_loss"]
        worst = max((abs(r["final_loss"] - ref) / ref, s) for s, r in results.items()
                    if "final_loss" in r)
        print(f"final loss vs plain: largest difference {100 * worst[0]:.2f}% ({worst[1]})")
    return results


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


# --- two GPUs -----------------------------------------------------------------------------------

def two_gpus(args) -> dict:
    """1 -> 2 GPUs through the `tracetune` command line and accelerate (see the docstring)."""
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        prepare(args, work)
        runs = {
            "1 GPU, batch 16": (1, args.batch, None),
            "2 GPUs DDP, 8 per GPU": (2, args.batch // 2, None),
            "2 GPUs DDP, 16 per GPU": (2, args.batch, None),
            "2 GPUs FSDP, 8 per GPU": (2, args.batch // 2, "fsdp"),
        }
        results = {}
        for name, (gpus, batch, mode) in runs.items():
            results[name] = cli_train(work, name, gpus, batch, mode, args)
            print(f"  {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        one = results["1 GPU, batch 16"]
        for name, r in results.items():
            if "error" not in r and "error" not in one and r is not one:
                r["effect_vs_1gpu"] = effect(work, one["adapter"], r["adapter"])
    print(f"{args.shape} shape, {args.rows} rows, one epoch, `tracetune train` defaults "
          f"(dropout 0 so that runs can be compared), on {gpu_name()}")
    base = results["1 GPU, batch 16"].get("tokens_per_s")
    print(f"{'run':26}{'steps':>6}{'tokens/s':>10}{'vs 1 GPU':>9}{'final loss':>11}"
          f"{'lora_B nonzero':>15}  effect vs 1 GPU (scale, rel. error)")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:26}  FAILED: {r['error']}")
            continue
        eff = r.get("effect_vs_1gpu")
        eff_s = f"{eff['scale']:.4f}, {eff['rel_error']:.4f}" if eff else "-"
        print(f"{name:26}{r['steps']:6d}{r['tokens_per_s']:10.0f}"
              f"{r['tokens_per_s'] / base if base else float('nan'):8.2f}x{r['final_loss']:11.4f}"
              f"{r['lora_b_nonzero']:>15}  {eff_s}")
    return results


def cli_train(work: Path, name: str, gpus: int, batch: int, mode: str | None, args) -> dict:
    """One `tracetune train` command (under `accelerate launch` for two GPUs)."""
    tag = name.replace(" ", "-").replace(",", "")
    out = work / f"adapter-{tag}"
    config = work / f"{tag}.toml"
    config.write_text("[train]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in dict(
            LORA, dropout=0.0, batch_size=batch, max_seq_len=args.max_seq_len, seed=42,
            save_steps=10**6).items()))
    base = f"hf:{work / 'model'},device=cuda,dtype=bfloat16"
    command = ["-m", "tracetune.cli", "train", str(work / "data"), "--base", base, "--out",
               str(out), "--config", str(config)]
    env = dict(os.environ)
    if gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        cmd = [sys.executable, *command]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                  str(gpus), "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
        if mode == "fsdp":
            launch += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy",
                       "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
                       "--fsdp_cpu_ram_efficient_loading", "false"]
        else:
            launch += ["--multi_gpu"]
        cmd = launch + command
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "tracetune_adapter.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        return {"error": " | ".join(tail)}
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    log = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    nonzero = sum(1 for k, v in weights.items() if "lora_B" in k and bool(v.any()))
    held_out = json.loads((work / "eval_rows.json").read_text())
    final = adapter_loss(work, out, held_out)
    return dict(adapter=str(out), steps=meta["steps"], wall_s=wall,
                tokens_per_s=log[-1]["num_tokens"] / meta["train_seconds"],
                final_loss=final, lora_b_nonzero=f"{nonzero}/{sum('lora_B' in k for k in weights)}",
                kernels=meta.get("kernels"))


def adapter_loss(work: Path, adapter: Path, rows) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    base = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16).to("cuda")
    return eval_loss(PeftModel.from_pretrained(base, adapter), tok, rows, "cuda")


def effect(work: Path, ref_dir: str, got_dir: str) -> dict:
    """How far adapter `got` is from adapter `ref` in effect, as tracetune's export parity check
    measures it (tracetune.export.parity): D = adapted - base logits at every position of 16
    held-out rows (float32), scale = <D_got, D_ref> / ||D_ref||^2 and rel_error = ||D_got -
    D_ref|| / ||D_ref||; the same tolerance as the export check (scale 1 +- 0.05, rel_error
    <= 0.1) decides `equal`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    rows = json.loads((work / "eval_rows.json").read_text())[:16]
    batch = padded(tokenize(tok, rows), tok.pad_token_id, "cuda")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    keep = batch["attention_mask"].bool()

    def logits(adapter: str | None):
        model = AutoModelForCausalLM.from_pretrained(work / "model",
                                                     dtype=torch.float32).to("cuda")
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        with torch.no_grad():
            out = model(**inputs).logits[keep]  # (positions, vocab)
        return out - out.mean(dim=-1, keepdim=True)

    base = logits(None)
    d_ref, d_got = logits(ref_dir) - base, logits(got_dir) - base
    scale = float((d_got * d_ref).sum() / (d_ref * d_ref).sum())
    rel = float((d_got - d_ref).norm() / d_ref.norm())
    return dict(scale=scale, rel_error=rel, equal=abs(scale - 1) <= 0.05 and rel <= 0.1)


# --- entry --------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(synthetic.SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpus", type=int, default=1, choices=[1, 2])
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--max-tokens", type=int, default=499, help="longest row in tokens")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--sides", default=None, help="comma-separated sides (default: all that "
                    "run on the device)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--profile", action="store_true",
                    help=f"profile {PROFILE_STEPS} steps of each tracetune side (PyTorch's "
                    "profiler) and print where their time goes")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        if args.device == "cpu":
            import torch

            torch.set_num_threads(min(2, os.cpu_count() or 1))
        fn = plain_side if args.side == "plain" else \
            (lambda a, w: tracetune_side(a, w, args.side))
        print(json.dumps(summarize(fn(args, args.work))))
        return
    results = two_gpus(args) if args.gpus == 2 else single(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
