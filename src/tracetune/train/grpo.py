"""RL from sandbox rewards: GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300) with TRL's
`GRPOTrainer` on a LoRA adapter, the reward being the sandbox's verdict on each completion.

For every train task the prompt is the direct workflow's first prompt (`agents.workflow`'s
IMPL_PROMPT: the same words the model sees in evaluation); TRL samples `num_generations`
completions of it (a group), each completion's code is extracted as the workflow extracts it and
run against the task's hidden acceptance tests in the project's sandbox, and its reward is the
share of those tests that passed (0 when nothing runs: no code, a syntax error, an import that
fails). The advantage of a completion is its reward relative to its group's (TRL's default group
normalisation), so a group whose rewards are all equal carries no signal: those groups are
**skipped** (their completions are masked out of the loss, KL term included) and **counted**
(`zero_std_groups` in every log line and the metadata).

Logged every `logging_steps` optimizer steps, one JSON object a line in OUT/grpo_log.jsonl:
step, reward (mean), reward_std, kl (mean per-token KL to the reference model, TRL's k3
estimator; logged when beta > 0), completion_length (mean tokens), clipped_ratio (share of
completions cut at max_completion_length), groups, zero_std_groups (cumulative), loss.

**The repair agent** (tasks of a repair suite, `train_grpo(..., repair=RepairConfig)`): the prompt
is the agent's first request under that config (`agents.repair.first_messages`: the system prompt
with the offered tools, the goal, and with show_file the module and the tests' verdict), and each
completion is played as a one-message episode of the real driver (`run_repair_episode`, max_iters
1: the call runs in a fresh copy of the repository, the tests after a write). The completion is
first cut as decoding would have ended it in an episode: at the driver's blank-line stop, and
constrained, where the first JSON object closes (a grammar ends the message there; TRL's sampling
itself is not constrained). Its reward (`REPAIR_REWARDS`, shaped so a group of a small model that
never fixes a bug still differs): 1.0 when the task's tests then pass; 0.3 for a valid edit (the
module changed, still parses and defines what the tests import: the episodes' `valid_edit`); 0.1
for any other tool call that ran without error; 0 for a parse error, a refused call or a final
answer. One message is the unit because with show_file and edit_only the teacher fixes a bug in
one edit; longer episodes (a reward per turn) are not modelled.

The output directory is a PEFT adapter like `train.recipe`'s (the exporters and the hf backend
read it) with the same metadata file (recipe.META), method "grpo"; it is written through a
staging directory, so a failed run leaves no adapter behind.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracetune.errors import TracetuneError
from tracetune.train.config import ALL_LINEAR, DEVICES

GRPO_LOG = "grpo_log.jsonl"
"""The per-step log in the adapter's directory (module docstring)."""


class NoSignal(TracetuneError):
    """GRPO left the adapter unchanged: every group's rewards were equal."""


@dataclass(frozen=True)
class GrpoConfig:
    """One GRPO training (TRL's GRPOConfig for the fields it shares, under the same names where
    they are the same thing)."""

    num_generations: int = 4
    """Completions sampled per prompt: a group (advantages are relative within it); >= 2."""
    prompts_per_step: int = 2
    """Prompts per optimizer step (the step's batch is prompts_per_step * num_generations)."""
    max_completion_length: int = 256
    """Tokens generated per completion at most (evaluation's max_tokens is the natural value)."""
    temperature: float = 1.0
    """Sampling temperature of the completions (> 0: a group needs different answers)."""
    learning_rate: float = 1e-5
    """Peak learning rate of the LoRA parameters (linear decay, no warm-up)."""
    beta: float = 0.04
    """Weight of the KL penalty to the reference model (the base, or the starting adapter's
    model); DeepSeekMath's 0.04. 0: no reference model, no KL logged."""
    epochs: float = 1.0
    """Passes over the train tasks (each pass: every task's prompt once)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: as many as `epochs` gives)."""
    r: int = 16
    """LoRA rank of a fresh adapter (ignored with an initial adapter: its own rank is kept)."""
    alpha: int = 32
    """LoRA alpha of a fresh adapter."""
    dropout: float = 0.0
    """LoRA dropout of a fresh adapter (0: the sampling and the loss see the same model)."""
    target_modules: tuple[str, ...] = ALL_LINEAR
    """Modules a fresh adapter covers."""
    seed: int = 42
    """Seed of LoRA init, prompt order and sampling."""
    logging_steps: int = 1
    """Write a log line every this many optimizer steps."""
    check_timeout_s: float = 10.0
    """The sandbox's limit per completion's test run, seconds."""
    device: str = "auto"
    """auto (CUDA when torch sees one), cpu or cuda."""

    def validate(self) -> None:
        """Raises TracetuneError naming the first bad field."""
        checks = [("num_generations", self.num_generations >= 2, "must be at least 2 (a group "
                   "of one has no relative advantage)"),
                  ("prompts_per_step", self.prompts_per_step >= 1, "must be at least 1"),
                  ("max_completion_length", self.max_completion_length >= 1,
                   "must be at least 1"),
                  ("temperature", self.temperature > 0, "must be > 0 (a group needs different "
                   "completions)"),
                  ("learning_rate", self.learning_rate > 0, "must be > 0"),
                  ("beta", self.beta >= 0, "must be >= 0"),
                  ("epochs", self.epochs > 0, "must be > 0"),
                  ("max_steps", self.max_steps >= 0, "must be >= 0"),
                  ("r", self.r >= 1, "must be at least 1"),
                  ("alpha", self.alpha >= 1, "must be at least 1"),
                  ("dropout", 0 <= self.dropout < 1, "must be within [0, 1)"),
                  ("target_modules", bool(self.target_modules), "must name a module"),
                  ("logging_steps", self.logging_steps >= 1, "must be at least 1"),
                  ("check_timeout_s", self.check_timeout_s > 0, "must be > 0"),
                  ("device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}")]
        for name, ok, why in checks:
            if not ok:
                raise TracetuneError(f"grpo {name} = {getattr(self, name)!r}: {why}")


def prompt_messages(task) -> list[dict]:
    """The conversational prompt of `task`: the direct workflow's first user message."""
    from tracetune.agents.workflow import IMPL_PROMPT

    return [{"role": "user", "content": IMPL_PROMPT.format(spec=task.spec)}]


def _prompt(task, repair, sandbox) -> list[dict]:
    """The prompt GRPO samples for `task`: the direct workflow's, or under `repair` (a
    RepairConfig) the repair agent's first request, with the tests' verdict on the buggy module
    when it shows the module."""
    if repair is None:
        return prompt_messages(task)
    from tracetune.agents.repair import first_messages, localize_module, run_tests

    tests = run_tests(task, task.buggy, sandbox) if repair.show_file else None
    suspects = localize_module(task, task.buggy, repair, sandbox)
    return [m.to_dict() for m in first_messages(task, repair, tests, suspects)]


def tests_passed_share(result) -> float:
    """The reward of one sandbox verdict: passed tests / tests collected (0..1). A run that
    collected or reported no test (no code, a syntax error, a failed import) is 0; a passing
    run that reported none (a plain script) is 1."""
    total = max(len(result.collected), len(result.tests))
    if total == 0:
        return 1.0 if result.passed else 0.0
    return sum(t.outcome == "passed" for t in result.tests) / total


class SandboxReward:
    """TRL reward function: each completion's share of its task's hidden tests passed.

    Called by GRPOTrainer with the batch's `completions` (conversational: a list of messages,
    the answer last) and the dataset's `task_id` column, one entry per completion, the
    `num_generations` completions of one prompt next to each other (TRL's RepeatSampler).
    Counts groups and zero-variance groups as it scores them."""

    __name__ = "tests_passed"  # TRL names a reward function's log keys by it

    def __init__(self, tasks: dict, sandbox, num_generations: int) -> None:
        self.tasks, self.sandbox, self.group = tasks, sandbox, num_generations
        self.groups = self.zero_std_groups = self.completions = 0
        self.history: list[float] = []
        self.last_mean: float | None = None
        """Mean reward of the last scored batch."""

    def score(self, texts: list[str], task_ids: list[str]) -> list[float]:
        """One reward per completion text (its task's id beside it)."""
        from tracetune.agents.extract import extract_code, sanitize
        from tracetune.agents.guards import MODULE
        from tracetune.sandbox import Job

        jobs = []
        for text, tid in zip(texts, task_ids):
            task = self.tasks[tid]
            code = sanitize(extract_code(text, task.names))
            jobs.append(Job.tests(task.tests, module=code, module_name=MODULE))
        return [tests_passed_share(r) for r in self.sandbox.map(jobs)]

    def __call__(self, prompts, completions, task_id, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rewards = self.score(texts, list(task_id))
        for i in range(0, len(rewards), self.group):
            chunk = rewards[i:i + self.group]
            if len(set(task_id[i:i + self.group])) != 1:
                raise TracetuneError("GRPO batch layout: a group mixes tasks (expected "
                                     f"{self.group} completions of one prompt side by side)")
            self.groups += 1
            self.zero_std_groups += max(chunk) == min(chunk)
        self.completions += len(rewards)
        self.history += rewards
        self.last_mean = sum(rewards) / len(rewards)
        return rewards


REPAIR_REWARDS = {"pass": 1.0, "valid_edit": 0.3, "tool_ok": 0.1}
"""The repair agent's reward for one message (module docstring): its tests pass, else a valid
edit, else a tool call that ran; anything else 0."""


class RepairReward(SandboxReward):
    """TRL reward function for the repair agent: each completion, the agent's first message of
    an episode under `config`, played as a one-message episode and rewarded by REPAIR_REWARDS
    (module docstring). Counts groups as SandboxReward does."""

    __name__ = "repair_first_message"

    def __init__(self, tasks: dict, sandbox, num_generations: int, config) -> None:
        super().__init__(tasks, sandbox, num_generations)
        self.config = dataclasses.replace(config, max_iters=1)

    def score(self, texts: list[str], task_ids: list[str]) -> list[float]:
        from concurrent.futures import ThreadPoolExecutor

        # Episodes wait on the sandbox's test runs: played side by side, as evaluation does.
        with ThreadPoolExecutor(max_workers=min(8, len(texts)) or 1) as pool:
            return list(pool.map(lambda pair: repair_reward(self.tasks[pair[1]], pair[0],
                                                            self.config, self.sandbox),
                                 zip(texts, task_ids)))


def as_decoded(text: str, config) -> str:
    """A sampled message as an episode's decoding would have ended it: at the driver's
    blank-line stop string, and under `config.constrained` where the first JSON object closes
    (the grammar's end), when the text holds one."""
    from tracetune.agents.repair import STOP

    text = text.split(STOP, 1)[0]
    if config.constrained:
        body = text.lstrip()
        try:
            _, end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            return text
        return body[:end]
    return text


def repair_reward(task, text: str, config, sandbox) -> float:
    """REPAIR_REWARDS of `text` as the first message of a repair episode of `task` under
    `config` (a RepairConfig; one message is played, whatever its max_iters)."""
    from tracetune.agents.repair import run_repair_episode
    from tracetune.models.common import Scripted
    from tracetune.types import SamplingParams

    class Said(Scripted):
        spec = "grpo-sample"

        def _text(self, request):
            return as_decoded(text, config)

    out = run_repair_episode(task, dataclasses.replace(config, max_iters=1), Said(), sandbox,
                             params=SamplingParams(), seed=0)
    if out.success:
        return REPAIR_REWARDS["pass"]
    if out.metrics["valid_edit"]:
        return REPAIR_REWARDS["valid_edit"]
    first = out.attempts[0].facts
    return REPAIR_REWARDS["tool_ok"] if first["kind"] == "tool_call" and first["tool_ok"] \
        else 0.0


def _skipping_trainer(base_cls, group: int):
    """GRPOTrainer whose zero-variance groups are left out of the loss: after scoring, the
    completions of a group whose advantages are all 0 (its rewards all equal) get a zero
    completion mask, and the batch's token count (the loss's normaliser) is recounted."""

    class SkipZeroStdGroups(base_cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            adv = out["advantages"]
            flat = adv if adv.dim() == 1 else adv[:, 0]
            keep = ~(flat.view(-1, group).abs() < 1e-6).all(dim=1)  # per group
            keep = keep.repeat_interleave(group).to(out["completion_mask"].dtype)
            out["completion_mask"] = out["completion_mask"] * keep.unsqueeze(1)
            out["num_items_in_batch"] = self.accelerator.gather(
                out["completion_mask"].sum()).sum()
            return out

    return SkipZeroStdGroups


def train_grpo(tasks: list, base: str, out: Path, config: GrpoConfig, *,
               init_adapter: Path | None = None, log: Callable[[str], None] | None = None,
               on_progress: Callable[[int, int, float | None], None] | None = None,
               repair=None) -> dict:
    """Train a LoRA adapter on `tasks` (funcs-style tasks with hidden tests, or the bugs of a
    repair suite) by GRPO from the sandbox's rewards and write it to `out` (module docstring).
    Starts from `init_adapter` (a PEFT adapter, e.g. the best round's) when given, else a fresh
    LoRA on `base`'s weights. Repair tasks are trained as the repair agent's first message under
    `repair` (a RepairConfig; default options when None); mixing repair and other tasks is
    refused.

    Returns the metadata written to OUT/recipe.META: rows (prompts), steps, train_seconds,
    completions, groups, zero_std_groups, reward_first / reward_last (mean reward of the first
    and last logged step), kl_last, completion_length_mean, config, versions. `on_progress(step,
    total, reward)` after each optimizer step. Raises TracetuneError for a bad config, no task
    with tests, or a non-empty `out`; NoSignal (a TracetuneError) for a training that left the
    adapter's weights unchanged (every group had equal rewards: nothing to learn from). Nothing
    is written then."""
    config.validate()
    tasks = [t for t in tasks if t.tests]
    if not tasks:
        raise TracetuneError("GRPO needs tasks with hidden tests (the reward runs them)")
    repairing = {t.is_repair for t in tasks}
    if len(repairing) > 1:
        raise TracetuneError("GRPO trains either repair tasks (the agent's first message) or "
                             "others (the direct workflow's answer), not both at once")
    if repairing == {True}:
        from tracetune.agents.configs import RepairConfig

        repair = repair if repair is not None else RepairConfig()
        repair.validate()
    else:
        repair = None
    out = Path(out)
    from tracetune.staging import check_output_dir

    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise TracetuneError(f"{out} is not empty; choose another output directory")

    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import GRPOConfig, GRPOTrainer

    from tracetune.models.hf import check_reachable
    from tracetune.models.resolve import hf_source, weight_options
    from tracetune.sandbox import Sandbox, SandboxConfig
    from tracetune.train.recipe import META, _staged, _version

    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TracetuneError("device=cuda but torch sees no CUDA device")
    source = hf_source(base)
    check_reachable(source)
    trust = weight_options(base).trust_remote_code
    transformers.set_seed(config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    dtype = torch.bfloat16 if cuda else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype,
                                                              trust_remote_code=trust)
    peft_config = None
    if init_adapter is not None:
        try:
            model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TracetuneError(f"adapter {init_adapter} does not fit {base}: {exc}") from exc
    else:
        peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha,
                                 lora_dropout=config.dropout,
                                 target_modules=list(config.target_modules),
                                 task_type="CAUSAL_LM")
    before = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    stamp = {"out": out.name, "base": base, "tasks": sorted(t.id for t in tasks),
             "init_adapter": str(init_adapter) if init_adapter else None,
             "config": json.loads(json.dumps(dataclasses.asdict(config))),
             **({"repair": dataclasses.asdict(repair)} if repair is not None else {})}
    sandbox = Sandbox(SandboxConfig(timeout_s=config.check_timeout_s))
    by_id = {t.id: t for t in tasks}
    reward = SandboxReward(by_id, sandbox, config.num_generations) if repair is None else \
        RepairReward(by_id, sandbox, config.num_generations, repair)
    with sandbox, _staged(out, stamp, resume=False) as work:
        dataset = Dataset.from_list([{"prompt": _prompt(t, repair, sandbox), "task_id": t.id}
                                     for t in tasks])
        batch = config.prompts_per_step * config.num_generations
        args = GRPOConfig(
            output_dir=str(work / "checkpoints"), per_device_train_batch_size=batch,
            gradient_accumulation_steps=1, num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            temperature=config.temperature, learning_rate=config.learning_rate,
            beta=config.beta, num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1, lr_scheduler_type="linear", warmup_steps=0,
            logging_steps=config.logging_steps, save_strategy="no", seed=config.seed,
            data_seed=config.seed, report_to="none", use_cpu=not cuda,
            bf16=cuda, gradient_checkpointing=False, dataloader_num_workers=0,
            disable_tqdm=on_progress is not None)
        log_path = work / GRPO_LOG
        callbacks = [_log_callback(log_path, reward, on_progress)]
        trainer = _skipping_trainer(GRPOTrainer, config.num_generations)(
            model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        if on_progress is not None:
            trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        after = {k: v.detach() for k, v in trainer.model.named_parameters() if "lora_" in k}
        changed = any(not torch.equal(before[k].to(v.device), v)
                      for k, v in after.items() if k in before) if before else \
            any(v.detach().any() for k, v in after.items() if "lora_B" in k)
        if not changed:
            raise NoSignal(
                f"GRPO left the adapter unchanged after {trainer.state.global_step} steps: "
                f"all {reward.groups} groups had equal rewards (nothing to learn from); raise "
                "temperature or num_generations, or start from a model that solves some tasks")
        trainer.model.save_pretrained(str(work))
        points = [json.loads(x) for x in log_path.read_text().splitlines()] \
            if log_path.is_file() else []
        meta = {"method": "grpo", "reward": reward.__name__, "base": base, "base_source": source,
                "init_adapter": str(init_adapter) if init_adapter else None,
                "rows": len(tasks), "steps": trainer.state.global_step,
                "train_seconds": round(seconds, 2), "completions": reward.completions,
                "groups": reward.groups, "zero_std_groups": reward.zero_std_groups,
                "reward_mean": sum(reward.history) / len(reward.history)
                if reward.history else None,
                "reward_first": points[0]["reward"] if points else None,
                "reward_last": points[-1]["reward"] if points else None,
                "kl_last": points[-1].get("kl") if points else None,
                "completion_length_mean": (sum(p["completion_length"] for p in points)
                                           / len(points)) if points else None,
                # the loss keys train.recipe's readers expect (first/last logged loss)
                "first_loss": points[0].get("loss") if points else None,
                "last_loss": points[-1].get("loss") if points else None,
                "config": dataclasses.asdict(config),
                "versions": {m: _version(m) for m in ("torch", "transformers", "trl", "peft")}}
        (work / META).write_text(json.dumps(meta, indent=2))
    if log is not None:
        log(f"GRPO: {meta['steps']} steps, {reward.completions} completions in {reward.groups} "
            f"groups, {reward.zero_std_groups} skipped (equal rewards), mean reward "
            f"{meta['reward_mean']:.3f}, {seconds:.0f} s")
    return meta


def _log_callback(path: Path, reward: SandboxReward,
                  on_progress: Callable[[int, int, float | None], None] | None):
    """A TrainerCallback writing GRPO_LOG lines from TRL's logged metrics (and the skipped-group
    count), and reporting progress."""
    from transformers import TrainerCallback

    keys = {"reward": "reward", "reward_std": "reward_std", "kl": "kl",
            "completion_length": "completions/mean_length",
            "clipped_ratio": "completions/clipped_ratio", "loss": "loss"}

    class GrpoLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "reward" not in logs:
                return
            line = {"step": state.global_step,
                    **{k: logs[v] for k, v in keys.items() if v in logs},
                    "groups": reward.groups, "zero_std_groups": reward.zero_std_groups}
            with path.open("a") as f:
                f.write(json.dumps(line) + "\n")

        def on_step_end(self, args, state, control, **kwargs):
            if on_progress is not None:
                on_progress(state.global_step, state.max_steps, reward.last_mean)

    return GrpoLog()
