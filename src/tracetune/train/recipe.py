"""`tracetune train`: a LoRA adapter from a mined dataset, through TRL + PEFT.

Top to bottom: setup (config, data, base model) -> train (TRL SFTTrainer or DPOTrainer) -> save
(adapter, metadata, loss log and plot) -> cleanup. Runs on CPU for the embedded model (its GGUF
dequantized once by transformers and cached as a plain checkpoint, which TRL accepts) and on CUDA
for HF models, with QLoRA (4-bit NF4) when asked and the GPU path of train.fast (packing, varlen
attention, Liger, compile). Launched as several processes (torchrun, accelerate launch), it trains
one adapter with DDP: the main process stages, logs and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.models.resolve import hf_source, weight_options
from tracetune.staging import abandoned, check_output_dir, staging_dir
from tracetune.train import ewc
from tracetune.train.config import TrainConfig
from tracetune.train.fast import (adapter_input_cast, register_varlen_attention,
                                  resolve_kernels)
from tracetune.train.lengths import check_prepared, fit_rows, row_lengths

META = "tracetune_adapter.json"
LOSS_LOG = "loss.jsonl"
STAGING = "train"
"""Prefix of the staging directories beside an adapter's directory (tracetune.staging)."""
STAMP = ".tracetune-train.json"
"""In a staging directory: what it trains (dataset, rows, base, config); --resume adopts only
the directory of the same training."""


def base_config(base: str, config: TrainConfig) -> TrainConfig:
    """`config` with the base spec's weight options in it (hf:DIR,device=cuda,dtype=bfloat16).

    Rule: a device or dtype the spec sets (anything but auto) replaces the config's auto; a
    config that sets a different one is an error naming both. A spec that stacks an adapter
    (adapter=, lora=) is refused: training starts from bare base weights. Serving options
    (n_ctx, batch_size, ...) are ignored. Raises TracetuneError (one line)."""
    opts = weight_options(base)
    if opts.adapter:
        raise TracetuneError(f"base model {base!r}: adapter= is not trained on (training starts "
                             f"a new adapter on the bare base); to continue from it, drop "
                             f"adapter= and set init_adapter = {opts.adapter!r}")
    if opts.lora:
        raise TracetuneError(f"base model {base!r}: lora= is not trained on (a GGUF LoRA is "
                             "llama.cpp's file; transformers trains on the bare base GGUF); drop "
                             "lora= and continue from its PEFT adapter with init_adapter")
    changes = {}
    for key in ("device", "dtype"):
        given, configured = getattr(opts, key), getattr(config, key)
        if given in ("auto", configured):
            continue
        if configured != "auto":
            raise TracetuneError(f"base model {base!r} sets {key}={given} but the training "
                                 f"config sets {key} = {configured!r}; keep one of them")
        changes[key] = given
    merged = dataclasses.replace(config, **changes)
    try:
        merged.validate()
    except TracetuneError as exc:  # only the spec's values can fail here: config was valid
        raise TracetuneError(f"base model {base!r}: {exc}") from None
    return merged


def _rows(dataset: Path, method: str) -> tuple[list[dict], Path]:
    """The dataset's training rows for `method` and the file they come from."""
    from tracetune.datasets.build import (
        DPO_TRL,
        SFT_PROMPT_COMPLETION,
        format_path,
        load_manifest,
        read_rows,
    )

    load_manifest(dataset)
    path = format_path(Path(dataset), SFT_PROMPT_COMPLETION if method == "sft" else DPO_TRL)
    rows = read_rows(path) if path.is_file() else []
    if not rows:
        raise TracetuneError(f"dataset {dataset} has no {method} rows ({path})")
    return rows, path


def optimizer_steps(rows: int, config: TrainConfig) -> int:
    """Optimizer updates a training of `rows` rows makes, as transformers' Trainer counts them
    on one device (Trainer.set_initial_training_values):

        batches = ceil(rows / batch_size)                      # the last batch may be short
        updates_per_epoch = max(ceil(batches / grad_accumulation), 1)
        steps = ceil(epochs * updates_per_epoch)
    """
    batches = math.ceil(rows / config.batch_size)
    per_epoch = max(math.ceil(batches / config.grad_accumulation), 1)
    return math.ceil(config.epochs * per_epoch)


def learning_rates(steps: int, config: TrainConfig) -> list[float]:
    """The learning rate of each of `steps` optimizer updates under the recipe's schedule
    (transformers' "linear": warm-up from 0 over warmup_steps, then linear decay to 0):
    update k (from 0) runs at learning_rate * (k / warmup_steps if k < warmup_steps else
    (steps - k) / (steps - warmup_steps)). The first update of a warm-up runs at 0."""
    w, peak = config.warmup_steps, config.learning_rate
    return [peak * (k / max(1, w) if k < w else max(0.0, (steps - k) / max(1, steps - w)))
            for k in range(steps)]


def check_schedule(rows: int, config: TrainConfig) -> str | None:
    """Refuse a schedule under which no optimizer update changes the weights (every update at
    learning rate 0: one update, and warm-up starts at 0); return a one-line warning when the
    warm-up outlasts the training (the learning rate never reaches `config.learning_rate`),
    else None. Raises TracetuneError (one line: the steps, what sets them, and the fix)."""
    steps = optimizer_steps(rows, config)
    if config.warmup_steps < steps:
        return None
    counted = (f"{steps} optimizer step{'s' * (steps != 1)} ({rows} row{'s' * (rows != 1)}, "
               f"batch_size {config.batch_size}, grad_accumulation {config.grad_accumulation}, "
               f"epochs {config.epochs:g})")
    rates = learning_rates(steps, config)
    if max(rates) == 0:
        raise TracetuneError(f"the schedule gives no update: {counted} <= warmup_steps "
                             f"{config.warmup_steps}, and warm-up runs its first step at "
                             "learning rate 0; lower warmup_steps or add rows or epochs")
    return (f"warning: warmup_steps {config.warmup_steps} >= {counted}: the learning rate "
            f"peaks at {max(rates):.3g}, not learning_rate {config.learning_rate:g}; lower "
            "warmup_steps or add rows or epochs")


def _all_lora_b_zero(model) -> bool:
    """Whether the model's LoRA B matrices (which start at zero, so the adapter's update B @ A
    is zero) are all still exactly zero; False for a model without any."""
    found = False
    for name, param in model.named_parameters():
        if "lora_B" in name:
            found = True
            if param.detach().any():
                return False
    return found


def _loss_callback(path: Path):
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, "epoch": state.epoch,
                                        **{k: v for k, v in logs.items()
                                           if isinstance(v, (int, float))}}) + "\n")

    return LossLog()


def _progress_callback(on_progress: Callable[[int, int, float | None], None]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Reports (optimizer steps done, total, last logged loss): once at the start, once per
        step (after its loss is logged, when it is), and once at the end with step == total."""

        loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # A resumed run starts at its checkpoint's step, with the loss logged before it.
            logged = [x["loss"] for x in state.log_history if "loss" in x]
            self.loss = float(logged[-1]) if logged else None
            on_progress(state.global_step, state.max_steps, self.loss)

        def on_step_end(self, args, state, control, **kwargs):
            # The trainer's flow callback runs first and sets should_log: a logged step is
            # reported by on_log, with its own loss.
            if not control.should_log and state.global_step < state.max_steps:
                on_progress(state.global_step, state.max_steps, self.loss)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                if state.global_step < state.max_steps:
                    on_progress(state.global_step, state.max_steps, self.loss)

        def on_train_end(self, args, state, control, **kwargs):
            on_progress(state.global_step, state.max_steps, self.loss)

    return Progress()


def train(dataset: Path, base: str, out: Path, config: TrainConfig, *,
          resume: bool = False, log: Callable[[str], None] | None = None,
          on_progress: Callable[[int, int, float | None], None] | None = None,
          callbacks: list | None = None) -> Path:
    """Train a LoRA adapter on `dataset`'s SFT or DPO rows and write it to `out`.

    Every row is measured with the training tokenizer and its chat template (train.lengths);
    rows longer than `config.max_seq_len` tokens are dropped, never truncated, and `log` gets
    one line saying how many (the count is also in the metadata, rows_too_long). Training
    writes into a staging directory beside `out` that becomes `out` only when the adapter is
    complete: a failed or interrupted run leaves `out` as it was (absent, or empty). With
    `resume`, a run of the same dataset, base and config that was killed (its staging
    directory left behind) continues from its last checkpoint, and a finished `out` is
    replaced when the new adapter is complete.

    The optimizer steps are counted before the base model loads (`optimizer_steps`): a schedule
    whose every update runs at learning rate 0 is refused, and one whose warm-up outlasts the
    training gets a warning line in `log`. `on_progress(step, total, loss)`, when given, is
    called with the optimizer steps done and their total (`total` as the trainer counts it) and
    the last logged training loss (None before the first): at the start, after each step, and
    a last time with step == total; the trainer's own progress bar is then off. `callbacks`:
    more transformers TrainerCallback objects, given to the trainer in every process (a
    profiler, a custom logger).

    EWC (train.ewc): with `config.ewc_state` the trainer minimises task loss + ewc_lambda *
    sum_i F_i (theta_i - theta*_i)^2, and every loss-log line carries task_loss and
    ewc_penalty; with `config.ewc_fisher_samples` the diagonal Fisher of the first rows is
    estimated after training and the next round's state written as ewc_state.safetensors in
    `out`. `log` gets a warning line when every logged task loss is exactly 0.0, or when a
    logged penalty exceeds 100x the task loss (ewc.loss_warnings).

    On CUDA the kernels come from `train.fast.resolve_kernels` (unset settings decided by the
    device; on the CPU all stay off, so CPU results are what they were). Under a launcher with
    WORLD_SIZE > 1 every process calls this; `batch_size` is per process, only the main process
    writes (its staging directory is shared with the others) and the adapter is gathered from
    all of them before it is checked and saved; the others return `out` once it is in place.

    Returns `out`. Raises TracetuneError (one line) for a bad config, base or dataset (naming
    the file and line of a damaged one), an `out` that is a file or under one, a non-empty
    `out` without `resume`, no row within max_seq_len, a schedule that gives no update, a GPU
    setting the device or the installed packages cannot honour, or a training that left every
    LoRA B matrix at zero (the adapter would not change the model); nothing is written then."""
    config.validate()
    config = base_config(base, config)  # before any work: a bad base fails at once
    trust_remote_code = weight_options(base).trust_remote_code
    out = Path(out)
    check_output_dir(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise TracetuneError(f"{out} is not empty; pass --resume to continue its training or "
                             "choose another --out")
    rows, rows_file = _rows(dataset, config.method)  # a damaged dataset fails before torch loads

    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, PeftModel

    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TracetuneError("device=cuda but torch sees no CUDA device")
    if config.qlora and not cuda:
        raise TracetuneError("qlora needs a CUDA device (bitsandbytes 4-bit)")
    source = hf_source(base)
    from tracetune.models.hf import check_reachable

    check_reachable(source)  # offline with a hub name: one line now, not a minute of retries
    dtype = _torch_dtype(torch, config.dtype, cuda)
    kernels = resolve_kernels(config, cuda)  # what is not installed fails before any load
    world = _World.of(cuda)

    # --- setup ---------------------------------------------------------------------------------
    transformers.set_seed(config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        lengths = row_lengths(tokenizer, rows)
    except TracetuneError as exc:
        raise TracetuneError(f"{rows_file}: {exc}") from None
    fitted = fit_rows(rows, lengths, config.max_seq_len)
    if fitted.dropped and log is not None:
        log(fitted.summary())
    warning = check_schedule(len(fitted.rows), config)  # before the base model loads
    if warning and log is not None:
        log(warning)
    load_kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if kernels.attention == "varlen":
        load_kwargs["attn_implementation"] = register_varlen_attention()
    if config.qlora and world.size > 1:
        # 4-bit weights go to this process's GPU, not all to the first one.
        load_kwargs["device_map"] = {"": world.local_rank}
    if config.qlora:
        load_kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    except OSError as exc:
        raise TracetuneError(f"cannot load base model {base!r}: {exc}") from exc
    peft_config = None
    if config.init_adapter:
        try:
            model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TracetuneError(f"adapter {config.init_adapter} does not fit {base}: {exc}") \
                from exc
    else:
        peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha,
                                 lora_dropout=config.dropout,
                                 target_modules=list(config.target_modules),
                                 task_type="CAUSAL_LM")
    previous = None  # the EWC state the penalty pulls towards (config.ewc_state)
    if config.ewc_state:
        previous = ewc.load_state(Path(config.ewc_state), model)
        gap = ewc.anchor_gap(model, previous)
        if gap > 0 and log is not None and world.main:
            log(f"warning: init_adapter's parameters are not ewc_state's anchors (up to {gap:.3g} "
                "apart): the penalty pulls towards another adapter's parameters")
    stamp = json.loads(json.dumps({  # as it reads back from the file
        "out": out.name, "dataset": str(Path(dataset).resolve()), "rows_sha256": _sha256(rows),
        "base": base, "config": dataclasses.asdict(config)}))
    if log is not None and cuda and world.main:
        log(f"training on {world.size} GPU{'s' * (world.size > 1)}: {kernels.describe()}")
    with (_staged(out, stamp, resume) if world.main else contextlib.nullcontext(None)) as work:
        work = world.share(work)  # every process writes its checkpoints in the main one's
        checkpoints = work / "checkpoints"
        common = dict(
            output_dir=str(checkpoints), num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accumulation,
            learning_rate=config.learning_rate, lr_scheduler_type="linear",
            warmup_steps=config.warmup_steps, logging_steps=config.logging_steps,
            save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
            seed=config.seed, data_seed=config.seed, report_to="none",
            # bf16 and gradient checkpointing are TRL's defaults; on a CPU they cost ~16x, so
            # mixed precision follows the weights' dtype on CUDA only.
            bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
            gradient_checkpointing=False, use_cpu=not cuda,
            # No truncation by the trainer: every row was measured and fits max_seq_len
            # (fit_rows); check_prepared below confirms it on the trainer's own tokens.
            max_length=None, dataloader_num_workers=0,
            disable_tqdm=on_progress is not None,  # the caller draws its own progress
        )
        # The GPU path's settings go in only when on, so the CPU's arguments stay as they were.
        if kernels.liger:
            common["use_liger_kernel"] = True
        if kernels.compile:
            common["torch_compile"] = True
        if world.size > 1:
            # Every LoRA parameter gets a gradient at every step; DDP need not search for
            # unused ones (a full pass over the graph per step).
            common["ddp_find_unused_parameters"] = False
        train_ds = Dataset.from_list(fitted.rows)
        trainer_callbacks = [_loss_callback(work / LOSS_LOG)] if world.main else []
        if on_progress is not None and world.main:
            trainer_callbacks.append(_progress_callback(on_progress))
        trainer_callbacks += callbacks or []

        # --- train -----------------------------------------------------------------------------
        if config.method == "sft":
            from trl import SFTConfig, SFTTrainer

            trainer_cls = SFTTrainer if previous is None else \
                ewc.penalized(SFTTrainer, previous, config.ewc_lambda)
            if kernels.packing:
                common["padding_free"] = True
            with warnings.catch_warnings():
                # TRL deprecates use_liger_kernel in favour of kernels fetched from the Hub at
                # run time; the installed package is what runs offline.
                warnings.filterwarnings("ignore", message=".*use_liger_kernel.*",
                                        category=FutureWarning)
                args = SFTConfig(completion_only_loss=True, **common)
                trainer = trainer_cls(model=model, args=args, train_dataset=train_ds,
                                      processing_class=tokenizer, peft_config=peft_config,
                                      callbacks=trainer_callbacks)
        else:
            from trl import DPOConfig, DPOTrainer

            trainer_cls = DPOTrainer if previous is None else \
                ewc.penalized(DPOTrainer, previous, config.ewc_lambda)
            args = DPOConfig(beta=config.dpo_beta, **common)
            trainer = trainer_cls(model=model, args=args, train_dataset=train_ds,
                                  processing_class=tokenizer, peft_config=peft_config,
                                  callbacks=trainer_callbacks)
        check_prepared(trainer.train_dataset, config.method, config.max_seq_len,
                       len(fitted.rows))
        if on_progress is not None:
            # With tqdm off, the trainer prints every log dict instead; the caller shows the loss.
            trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        has_checkpoint = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
        t0 = time.perf_counter()
        # Without the cast the adapters take the 16-bit activations and autocast runs their
        # matmuls in 16 bits, as it would after the cast: no float32 copy of each activation.
        with adapter_input_cast(trainer.model, kernels.cast_inputs):
            result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
        train_s = time.perf_counter() - t0
        # Under FSDP each process holds a shard: the whole adapter is gathered (a collective
        # call, so every process makes it) before it is checked and saved. Saving the model
        # object itself there writes an adapter of empty tensors.
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped) \
            if world.size > 1 else None
        zero = _all_lora_b_zero(trainer.model) if state is None else \
            world.broadcast(world.main and _all_lora_b_zero_state(state))
        if zero:
            raise TracetuneError(
                f"training left every LoRA B matrix at zero after {trainer.state.global_step} "
                "optimizer steps: the adapter would not change the model, so none is written; "
                "raise learning_rate, lower warmup_steps or add rows or epochs")
        if not world.main:
            world.barrier()  # the main process renames the finished adapter into place
            return out

        # --- save ------------------------------------------------------------------------------
        if state is None:
            trainer.model.save_pretrained(str(work))
        else:
            trainer.model.save_pretrained(str(work), state_dict=state)
        fisher_rows, fisher_s = [], None
        if config.ewc_fisher_samples > 0:  # the next round's EWC state, from this round's rows
            t0 = time.perf_counter()
            bare = trainer.accelerator.unwrap_model(trainer.model)  # names as the next round's
            fisher_rows = ewc.fisher_rows(trainer.train_dataset, config.method,
                                          config.ewc_fisher_samples)
            fisher = ewc.fisher_diagonal(bare, fisher_rows)
            fisher_s = time.perf_counter() - t0
            ewc.save_state(ewc.combine(previous, ewc.trainable(bare), fisher, len(fisher_rows),
                                       config.ewc_accumulate), work / ewc.STATE_FILE)
        points = [json.loads(x) for x in (work / LOSS_LOG).read_text().splitlines()] \
            if (work / LOSS_LOG).is_file() else []
        losses = [p["loss"] for p in points]
        warned = ewc.loss_warnings(points)  # seed 004's failures: a 0.0 loss, a drowning penalty
        if log is not None:
            for line in warned:
                log(line)
        meta = {"base": base, "base_source": source, "dataset": str(Path(dataset).resolve()),
                "rows": len(fitted.rows), "rows_too_long": fitted.dropped,
                "row_tokens": sum(n for n in lengths if n <= config.max_seq_len),
                "longest_row_tokens": fitted.longest, "config": dataclasses.asdict(config),
                "train_seconds": round(train_s, 2), "steps": trainer.state.global_step,
                "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "versions": {m: _version(m) for m in ("torch", "transformers", "trl", "peft")}}
        if previous is not None or config.ewc_fisher_samples > 0:
            penalties = [p["ewc_penalty"] for p in points if "ewc_penalty" in p]
            meta["ewc"] = {"lambda": config.ewc_lambda,
                           "first_penalty": penalties[0] if penalties else None,
                           "last_penalty": penalties[-1] if penalties else None,
                           "fisher_samples": len(fisher_rows),
                           "fisher_seconds": None if fisher_s is None else round(fisher_s, 2),
                           "accumulate": config.ewc_accumulate, "warnings": warned}
        if cuda:
            meta.update(kernels=kernels.describe(), processes=world.size,
                        peak_gpu_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        (work / META).write_text(json.dumps(meta, indent=2))
        _plot_loss(work / LOSS_LOG, work / "loss.png")

        # --- cleanup ---------------------------------------------------------------------------
        shutil.rmtree(checkpoints, ignore_errors=True)
    world.barrier()
    return out


@dataclass(frozen=True)
class _World:
    """The processes of one training (accelerate launch / torchrun set WORLD_SIZE, RANK and
    LOCAL_RANK; a plain run is one process). The main one stages, logs and saves; the others
    train beside it and return once it has renamed the adapter into place."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def of(cls, cuda: bool) -> _World:
        """This process's place; with several, the process group is started here (NCCL on
        CUDA, gloo on the CPU: accelerate's PartialState, which the trainer then shares)."""
        env = os.environ
        world = cls(int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")),
                    int(env.get("LOCAL_RANK", "0")))
        if world.size > 1:
            from accelerate import PartialState

            PartialState(cpu=not cuda)
        return world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        """The main process's `value`, in every process (a collective call)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, work: Path | None) -> Path:
        """The main process's staging directory, in every process."""
        return Path(self.broadcast(str(work) if work is not None else None))

    def barrier(self) -> None:
        if self.size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def _all_lora_b_zero_state(state: dict) -> bool:
    """_all_lora_b_zero over a gathered state dict (name -> tensor)."""
    found = [v for k, v in state.items() if "lora_B" in k]
    return bool(found) and not any(v.detach().any() for v in found)


@contextlib.contextmanager
def _staged(out: Path, stamp: dict, resume: bool) -> Iterator[Path]:
    """The directory a training run writes into: a new staging directory beside `out` or, with
    `resume`, the newest one a killed run with the same `stamp` left (adopted). It becomes `out`
    when the block completes (a finished `out` is swapped out, an empty one replaced). On any
    exception, KeyboardInterrupt included, it is removed with the parent directories created
    for it, and `out` is left as it was."""
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    work = None
    try:
        work = (_adopt(out.parent, stamp) if resume else None) or staging_dir(out.parent, STAGING)
        (work / STAMP).write_text(json.dumps(stamp))
        yield work
        (work / STAMP).unlink()
        work.chmod(0o777 & ~_umask())  # staging dirs are 0700; out gets mkdir's mode
        if out.exists() and any(out.iterdir()):  # resumed over a finished adapter
            old = staging_dir(out.parent, STAGING)
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            os.replace(work, out)
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for path in created:
            try:
                path.rmdir()
            except OSError:  # someone else put something there
                break
        raise


def _adopt(parent: Path, stamp: dict) -> Path | None:
    """The newest staging directory under `parent` that a dead process left for the same
    training (`stamp`) and that holds a checkpoint, renamed as this process's own; its loss log
    is cut back to the checkpoint's step (the steps after it are trained again). None if there
    is none."""
    for old in abandoned(parent, STAGING):
        try:
            same = json.loads((old / STAMP).read_text()) == stamp
        except (OSError, ValueError):
            continue
        steps = [int(c.name.split("-")[-1]) for c in (old / "checkpoints").glob("checkpoint-*")
                 if c.name.split("-")[-1].isdigit()]
        if not same or not steps:
            continue
        mine = old.with_name(f".{STAGING}-{os.getpid()}-{old.name.rsplit('-', 1)[-1]}")
        try:
            old.rename(mine)
        except OSError:  # another process adopted it first
            continue
        log = mine / LOSS_LOG
        if log.is_file():
            kept = [x for x in log.read_text().splitlines() if json.loads(x)["step"] <= max(steps)]
            log.write_text("".join(x + "\n" for x in kept))
        return mine
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sha256(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _torch_dtype(torch, name: str, cuda: bool):
    """A TrainConfig dtype name -> the torch dtype the base loads in (auto: bf16 on CUDA)."""
    if name == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, name)


def _version(module: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _plot_loss(log: Path, png: Path) -> None:
    if not log.is_file():
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    points = [json.loads(x) for x in log.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["step"] for p in points], [p["loss"] for p in points], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
