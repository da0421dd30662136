"""Online EWC over LoRA parameters (seed 004, experiment 4): keep a continued adapter near the
previous round's where that round's data says its parameters matter.

Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
neural networks", PNAS 114(13)) adds to the task loss of round t+1

    penalty = lambda * sum_i F_i (theta_i - theta*_i)^2

over the trainable (LoRA) parameters theta, where theta* are the parameters after round t (the
anchors) and F is the diagonal of the Fisher information of round t's data at theta*. Online
EWC (Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning",
ICML) keeps one Fisher across rounds instead of one penalty per past round; here it is the
running mean over rounds (`combine`). The 1/2 of the papers' Bayesian form is folded into
lambda, as in the seed's formula.

The Fisher is the empirical one: the labels are the dataset's completions, not samples from
the model. The state is a safetensors file (`ewc_state.safetensors` in the adapter directory)
holding anchor/NAME and fisher/NAME for every trainable parameter NAME.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracetune.errors import TracetuneError
from tracetune.train.config import EWC_ACCUMULATE

if TYPE_CHECKING:
    import torch

STATE_FILE = "ewc_state.safetensors"
FORMAT = "tracetune-ewc-1"
"""The state file's metadata "format": a file without it is not an EWC state."""
IGNORE = -100
"""A label that is not scored (transformers' and TRL's convention)."""
PENALTY_RATIO = 100.0
"""`loss_warnings`: a logged penalty above this many times the task loss drowns the task (an
O-LoRA run of seed 004's project logged a penalty 10^4 times its task loss)."""


@dataclass(frozen=True)
class EwcState:
    """What round t leaves to round t+1: anchors and diagonal Fisher, keyed by the name of
    each trainable parameter (model.named_parameters()), same shapes as the parameters."""

    anchors: dict[str, torch.Tensor]
    """theta*: the adapter's parameters at the end of the round."""
    fisher: dict[str, torch.Tensor]
    """F: the diagonal Fisher, >= 0 (the running mean over `n_rounds` rounds)."""
    n_rounds: int
    """Rounds whose Fisher is in `fisher` (1 after a round with accumulate = replace)."""
    n_samples: int
    """Rows the Fisher of those rounds was estimated on, in all."""


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """The model's trainable parameters by name (for a PEFT model: its LoRA matrices)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fisher_rows(dataset, method: str, n: int) -> list[dict]:
    """The first `n` rows of a trainer's tokenized train dataset (all of them if it has fewer)
    as fisher_diagonal's rows, in the dataset's order: SFT's input_ids and labels as the
    trainer built them (-100 on the prompt); for a DPO pair, the prompt followed by the chosen
    answer, the answer scored (the behaviour the round taught)."""
    part = dataset.select(range(min(n, len(dataset))))
    if method == "sft":
        return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in part]
    return [{"input_ids": r["prompt_ids"] + r["chosen_ids"],
             "labels": [IGNORE] * len(r["prompt_ids"]) + r["chosen_ids"]} for r in part]


def fisher_diagonal(model, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of `rows` w.r.t. the model's trainable parameters:

        F_i = 1/N * sum_n ( d/d theta_i  log p(y_n | x_n) )^2
        log p(y_n | x_n) = 1/|y_n| * sum_{t in y_n} log p(token_t | tokens_<t)

    one row at a time (batch 1), so that each square is of one sample's gradient (a batch's
    gradient squared would be the square of a mean, not the mean of squares). The
    log-likelihood is the completion's, per token, as the SFT loss normalises it, so that
    lambda weighs the penalty in units of the task loss. A row is {"input_ids": [int],
    "labels": [int]} as TRL's SFT dataset holds it: labels are input_ids with -100 on the
    tokens not scored (the prompt).

    The model runs in eval mode (no dropout: the estimate consumes no random numbers) and is
    put back in its mode after; its parameters and their .grad are left as they were. Returns
    float32 tensors on the parameters' devices, keyed by parameter name. Raises TracetuneError
    for no rows or a row without a completion token."""
    import torch

    if not rows:
        raise TracetuneError("the Fisher needs at least one row")
    params = trainable(model)
    names = list(params)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()
    try:
        for i, row in enumerate(rows):
            ids = torch.tensor([row["input_ids"]], device=device)  # (1, T)
            # Token t is predicted by the logits at t - 1: the targets are labels[1:].
            scored = torch.tensor(row["labels"][1:], device=device) != IGNORE  # (T-1,)
            if not scored.any():
                raise TracetuneError(f"Fisher row {i + 1} has no completion token to score")
            logits = model(input_ids=ids).logits[0, :-1].float()  # (T-1, V)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]  # (T-1,)
            grads = torch.autograd.grad(logp[scored].mean(), [params[n] for n in names])
            for name, g in zip(names, grads, strict=True):
                sums[name] += g.float().square()
    finally:
        model.train(was_training)
    return {name: s / len(rows) for name, s in sums.items()}


def combine(previous: EwcState | None, anchors: dict[str, torch.Tensor],
            fisher: dict[str, torch.Tensor], n_samples: int, accumulate: str) -> EwcState:
    """The state a round leaves: its adapter's parameters as anchors and

        replace:  F = F_new
        average:  F = (F_prev * k + F_new) / (k + 1),   k = previous.n_rounds

    a running mean weighted by rounds, not samples: each round's data counts the same
    whatever number of rows its Fisher was estimated on (ewc_fisher_samples is an estimation
    budget, not a measure of how much a round matters). With no previous state both give
    F_new. Tensors are detached float32 copies."""
    if accumulate not in EWC_ACCUMULATE:
        raise TracetuneError(f"ewc_accumulate must be one of {', '.join(EWC_ACCUMULATE)}, "
                             f"not {accumulate!r}")
    anchors = {k: v.detach().float().clone() for k, v in anchors.items()}
    fisher = {k: v.detach().float().clone() for k, v in fisher.items()}
    if previous is None or accumulate == "replace":
        return EwcState(anchors, fisher, n_rounds=1, n_samples=n_samples)
    _check_names(previous.fisher, {k: tuple(v.shape) for k, v in fisher.items()}, "the previous "
                 "EWC state", "this round's Fisher")
    k = previous.n_rounds
    mean = {name: (previous.fisher[name].to(f.device) * k + f) / (k + 1)
            for name, f in fisher.items()}
    return EwcState(anchors, mean, n_rounds=k + 1, n_samples=previous.n_samples + n_samples)


def save_state(state: EwcState, path: Path) -> None:
    """Write `state` as one safetensors file (tensors on the CPU, counts in its metadata)."""
    from safetensors.torch import save_file

    tensors = {**{f"anchor/{k}": v for k, v in state.anchors.items()},
               **{f"fisher/{k}": v for k, v in state.fisher.items()}}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": FORMAT, "n_rounds": str(state.n_rounds),
                        "n_samples": str(state.n_samples)})


def load_state(path: Path, model=None) -> EwcState:
    """The state saved at `path`. With `model`, it must hold exactly the model's trainable
    parameters with their shapes, and its tensors are moved to their devices. Raises
    TracetuneError (one line, naming the file) for a missing or foreign file, a Fisher that is
    negative or not finite, or a state that does not fit the model (naming a few of the
    parameters missing, extra or of another shape)."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TracetuneError(f"ewc_state {path} does not exist (an adapter trained with "
                             f"ewc_fisher_samples > 0 holds {STATE_FILE})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = f.keys()  # a safe_open handle is not iterable
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError) as exc:
        raise TracetuneError(f"ewc_state {path} is not a safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise TracetuneError(f"ewc_state {path} is not a tracetune EWC state (no format "
                             f"{FORMAT!r} in its metadata)")
    anchors = {k.removeprefix("anchor/"): v for k, v in tensors.items() if k.startswith("anchor/")}
    fisher = {k.removeprefix("fisher/"): v for k, v in tensors.items() if k.startswith("fisher/")}
    if anchors.keys() != fisher.keys() or any(anchors[k].shape != fisher[k].shape
                                              for k in anchors):
        raise TracetuneError(f"ewc_state {path}: its anchors and Fisher name different "
                             "parameters or shapes")
    if any(not torch.isfinite(v).all() or (v < 0).any() for v in fisher.values()):
        raise TracetuneError(f"ewc_state {path}: its Fisher has negative or non-finite entries")
    state = EwcState(anchors, fisher, int(meta.get("n_rounds", 1)), int(meta.get("n_samples", 0)))
    if model is None:
        return state
    params = trainable(model)
    _check_names(fisher, {k: tuple(p.shape) for k, p in params.items()}, f"ewc_state {path}",
                 "the model's trainable parameters")
    return EwcState({k: v.to(params[k].device) for k, v in anchors.items()},
                    {k: v.to(params[k].device) for k, v in fisher.items()},
                    state.n_rounds, state.n_samples)


def penalty(model, state: EwcState, lam: float) -> torch.Tensor:
    """lam * sum_i F_i (theta_i - theta*_i)^2 over the model's trainable parameters (a float32
    scalar with a graph to them). With lam = 0 it is an exact zero and so is its gradient:
    adding it changes neither a loss nor a gradient by one bit."""
    params = trainable(model)
    total = sum((state.fisher[name] * (p.float() - state.anchors[name]).square()).sum()
                for name, p in params.items())
    return lam * total


def anchor_gap(model, state: EwcState) -> float:
    """The largest |theta_i - theta*_i|: 0 when the model starts at the state's anchors (an
    init_adapter that is the adapter the state was written with)."""
    return max((float((p.detach().float() - state.anchors[name]).abs().max())
                for name, p in trainable(model).items()), default=0.0)


def penalized(trainer_cls: type, state: EwcState, lam: float) -> type:
    """`trainer_cls` (TRL's SFTTrainer or DPOTrainer) with loss = task loss + penalty in
    training, and each log line carrying task_loss and ewc_penalty (the means over the steps
    since the last log; the trainer's `loss` is their sum).

    The override calls the trainer's own compute_loss and adds the penalty: data, model calls
    and random numbers are untouched, so lam = 0 trains bit for bit as without it."""

    class EwcTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:  # an evaluation loss stays the task's
                return result
            task, outputs = result if return_outputs else (result, None)
            ewc = penalty(self.accelerator.unwrap_model(model), state, lam)
            # The optimizer step's loss is its micro-batches' sum when the trainer leaves
            # gradient accumulation to the loss (transformers' Trainer.training_step), else
            # their mean: the penalty counts once per optimizer step either way.
            steps = self.current_gradient_accumulation_steps if _loss_is_scaled_for_ga(
                self, num_items_in_batch) else 1
            # TRL's per-log-window metrics: averaged into the next log line, then cleared.
            metrics = self._metrics["train"]
            metrics["task_loss"].append(
                self.accelerator.gather_for_metrics(task.detach()).mean().item() * steps)
            metrics["ewc_penalty"].append(ewc.item())
            loss = task + ewc / steps
            return (loss, outputs) if return_outputs else loss

    EwcTrainer.__name__ = EwcTrainer.__qualname__ = f"Ewc{trainer_cls.__name__}"
    return EwcTrainer


def _loss_is_scaled_for_ga(trainer, num_items_in_batch) -> bool:
    """Whether compute_loss's loss is already divided for gradient accumulation: the rule of
    transformers' Trainer.training_step (5.x), which divides it by the steps otherwise."""
    if trainer.loss_is_scaled_for_ga is not None:
        return bool(trainer.loss_is_scaled_for_ga)
    return bool((trainer.model_accepts_loss_kwargs and num_items_in_batch is not None)
                or trainer.compute_loss_func is not None)


def loss_warnings(points: list[dict], ratio: float = PENALTY_RATIO) -> list[str]:
    """One-line warnings about a loss log (its lines, as dicts), for seed 004's two failures:

    - every logged task loss (task_loss, else loss) is exactly 0.0: the loss is not what is
      logged (the seed's synthesis-format runs all logged 0.0) or nothing is learned;
    - a logged ewc_penalty above `ratio` (100) times that line's task loss, at the first
      logged step or any later one (the first such line is named): the penalty, not the
      data, drives training. At step 1 the parameters are the anchors and the penalty is 0,
      so the first step alone would not show it."""
    out = []
    task = [p.get("task_loss", p.get("loss")) for p in points]
    if task and all(x == 0.0 for x in task):
        out.append(f"warning: the task loss logged is exactly 0.0 at all {len(task)} logged "
                   "steps: the loss is not reaching the log, or nothing is being trained")
    for p, t in zip(points, task, strict=True):
        pen = p.get("ewc_penalty")
        if pen is not None and t is not None and math.isfinite(pen) and pen > ratio * abs(t):
            out.append(f"warning: the EWC penalty {pen:.4g} is over {ratio:g}x the task loss "
                       f"{t:.4g} at step {p.get('step')}: the penalty, not the data, drives "
                       "training; lower ewc_lambda")
            break
    return out


def _check_names(have: dict, want: dict[str, tuple], what: str, against: str) -> None:
    """`have` (name -> tensor) holds exactly `want`'s names with its shapes, else a one-line
    TracetuneError naming up to three of each kind of difference."""
    missing = sorted(want.keys() - have.keys())
    extra = sorted(have.keys() - want.keys())
    shapes = sorted(k for k in want.keys() & have.keys() if tuple(have[k].shape) != want[k])
    if not (missing or extra or shapes):
        return
    parts = []
    for label, names in (("missing", missing), ("not in the model", extra),
                         ("of another shape", shapes)):
        if names:
            parts.append(f"{len(names)} {label} ({', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''})")
    raise TracetuneError(f"{what} does not fit {against}: parameters {'; '.join(parts)}; was it "
                         "written for another base model or LoRA config?")
