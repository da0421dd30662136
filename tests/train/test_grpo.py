"""GRPO from sandbox rewards: the reward is the share of hidden tests passed, zero-variance groups
are skipped (masked out of the loss) and counted, and a miniature run on the embedded model on
the CPU changes the adapter and logs rewards, KL and completion lengths every step."""

from __future__ import annotations

import json

import pytest
import torch

from tracetune.errors import TracetuneError
from tracetune.sandbox import Sandbox
from tracetune.tasks import load_suite
from tracetune.train.grpo import (GRPO_LOG, GrpoConfig, SandboxReward, _skipping_trainer,
                                  train_grpo)
from tracetune.train.recipe import META


def _demo(*names):
    tasks = {t.id: t for t in load_suite("demo").tasks}
    return [tasks[f"demo/{n}"] for n in names]


def _answer(code: str) -> list[dict]:
    return [{"role": "assistant", "content": f"```python\n{code}\n```"}]


def test_the_reward_is_the_share_of_hidden_tests_passed():
    (task,) = _demo("is_even")
    half = "def is_even(n: int) -> bool:\n    return n in (0, 2, -4)"  # passes test_small only
    answers = [task.reference, half, "def is_even(n):\n    return (", "no code at all"]
    with Sandbox() as sandbox:
        reward = SandboxReward({task.id: task}, sandbox, num_generations=2)
        got = reward(prompts=[None] * 4, completions=[_answer(a) for a in answers],
                     task_id=[task.id] * 4)
    assert got[0] == 1.0 and got[2] == 0.0 and got[3] == 0.0
    assert 0 < got[1] < 1  # one of the three tests
    assert reward.groups == 2 and reward.zero_std_groups == 1  # (1, x) differ, (0, 0) do not


def test_a_group_of_mixed_tasks_is_refused():
    tasks = _demo("is_even", "reverse_string")
    with Sandbox() as sandbox:
        reward = SandboxReward({t.id: t for t in tasks}, sandbox, num_generations=2)
        with pytest.raises(TracetuneError, match="a group mixes tasks"):
            reward(prompts=[None] * 2, completions=[_answer("x = 1")] * 2,
                   task_id=[t.id for t in tasks])


def test_zero_variance_groups_are_masked_out_of_the_loss():
    class Accelerator:
        @staticmethod
        def gather(x):
            return x.reshape(1)

    class Base:  # what GRPOTrainer's scoring returns, for three groups of two
        accelerator = Accelerator()

        def _generate_and_score_completions(self, inputs):
            return {"advantages": torch.tensor([0.0, 0.0, 0.7, -0.7, 0.0, 0.0]),
                    "completion_mask": torch.ones(6, 3, dtype=torch.long),
                    "num_items_in_batch": torch.tensor(18)}

    out = _skipping_trainer(Base, group=2)()._generate_and_score_completions(None)
    assert out["completion_mask"].sum(dim=1).tolist() == [0, 0, 3, 3, 0, 0]
    assert int(out["num_items_in_batch"]) == 6


@pytest.mark.parametrize("field, value, message", [
    ("num_generations", 1, "at least 2"), ("temperature", 0.0, "must be > 0"),
    ("beta", -0.1, ">= 0"), ("device", "tpu", "one of auto, cpu, cuda")])
def test_a_bad_config_is_one_message(field, value, message):
    with pytest.raises(TracetuneError, match=f"grpo {field}.*{message}"):
        GrpoConfig(**{field: value}).validate()


def test_a_miniature_run_on_the_embedded_model_changes_the_adapter(tmp_path):
    tasks = _demo("is_even", "reverse_string")
    config = GrpoConfig(num_generations=4, prompts_per_step=2, max_completion_length=48,
                        max_steps=2, learning_rate=1e-4, seed=0)
    steps = []
    meta = train_grpo(tasks, "embedded", tmp_path / "grpo", config,
                      on_progress=lambda step, total, r: steps.append((step, total)))
    assert meta["steps"] == 2 and steps[-1] == (2, 2)
    assert meta["groups"] == 4 and meta["completions"] == 16
    assert 0 <= meta["zero_std_groups"] < meta["groups"]  # one group at least had a signal
    assert json.loads((tmp_path / "grpo" / META).read_text())["method"] == "grpo"
    assert (tmp_path / "grpo" / "adapter_config.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "grpo" / GRPO_LOG).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert {"reward", "reward_std", "kl", "completion_length", "zero_std_groups"} <= set(x)
