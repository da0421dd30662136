"""The mined row type: its JSON keys (in order), its ids, and the combinations it refuses."""

import json

import pytest

from tracetune.datasets.rows import KINDS, Row, row_id

PROMPT = [{"role": "user", "content": "Write double(x)."}]
GOOD = {"role": "assistant", "content": "```python\ndef double(x):\n    return 2 * x\n```"}
BAD = {"role": "assistant", "content": "nope"}
PROV = {"source": "tracetune_run", "run_id": "r1", "task": "t", "trial": 0, "attempt": 1,
        "step": "impl", "model": "embedded", "episode_seed": 3, "guard_result": "PASS",
        "timestamp": "2023-11-14T22:13:20Z"}


def test_row_ids_are_those_of_the_previous_release():
    # Literal ids computed by the previous release's miner for the same content: a change here
    # would silently break dedup across datasets and every reference to a row by id.
    assert row_id("sft", PROMPT, GOOD) == "40808f26e5180019"
    assert row_id("dpo", PROMPT, GOOD, BAD) == "40c4f9c9f3c710e6"
    assert row_id("sft", PROMPT, GOOD, 3) == "38bcee75c2047cd9"


@pytest.mark.parametrize("kind", ["sft", "fix"])
def test_sft_and_fix_rows_keep_their_json_keys_in_order(kind):
    row = Row(id="x", kind=kind, step="impl", task="t", tiers=["workflow"], prompt=PROMPT,
              completion=GOOD, code="c", provenance=PROV)
    d = row.to_dict()
    assert list(d) == ["id", "kind", "step", "task", "tiers", "prompt", "completion", "code",
                       "provenance"]
    assert d["completion"] == GOOD and d["provenance"] == PROV and d["tiers"] == ["workflow"]
    assert row.targets == [GOOD]


def test_dpo_rows_keep_their_json_keys_in_order():
    row = Row(id="x", kind="dpo", step="impl", task="t", tiers=[], prompt=PROMPT, chosen=GOOD,
              rejected=BAD, code="c", provenance={**PROV, "rejected": PROV})
    d = row.to_dict()
    assert list(d) == ["id", "kind", "step", "task", "tiers", "prompt", "chosen", "rejected",
                       "code", "provenance"]
    assert (d["chosen"], d["rejected"]) == (GOOD, BAD)
    assert row.targets == [GOOD, BAD]
    # The JSON line written to rows/dpo.jsonl (ensure_ascii=False, as the dataset writer does).
    assert json.dumps(d, ensure_ascii=False).startswith('{"id": "x", "kind": "dpo", "step": ')


def test_rows_refuse_targets_of_another_kind():
    DPO_ONLY = r"kind dpo needs chosen and rejected \(and no completion\)"
    assert KINDS == ("sft", "dpo", "fix")
    with pytest.raises(ValueError, match="unknown row kind 'pair'"):
        Row(id="x", kind="pair", step="s", task="t", tiers=[], prompt=PROMPT, code="",
            provenance={}, completion=GOOD)
    with pytest.raises(ValueError, match=DPO_ONLY):
        Row(id="x", kind="dpo", step="s", task="t", tiers=[], prompt=PROMPT, code="",
            provenance={}, chosen=GOOD)
    with pytest.raises(ValueError, match=DPO_ONLY):
        Row(id="x", kind="dpo", step="s", task="t", tiers=[], prompt=PROMPT, code="",
            provenance={}, chosen=GOOD, rejected=BAD, completion=GOOD)
    with pytest.raises(ValueError, match=r"kind sft needs a completion \(and no chosen"):
        Row(id="x", kind="sft", step="s", task="t", tiers=[], prompt=PROMPT, code="",
            provenance={})
    with pytest.raises(ValueError, match=r"kind fix needs a completion \(and no chosen"):
        Row(id="x", kind="fix", step="s", task="t", tiers=[], prompt=PROMPT, code="",
            provenance={}, completion=GOOD, chosen=GOOD)
