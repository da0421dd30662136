"""Online EWC over LoRA (train.ewc): the Fisher, the state file, the penalty, and two rounds of
real training on the embedded model (CPU, a few steps each)."""

import json

import pytest
from test_train import make_dataset  # pytest puts tests/train on sys.path

from tracetune.errors import TracetuneError
from tracetune.train import ewc
from tracetune.train.config import load_config
from tracetune.train.recipe import train

LORA = {"r": 4, "alpha": 8, "batch_size": 2, "warmup_steps": 0,
        "target_modules": ["q_proj", "v_proj"]}  # dropout stays on: round 2 draws from the RNG


def make_second_dataset(path, n=4):
    """Round 2's data: other prompts and answers than make_dataset's."""
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    rows = [{"prompt": [{"role": "user", "content": f"Name the colour of box {i}."}],
             "completion": [{"role": "assistant", "content": f"mauve-{i} granite"}]}
            for i in range(n)]
    (path / "formats" / "sft.prompt_completion.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return path


def adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def loss_log(path):
    return [json.loads(x) for x in (path / "loss.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """Round 1 (writes its EWC state) and round 2 continued from it without EWC: the
    sequential baseline."""
    tmp = tmp_path_factory.mktemp("ewc")
    first = train(make_dataset(tmp / "a"), "embedded", tmp / "round1", load_config(
        None, **LORA, learning_rate=5e-3, epochs=2.0, ewc_fisher_samples=3))
    second = make_second_dataset(tmp / "b")
    plain = train(second, "embedded", tmp / "plain", load_config(
        None, **LORA, learning_rate=1e-3, epochs=2.0, init_adapter=str(first)))
    return {"tmp": tmp, "round1": first, "data2": second, "plain": plain}


def round2(rounds, name, **settings):
    """Round 2 as the `rounds` baseline trains it, with round 1's EWC state and `settings`."""
    config = load_config(None, **{**LORA, "learning_rate": 1e-3, "epochs": 2.0,
                                  "init_adapter": str(rounds["round1"]),
                                  "ewc_state": str(rounds["round1"] / ewc.STATE_FILE),
                                  **settings})
    lines = []
    out = train(rounds["data2"], "embedded", rounds["tmp"] / name, config, log=lines.append)
    return out, lines


# --- two rounds of training ---------------------------------------------------------------------

def test_round_one_writes_a_state_that_fits_its_adapter(rounds):
    import torch

    out = rounds["round1"]
    state = ewc.load_state(out / ewc.STATE_FILE)
    weights = adapter(out)
    # The adapter file drops PEFT's adapter name (".default") from the parameter names.
    assert {k.replace(".default", "") for k in state.fisher} == weights.keys()
    for name, f in state.fisher.items():
        saved = weights[name.replace(".default", "")]
        assert f.shape == saved.shape and (f >= 0).all()
        assert torch.equal(state.anchors[name], saved)  # anchors: the adapter as trained
    assert any(f.any() for f in state.fisher.values())
    assert (state.n_rounds, state.n_samples) == (1, 3)
    meta = json.loads((out / "tracetune_adapter.json").read_text())["ewc"]
    assert meta["fisher_samples"] == 3 and meta["fisher_seconds"] >= 0
    assert meta["first_penalty"] is None and meta["accumulate"] == "average"


def test_lambda_zero_trains_bit_for_bit_as_sequential(rounds):
    import torch

    out, _ = round2(rounds, "lambda0", ewc_lambda=0.0)
    plain, penalized = adapter(rounds["plain"]), adapter(out)
    assert plain.keys() == penalized.keys()
    assert all(torch.equal(plain[k], penalized[k]) for k in plain)
    lines = loss_log(out)
    assert [{k: v for k, v in x.items() if k not in ("task_loss", "ewc_penalty")}
            for x in lines] == loss_log(rounds["plain"])
    assert all(x["ewc_penalty"] == 0.0 and x["task_loss"] == pytest.approx(x["loss"], rel=1e-6)
               for x in lines)


def test_lambda_pulls_the_adapter_towards_the_anchors(rounds):
    state = ewc.load_state(rounds["round1"] / ewc.STATE_FILE)
    anchors = {k.replace(".default", ""): v for k, v in state.anchors.items()}
    fisher = {k.replace(".default", ""): v for k, v in state.fisher.items()}

    def distances(weights):  # (euclidean, Fisher-weighted squared) from theta*
        return (sum(float((w - anchors[k]).square().sum()) for k, w in weights.items()) ** 0.5,
                sum(float((fisher[k] * (w - anchors[k]).square()).sum())
                    for k, w in weights.items()))

    # Logged every 2 steps: step 1 starts at the anchors, so its penalty alone is 0.
    out, _ = round2(rounds, "lambda", ewc_lambda=1e4, ewc_fisher_samples=2, logging_steps=2)
    pulled, free = distances(adapter(out)), distances(adapter(rounds["plain"]))
    assert pulled[0] < free[0] and pulled[1] < 0.7 * free[1]
    lines = loss_log(out)
    assert len(lines) == 2
    assert all(x["task_loss"] > 0 and x["ewc_penalty"] > 0 for x in lines)
    assert all(x["loss"] == pytest.approx(x["task_loss"] + x["ewc_penalty"], rel=1e-5)
               for x in lines)
    meta = json.loads((out / "tracetune_adapter.json").read_text())["ewc"]
    assert meta["lambda"] == 1e4 and meta["fisher_samples"] == 2
    assert (meta["first_penalty"], meta["last_penalty"]) == (lines[0]["ewc_penalty"],
                                                             lines[-1]["ewc_penalty"])
    # average: round 1's Fisher and this round's, one round each
    new = ewc.load_state(out / ewc.STATE_FILE)
    assert (new.n_rounds, new.n_samples) == (2, 3 + 2)


def test_the_penalty_counts_once_per_optimizer_step_under_accumulation(rounds):
    # Two micro-batches per step: the trainer's loss (what is optimised) must be the task loss
    # plus the penalty once, not twice or half.
    out, _ = round2(rounds, "accumulated", ewc_lambda=1e4, batch_size=1, grad_accumulation=2,
                    logging_steps=2)
    lines = loss_log(out)
    assert len(lines) == 2 and all(x["ewc_penalty"] > 0 for x in lines)
    assert all(x["loss"] == pytest.approx(x["task_loss"] + x["ewc_penalty"], rel=1e-5)
               for x in lines)


def test_dpo_round_with_ewc(rounds):
    data = rounds["tmp"] / "dpo"
    make_second_dataset(data)
    pairs = [{"prompt": [{"role": "user", "content": f"Name the colour of box {i}."}],
              "chosen": [{"role": "assistant", "content": f"mauve-{i}"}],
              "rejected": [{"role": "assistant", "content": "I don't know."}]} for i in range(4)]
    (data / "formats" / "dpo.trl.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = train(data, "embedded", rounds["tmp"] / "dpo-out", load_config(
        None, **LORA, method="dpo", learning_rate=1e-3, epochs=1.0, logging_steps=2,
        init_adapter=str(rounds["round1"]), ewc_state=str(rounds["round1"] / ewc.STATE_FILE),
        ewc_lambda=1e4, ewc_fisher_samples=2, ewc_accumulate="replace"))
    lines = loss_log(out)
    assert lines and all(x["ewc_penalty"] > 0 for x in lines)
    assert all(x["loss"] == pytest.approx(x["task_loss"] + x["ewc_penalty"], rel=1e-5)
               for x in lines)
    assert ewc.load_state(out / ewc.STATE_FILE).n_rounds == 1


def test_a_state_of_another_model_is_refused_before_training(rounds, tmp_path):
    tiny = tiny_lora()
    path = tmp_path / "other.safetensors"
    ewc.save_state(ewc.combine(None, ewc.trainable(tiny), ewc.fisher_diagonal(tiny, ROWS),
                               2, "replace"), path)
    with pytest.raises(TracetuneError, match=r"ewc_state .*other.safetensors does not fit the "
                                             r"model's trainable parameters: .* missing") as info:
        train(rounds["data2"], "embedded", tmp_path / "out", load_config(
            None, **LORA, init_adapter=str(rounds["round1"]), ewc_state=str(path),
            ewc_lambda=1.0))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


# --- the pieces, on a tiny random model ---------------------------------------------------------

ROWS = [{"input_ids": [1, 5, 9, 3, 7, 2], "labels": [-100, -100, -100, 3, 7, 2]},
        {"input_ids": [4, 4, 8, 11, 6], "labels": [-100, -100, 8, 11, 6]}]


def tiny_lora(hidden=16):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2))
    # Random B (not PEFT's zeros) so that every LoRA matrix has a gradient.
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                           lora_dropout=0.5, init_lora_weights=False))


def test_fisher_is_the_mean_of_per_sample_squared_gradients():
    import torch

    model = tiny_lora()
    model.train()
    before = {k: v.clone() for k, v in ewc.trainable(model).items()}
    both = ewc.fisher_diagonal(model, ROWS)
    assert model.training and all(p.grad is None for p in ewc.trainable(model).values())
    assert all(torch.equal(before[k], v) for k, v in ewc.trainable(model).items())
    assert both.keys() == before.keys()
    assert all(f.shape == before[k].shape and (f >= 0).all() for k, f in both.items())
    assert all(f.any() for f in both.values())
    one, two = (ewc.fisher_diagonal(model, [r]) for r in ROWS)
    assert all(torch.allclose(both[k], (one[k] + two[k]) / 2) for k in both)
    # One row's: the square of the gradient of transformers' own per-token completion loss.
    model.eval()
    loss = model(input_ids=torch.tensor([ROWS[0]["input_ids"]]),
                 labels=torch.tensor([ROWS[0]["labels"]])).loss
    grads = torch.autograd.grad(loss, list(ewc.trainable(model).values()))
    assert all(torch.allclose(one[k], g.square(), rtol=1e-4, atol=1e-12)
               for k, g in zip(one, grads, strict=True))


def test_fisher_refuses_a_row_with_nothing_to_score():
    with pytest.raises(TracetuneError, match="row 2 has no completion token"):
        ewc.fisher_diagonal(tiny_lora(), [ROWS[0], {"input_ids": [1, 2, 3],
                                                    "labels": [-100, -100, -100]}])


def test_penalty_is_the_fisher_weighted_distance_and_exactly_zero_at_lambda_zero():
    import torch

    model = tiny_lora()
    params = ewc.trainable(model)
    torch.manual_seed(1)
    anchors = {k: p.detach() + torch.randn_like(p) for k, p in params.items()}
    fisher = {k: torch.rand_like(p) for k, p in params.items()}
    state = ewc.EwcState(anchors, fisher, n_rounds=1, n_samples=1)
    expected = sum(float((fisher[k] * (p.detach() - anchors[k]) ** 2).sum())
                   for k, p in params.items())
    assert ewc.penalty(model, state, 3.0).item() == pytest.approx(3 * expected, rel=1e-5)
    zero = ewc.penalty(model, state, 0.0)
    assert zero.item() == 0.0
    grads = torch.autograd.grad(zero, list(params.values()))
    assert all(not g.any() for g in grads)
    at_anchors = ewc.EwcState({k: p.detach().clone() for k, p in params.items()}, fisher, 1, 1)
    assert ewc.penalty(model, at_anchors, 5.0).item() == 0.0
    assert ewc.anchor_gap(model, at_anchors) == 0.0 < ewc.anchor_gap(model, state)


def test_replace_and_average_on_hand_made_states():
    import torch

    shape = (2, 3)
    prev = ewc.EwcState({"w": torch.zeros(shape)}, {"w": torch.full(shape, 4.0)},
                        n_rounds=3, n_samples=30)
    anchors, new = {"w": torch.ones(shape)}, {"w": torch.full(shape, 8.0)}
    replaced = ewc.combine(prev, anchors, new, 5, "replace")
    assert torch.equal(replaced.fisher["w"], new["w"]) and torch.equal(replaced.anchors["w"],
                                                                       anchors["w"])
    assert (replaced.n_rounds, replaced.n_samples) == (1, 5)
    averaged = ewc.combine(prev, anchors, new, 5, "average")
    assert torch.equal(averaged.fisher["w"], torch.full(shape, (4.0 * 3 + 8.0) / 4))
    assert torch.equal(averaged.anchors["w"], anchors["w"])
    assert (averaged.n_rounds, averaged.n_samples) == (4, 35)
    first = ewc.combine(None, anchors, new, 5, "average")
    assert torch.equal(first.fisher["w"], new["w"]) and first.n_rounds == 1
    with pytest.raises(TracetuneError, match="1 missing .*w"):
        ewc.combine(prev, {"v": torch.ones(shape)}, {"v": new["w"]}, 5, "average")
    with pytest.raises(TracetuneError, match="ewc_accumulate must be one of replace, average"):
        ewc.combine(prev, anchors, new, 5, "sum")


def test_state_round_trip_and_mismatches(tmp_path):
    import torch
    from safetensors.torch import save_file

    model = tiny_lora()
    state = ewc.combine(None, ewc.trainable(model), ewc.fisher_diagonal(model, ROWS), 2,
                        "average")
    path = tmp_path / ewc.STATE_FILE
    ewc.save_state(state, path)
    back = ewc.load_state(path, model)
    assert (back.n_rounds, back.n_samples) == (1, 2)
    assert back.anchors.keys() == state.anchors.keys()
    assert all(torch.equal(back.anchors[k], state.anchors[k]) and
               torch.equal(back.fisher[k], state.fisher[k]) for k in state.anchors)

    wider = tiny_lora(hidden=32)
    with pytest.raises(TracetuneError, match=r"does not fit the model's trainable parameters: "
                                             r"parameters \d+ of another shape"):
        ewc.load_state(path, wider)
    fewer = ewc.EwcState(*(dict(list(d.items())[1:]) for d in (state.anchors, state.fisher)),
                         1, 2)
    ewc.save_state(fewer, tmp_path / "fewer.safetensors")
    with pytest.raises(TracetuneError, match=r"parameters 1 missing \(base_model\.model\."):
        ewc.load_state(tmp_path / "fewer.safetensors", model)
    bad = ewc.EwcState(state.anchors, {k: -v - 1 for k, v in state.fisher.items()}, 1, 2)
    ewc.save_state(bad, tmp_path / "bad.safetensors")
    with pytest.raises(TracetuneError, match="negative or non-finite"):
        ewc.load_state(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "adapter.safetensors"))
    with pytest.raises(TracetuneError, match="is not a tracetune EWC state"):
        ewc.load_state(tmp_path / "adapter.safetensors")
    with pytest.raises(TracetuneError, match="does not exist"):
        ewc.load_state(tmp_path / "missing.safetensors")


def test_loss_warnings_for_the_seeds_two_failures():
    assert ewc.loss_warnings([{"step": 1, "loss": 0.0}, {"step": 2, "loss": 0.0}]) == [
        ("warning: the task loss logged is exactly 0.0 at all 2 logged steps: the loss is not "
         "reaching the log, or nothing is being trained")]
    assert ewc.loss_warnings([{"step": 1, "loss": 0.0}, {"step": 2, "loss": 0.1}]) == []
    ok = [{"step": 1, "loss": 2.0, "task_loss": 2.0, "ewc_penalty": 0.0},
          {"step": 2, "loss": 102.0, "task_loss": 2.0, "ewc_penalty": 100.0}]
    assert ewc.loss_warnings(ok) == []  # 50x: below the threshold
    drowned = ok + [{"step": 3, "loss": 301.0, "task_loss": 1.0, "ewc_penalty": 300.0},
                    {"step": 4, "loss": 401.0, "task_loss": 1.0, "ewc_penalty": 400.0}]
    (line,) = ewc.loss_warnings(drowned)
    assert "300 is over 100x the task loss 1 at step 3" in line
    assert len(ewc.loss_warnings([{"step": 1, "loss": 5.0, "task_loss": 0.0,
                                   "ewc_penalty": 5.0}])) == 2


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"ewc_lambda": -1.0}, "ewc_lambda must be a finite number >= 0, not -1.0"),
    ({"ewc_lambda": float("nan")}, "ewc_lambda must be a finite number >= 0"),
    ({"ewc_lambda": 10.0}, "ewc_lambda = 10 needs ewc_state"),
    ({"ewc_state": "/a/ewc_state.safetensors"}, "ewc_state needs init_adapter"),
    ({"ewc_fisher_samples": -5}, "ewc_fisher_samples must be 0 or more, not -5"),
    ({"ewc_accumulate": "sum"}, "ewc_accumulate must be one of replace, average, not 'sum'"),
])
def test_ewc_settings_are_checked(settings, message):
    with pytest.raises(TracetuneError, match=message) as info:
        load_config(None, **settings)
    assert "\n" not in str(info.value)


def test_ewc_settings_from_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\ninit_adapter = '/r1'\newc_state = '/r1/ewc_state.safetensors'\n"
                    "ewc_lambda = 100\newc_fisher_samples = 50\newc_accumulate = 'replace'\n")
    cfg = load_config(path)
    assert (cfg.ewc_lambda, cfg.ewc_fisher_samples, cfg.ewc_accumulate) == (100.0, 50, "replace")
    defaults = load_config(None)
    assert (defaults.ewc_lambda, defaults.ewc_state, defaults.ewc_fisher_samples,
            defaults.ewc_accumulate) == (0.0, None, 0, "average")
