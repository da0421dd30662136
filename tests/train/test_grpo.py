"""GRPO from sandbox rewards: the reward is the share of hidden tests passed, zero-variance groups
are skipped (masked out of the loss) and counted, and a miniature run on the embedded model on
the CPU changes the adapter and logs rewards, KL and completion lengths every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tracetune.agents.configs import RepairConfig
from tracetune.errors import TracetuneError
from tracetune.sandbox import Sandbox
from tracetune.tasks import load_suite
from tracetune.train.grpo import (GRPO_LOG, GrpoConfig, RepairReward, SandboxReward, _prompt,
                                  _skipping_trainer, repair_reward, train_grpo)
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


# --- the repair agent: its first message, played as a one-message episode ----------------------

REPAIR_SUITE = Path(__file__).parents[1] / "data" / "repair_suite.toml"
DESIGN = RepairConfig(constrained=True, anchored_edits=True, show_file=True, edit_only=True)


def _edit(search, replace):
    return json.dumps({"type": "tool_call", "name": "edit", "args": {
        "rel_path": "maximum.py", "search": search, "replace": replace}})


@pytest.fixture(scope="module")
def maximum():
    return next(t for t in load_suite(str(REPAIR_SUITE)).tasks if t.id == "tiny/maximum")


@pytest.mark.parametrize("text, config, expected", [
    (_edit("if x < best:", "if x > best:"), DESIGN, 1.0),                  # the fix
    (_edit("if x < best:", "if x > best:") + "\n\nDone!", RepairConfig(), 1.0),  # stop string
    (_edit("if x < best:", "if x > best:") + " Done!", DESIGN, 1.0),         # the grammar's end
    (_edit("if x < best:", "if x > best:") + " Done!", RepairConfig(), 0.0),  # text after it
    (_edit("return best", "return best + 0"), DESIGN, 0.3),                 # valid, not the fix
    (_edit("return best", "return best +"), DESIGN, 0.1),                   # ran, no valid edit
    (_edit("if x < best:", "if x < best:"), DESIGN, 0.0),                   # changes nothing
    (_edit("while True:", "if x > best:"), DESIGN, 0.0),                    # search not there
    ('{"type": "tool_call", "name": "read_file", "args": {"rel_path": "maximum.py"}}',
     RepairConfig(), 0.1),                                                   # a call that ran
    ('{"type": "final", "message": "fixed"}', DESIGN, 0.0),
    ("I would change the comparison.", RepairConfig(), 0.0)])
def test_the_repair_reward_plays_the_message_as_the_agents_first(maximum, text, config,
                                                                 expected):
    with Sandbox() as sandbox:
        assert repair_reward(maximum, text, config, sandbox) == expected


def test_the_repair_prompt_is_the_episodes_first_request(maximum):
    """What GRPO samples from is what the agent is sent in an episode under the same options."""
    from tracetune.agents.repair import run_repair_episode
    from tracetune.agents.teachers import OracleModel
    from tracetune.types import SamplingParams

    seen = []

    class Recording:
        spec = "recording"

        def __init__(self, model):
            self.model = model

        def generate(self, request):
            seen.append([m.to_dict() for m in request.messages])
            return self.model.generate(request)

    with Sandbox() as sandbox:
        reward = RepairReward({maximum.id: maximum}, sandbox, 2, DESIGN)
        assert reward([None] * 2, [[{"role": "assistant", "content": _edit(
            "if x < best:", "if x > best:")}], [{"role": "assistant", "content": "no"}]],
            [maximum.id] * 2) == [1.0, 0.0]
        assert reward.groups == 1 and reward.zero_std_groups == 0
        run_repair_episode(maximum, DESIGN, Recording(OracleModel().bind(maximum)),
                           sandbox, params=SamplingParams(), seed=1)
        assert _prompt(maximum, DESIGN, sandbox) == seen[0]
    assert "TESTS NOW: [TESTS FAIL]" in seen[0][1]["content"]


def test_repair_and_other_tasks_are_not_trained_together(maximum, tmp_path):
    with pytest.raises(TracetuneError, match="not both at once"):
        train_grpo([maximum, *_demo("is_even")], "embedded", tmp_path / "g", GrpoConfig())


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
