"""The replay buffer keeps exactly its size and evicts by its priority; `mix` honours the ratio;
`row_losses` scores completions on the embedded model (CPU) as the trainer tokenizes them."""

import hashlib
import json
import math
import random

import pytest

from tracetune.errors import TracetuneError
from tracetune.train.replay import (PRIORITIES, Example, ReplayBuffer, mix, parse_ratio,
                                    row_losses)


def row(i, prompt=None, answer=None, task=None) -> dict:
    """A canonical SFT row (tracetune.datasets.rows), as mined."""
    return {"id": f"r{i}", "kind": "sft", "step": "impl", "task": task or f"t{i}",
            "tiers": ["passed"], "prompt": [{"role": "user", "content": prompt or
                                             f"Write function number {i}."}],
            "completion": {"role": "assistant", "content": answer or f"def f{i}(): return {i}"},
            "code": f"def f{i}(): return {i}", "provenance": {"run_id": "run"}}


def ex(i, *, session=0, round=1, confidence=1.0, **kw) -> Example:
    r = row(i, **kw)
    return Example.of(r, task=r["task"], session=session, round=round, confidence=confidence)


def keys(examples) -> set[str]:
    return {e.key for e in examples}


# --- Example -------------------------------------------------------------------------------------

def test_example_key_text_and_copy():
    r = row(1, prompt="Sort the list.", answer="sorted(xs)")
    e = Example.of(r, task="t1", session=2, round=3, confidence=0.5)
    assert e.key == hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()
    assert e.text == "Sort the list.\nsorted(xs)"
    r["prompt"][0]["content"] = "changed"  # the caller's dict is not the buffer's
    assert e.row["prompt"][0]["content"] == "Sort the list." and e.text.startswith("Sort")
    # TRL's prompt-completion and messages rows are SFT rows too.
    trl = {"prompt": [{"role": "user", "content": "a"}],
           "completion": [{"role": "assistant", "content": "b"}]}
    msgs = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert Example.of(trl, task="t", session=0, round=0, confidence=1).text == "a\nb"
    assert Example.of(msgs, task="t", session=0, round=0, confidence=0).text == "a\nb"
    assert len({e, Example.of(row(1, prompt="Sort the list.", answer="sorted(xs)"), task="t1",
                              session=2, round=3, confidence=0.5)}) == 1


@pytest.mark.parametrize("bad, match", [
    ({"prompt": "text", "completion": "text"}, "list of chat messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "assistant's turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "prompt must be a non-empty"),
    ({"instruction": "a", "output": "b"}, "needs prompt and completion"),
    ({**row(0), "provenance": {"t": object()}}, "not JSON"),
])
def test_example_refuses_rows_that_are_not_sft_chat_rows(bad, match):
    with pytest.raises(TracetuneError, match=match):
        Example.of(bad, task="t", session=0, round=0, confidence=1.0)


@pytest.mark.parametrize("field, value", [("confidence", 1.5), ("confidence", -0.1),
                                          ("confidence", math.nan), ("session", -1),
                                          ("round", 1.0)])
def test_example_refuses_bad_metadata(field, value):
    settings = {"task": "t", "session": 0, "round": 0, "confidence": 1.0, field: value}
    with pytest.raises(TracetuneError, match=field):
        Example.of(row(0), **settings)


# --- the buffer ----------------------------------------------------------------------------------

def losses_of(examples) -> dict[str, float]:
    """A loss per example (any: only the sizes are checked with it)."""
    return {e.key: (int(e.key[:8], 16) % 1000) / 100 for e in examples}


@pytest.mark.parametrize("priority", PRIORITIES)
def test_every_priority_holds_exactly_min_of_size_and_distinct_examples(priority):
    rng = random.Random(7)
    buffer = ReplayBuffer(5, priority)
    seen: dict[str, Example] = {}
    for rnd in range(1, 7):
        # Fresh rows and some re-added ones (duplicates by key) in every batch.
        batch = [ex(rng.randrange(12), session=rnd, round=rnd, confidence=rng.random(),
                    answer=f"def f(): return {n}" if n % 3 else None)
                 for n in range(rng.randrange(0, 5))]
        pool = {e.key for e in buffer.examples} | keys(batch)
        seen.update({e.key: e for e in batch})
        evicted = buffer.add(batch, losses=losses_of([*buffer.examples, *batch]))
        assert len(buffer) == min(5, len(seen)) == len(buffer.examples)
        assert keys(evicted) | keys(buffer.examples) == pool
        assert not keys(evicted) & keys(buffer.examples)
        assert len(evicted) == len(pool) - len(buffer)


def test_recency_keeps_the_newest_by_round_then_session_then_insertion():
    buffer = ReplayBuffer(3, "recency")
    old = [ex(0, round=1, session=5), ex(1, round=2, session=0)]
    assert buffer.add(old) == []
    late_session = ex(2, round=2, session=3)
    first, second = ex(3, round=2, session=1), ex(4, round=2, session=1)
    evicted = buffer.add([late_session, first, second])
    # round 1 < round 2 (its session 5 does not count first); then session 0 < 1 < 3.
    assert keys(evicted) == keys(old)
    assert keys(buffer.examples) == keys([late_session, first, second])
    assert keys(buffer.add([ex(5, round=2, session=1)])) == {first.key}  # inserted earlier
    assert [e.key for e in buffer.examples] == [late_session.key, second.key,
                                                ex(5, round=2, session=1).key]


def test_difficulty_keeps_the_highest_losses_and_needs_all_of_them():
    buffer = ReplayBuffer(2, "difficulty")
    a, b, c, d = (ex(i) for i in range(4))
    buffer.add([a, b], losses={a.key: 0.5, b.key: 2.0})
    evicted = buffer.add([c, d], losses={a.key: 3.0, b.key: 0.1, c.key: 1.0, d.key: 2.5})
    assert keys(buffer.examples) == {a.key, d.key} and keys(evicted) == {b.key, c.key}
    e = ex(9)
    with pytest.raises(TracetuneError, match="1 of 3 have none"):
        buffer.add([e], losses={a.key: 1.0, d.key: 1.0})  # the held ones need one too
    with pytest.raises(TracetuneError, match="needs the loss"):
        buffer.add([e])
    with pytest.raises(TracetuneError, match="finite"):
        buffer.add([e], losses={a.key: 1.0, d.key: math.nan, e.key: 1.0})
    assert keys(buffer.examples) == {a.key, d.key}  # a refused add changes nothing


def test_confidence_keeps_the_highest_then_the_newest():
    buffer = ReplayBuffer(3, "confidence")
    low, high = ex(0, confidence=0.2, round=3), ex(1, confidence=0.9, round=1)
    tie_old, tie_new = ex(2, confidence=0.5, round=1), ex(3, confidence=0.5, round=2)
    mid = ex(4, confidence=0.6, round=1)
    evicted = buffer.add([low, high, tie_old, tie_new, mid])
    assert keys(buffer.examples) == {high.key, mid.key, tie_new.key}
    assert keys(evicted) == {low.key, tie_old.key}


CLUSTERS = {
    "json": "parse the json config file and read the settings keys",
    "sort": "sort a list of integers in descending numeric order quickly",
    "http": "send an http request to the server and retry after timeouts",
    "date": "format calendar dates as iso week strings with zones",
    "tree": "walk binary tree nodes depth first collecting leaf labels",
}
VARIANTS = ("please", "carefully", "now", "today")


def near_duplicates(name: str, variants=VARIANTS) -> list[Example]:
    """Rows of one task differing by a word: a cluster of near-duplicates."""
    out = []
    for variant in variants:
        r = row(0, prompt=f"{CLUSTERS[name]} {variant}", answer=f"def {name}_solution(): ...",
                task=name)
        out.append(Example.of(r, task=name, session=0, round=1, confidence=1.0))
    return out


def test_diversity_keeps_one_of_each_near_duplicate_cluster():
    examples = [e for name in CLUSTERS for e in near_duplicates(name)]  # cluster by cluster
    buffer = ReplayBuffer(5, "diversity")
    evicted = buffer.add(examples)
    assert sorted(e.task for e in buffer.examples) == sorted(CLUSTERS)
    assert len(evicted) == 15
    # Recency, on the same additions, keeps the last five: the test tells them apart.
    recency = ReplayBuffer(5, "recency")
    recency.add(examples)
    assert {e.task for e in recency.examples} == {"date", "tree"}
    # The choice depends on the examples, not on the order they came in.
    shuffled = ReplayBuffer(5, "diversity")
    shuffled.add(random.Random(3).sample(examples, len(examples)))
    assert keys(shuffled.examples) == keys(buffer.examples)


def test_diversity_keeps_rare_tasks_beside_a_frequent_one():
    many = near_duplicates("json", [f"variant{i}" for i in range(10)])
    rare = near_duplicates("sort", ["once"]) + near_duplicates("http", ["once"])
    buffer = ReplayBuffer(3, "diversity")
    evicted = buffer.add(many) + buffer.add(rare)
    assert sorted(e.task for e in buffer.examples) == ["http", "json", "sort"]
    assert {e.task for e in evicted} == {"json"} and len(evicted) == 9


def test_a_duplicate_replaces_the_older_copy():
    buffer = ReplayBuffer(2, "recency")
    a, b = ex(0, round=1), ex(1, round=2)
    buffer.add([a, b])
    a_again = ex(0, round=3, session=4, confidence=0.3)
    assert a_again.key == a.key
    assert buffer.add([a_again]) == []  # the replaced copy is not an eviction
    assert len(buffer) == 2
    assert [(e.key, e.round, e.session) for e in buffer.examples] == \
        [(b.key, 2, 0), (a.key, 3, 4)]  # re-added: newest, with the new copy's metadata
    evicted = buffer.add([ex(2, round=3), ex(2, round=3)])  # twice in one batch: once
    assert keys(evicted) == {b.key} and len(buffer) == 2


@pytest.mark.parametrize("priority", PRIORITIES)
def test_json_round_trip_restores_the_exact_buffer(priority):
    buffer = ReplayBuffer(3, priority, seed=11)
    first = [ex(i, round=1, session=i, confidence=i / 10) for i in range(4)]
    buffer.add(first, losses=losses_of(first))
    restored = ReplayBuffer.from_json(buffer.to_json())
    assert restored.to_json() == buffer.to_json()
    assert list(restored.examples) == list(buffer.examples)
    assert (restored.size, restored.priority, restored.seed) == (3, priority, 11)
    assert restored.sample(2, seed=5) == buffer.sample(2, seed=5)
    more = [ex(i, round=2, session=i, confidence=1 - i / 10) for i in range(2, 7)]
    scores = losses_of([*buffer.examples, *more])
    assert restored.add(more, losses=scores) == buffer.add(more, losses=scores)
    assert restored.to_json() == buffer.to_json()


def test_from_json_refuses_damaged_documents():
    buffer = ReplayBuffer(2, "recency")
    buffer.add([ex(0)])
    doc = json.loads(buffer.to_json())
    with pytest.raises(TracetuneError, match="not a replay buffer"):
        ReplayBuffer.from_json("{not json")
    with pytest.raises(TracetuneError, match="version"):
        ReplayBuffer.from_json(json.dumps({**doc, "version": 99}))
    doc["examples"][0]["row"]["completion"]["content"] = "edited"
    with pytest.raises(TracetuneError, match="does not match its key"):
        ReplayBuffer.from_json(json.dumps(doc))


@pytest.mark.parametrize("size, priority, match", [
    (0, "recency", "at least 1"), (-3, "recency", "at least 1"), ("4", "recency", "at least 1"),
    (4, "random", "recency, difficulty, diversity, confidence"),
])
def test_bad_settings(size, priority, match):
    with pytest.raises(TracetuneError, match=match):
        ReplayBuffer(size, priority)


def test_sample_is_deterministic_without_replacement():
    buffer = ReplayBuffer(20, "recency", seed=1)
    buffer.add([ex(i) for i in range(20)])
    draw = buffer.sample(8, seed=4)
    assert draw == buffer.sample(8, seed=4) and len(keys(draw)) == 8
    assert keys(draw) <= keys(buffer.examples)
    assert draw != buffer.sample(8, seed=5)
    assert draw != ReplayBuffer.from_json(buffer.to_json().replace('"seed": 1', '"seed": 2')) \
        .sample(8, seed=4)  # the buffer's own seed counts too
    assert buffer.sample(50, seed=4) == list(buffer.examples) and buffer.sample(0, seed=4) == []
    with pytest.raises(TracetuneError, match=">= 0"):
        buffer.sample(-1, seed=0)


# --- mix -----------------------------------------------------------------------------------------

def full_buffer(n: int) -> ReplayBuffer:
    buffer = ReplayBuffer(max(n, 1), "recency")
    buffer.add([ex(100 + i, round=1) for i in range(n)])
    return buffer


@pytest.mark.parametrize("ratio, new, held, replayed", [
    ("1:1", 4, 10, 4), ("2:1", 4, 10, 2), ("1:0", 4, 10, 0), ("1:3", 4, 10, 10),
    ("1:2", 4, 3, 3),  # fewer: the buffer holds only 3
    ("2:1", 3, 10, 2),  # 1.5 rounds half up
    ("4:1", 2, 10, 1),  # 0.5 rounds half up
    ("1:1", 0, 10, 0), ("1:1", 4, 0, 0),
])
def test_mix_sizes(ratio, new, held, replayed):
    fresh = [ex(i, round=2) for i in range(new)]
    buffer = full_buffer(held)
    rows = mix(fresh, buffer, ratio, seed=0)
    ids = [r["id"] for r in rows]
    assert len(rows) == new + replayed and len(set(ids)) == len(ids)
    assert {e.row["id"] for e in fresh} <= set(ids)
    assert set(ids) - {e.row["id"] for e in fresh} <= {e.row["id"] for e in buffer.examples}


def test_mix_is_shuffled_by_seed_and_skips_replaying_a_new_row():
    fresh = [ex(i, round=2) for i in range(6)]
    buffer = full_buffer(10)
    a = mix(fresh, buffer, "1:1", seed=3)
    assert a == mix(fresh, buffer, "1:1", seed=3)
    assert a != mix(fresh, buffer, "1:1", seed=4)
    assert [r["id"] for r in a] != [e.row["id"] for e in fresh] + [r["id"] for r in a[6:]]
    a[0]["id"] = "changed"  # the rows are copies
    assert "changed" not in {e.row["id"] for e in [*fresh, *buffer.examples]}
    # A new example the buffer already holds is trained on once, not also replayed.
    # Nothing to replay (an empty buffer): the new rows, in their order.
    assert [r["id"] for r in mix(fresh, ReplayBuffer(4, "recency"), "1:1", seed=3)] == \
        [e.row["id"] for e in fresh]
    small = ReplayBuffer(2, "recency")
    small.add([fresh[0], ex(50)])
    rows = mix(fresh[:2], small, "1:1", seed=0)
    assert sorted(r["id"] for r in rows) == ["r0", "r1", "r50"]


@pytest.mark.parametrize("ratio", ["1", "0:1", "a:b", "1:-1", "1.5:1", "", "1:1:1", None])
def test_bad_ratios(ratio):
    with pytest.raises(TracetuneError, match="new:replay"):
        parse_ratio(ratio)
    with pytest.raises(TracetuneError, match="new:replay"):
        mix([ex(0)], full_buffer(2), ratio, seed=0)


def test_good_ratios_parse():
    assert parse_ratio("1:1") == (1, 1) and parse_ratio(" 2 : 1 ") == (2, 1)
    assert parse_ratio("1:0") == (1, 0)


# --- row_losses (the embedded model, CPU) --------------------------------------------------------

ROWS = [row(0, prompt="Say the secret word number 0.", answer="zebra-0 quartz"),
        row(1, prompt="Say hello.", answer="Hello! How can I help you today?"),
        row(2, prompt="Count to three.", answer="one two three four five six seven eight")]


def test_row_losses_are_finite_positive_in_row_order_and_an_adapter_changes_them(tmp_path):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from tracetune.models.resolve import hf_source

    source = hf_source("embedded")
    base = row_losses(None, "embedded", ROWS + ROWS[::-1], batch_size=4)
    assert len(base) == 6 and all(math.isfinite(x) and x > 0 for x in base)
    # Batched with other rows or alone, forwards or backwards: each row's own loss.
    assert base[:3] == pytest.approx(base[3:][::-1], rel=1e-4)
    assert len({round(x, 3) for x in base[:3]}) == 3

    # The mean over the completion tokens, as the model's own loss computes it with the
    # trainer's labels (prompt tokens at -100).
    tok = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    prompt = ROWS[1]["prompt"]
    p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                    return_dict=True)["input_ids"]
    ids = tok.apply_chat_template(prompt + [ROWS[1]["completion"]], tokenize=True,
                                  return_dict=True)["input_ids"]
    assert ids[:len(p_ids)] == p_ids
    labels = [-100] * len(p_ids) + ids[len(p_ids):]
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert base[1] == pytest.approx(float(expected), rel=1e-4)

    # An adapter (random B: it changes the model without training) changes every loss.
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    lora.save_pretrained(str(tmp_path / "adapter"))
    adapted = row_losses(tmp_path / "adapter", "embedded", ROWS)
    assert all(math.isfinite(x) and x > 0 for x in adapted)
    assert all(abs(a - b) > 1e-3 for a, b in zip(adapted, base[:3]))


def test_row_losses_refuses_bad_input(tmp_path):
    assert row_losses(None, "embedded", []) == []
    with pytest.raises(TracetuneError, match="row 2: .*needs prompt and completion"):
        row_losses(None, "embedded", [ROWS[0], {"text": "x"}])
    with pytest.raises(TracetuneError, match="no completion token within max_seq_len 8"):
        row_losses(None, "embedded", ROWS[:1], max_seq_len=8)
    with pytest.raises(TracetuneError, match="adapter directory not found"):
        row_losses(tmp_path / "missing", "embedded", ROWS)
    with pytest.raises(TracetuneError, match="pass the PEFT adapter"):
        row_losses(None, f"embedded,lora={tmp_path / 'x.gguf'}", ROWS)
