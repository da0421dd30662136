"""Mining across the store upgrade: a v2 store (agent facts inside guards[0].details), upgraded on
open, mines to exactly the dataset files of the same episodes written by today's Store, and both
to exactly the files the previous release's miner wrote from that v2 store."""

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

from tracetune.datasets.build import FORMATS_DIR, ROWS_DIR, MineConfig, mine


def _legacy():
    # The fixture builder lives beside the store tests; share one module object with them.
    if "legacy_stores" not in sys.modules:
        path = Path(__file__).parents[1] / "traces" / "legacy_stores.py"
        spec = importlib.util.spec_from_file_location("legacy_stores", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["legacy_stores"] = module
        spec.loader.exec_module(module)
    return sys.modules["legacy_stores"]


legacy = _legacy()

BASE = {"tokenizer": None, "leakage_suites": (), "allow_heldout": True}
CONFIGS = {
    "default": {"kinds": ("sft", "dpo", "fix")},
    "every_step": {"kinds": ("sft", "dpo", "fix"),
                   "tiers": {"impl": (), "g_test": (), "g_impl": (), "repair": ()}},
    "unfiltered": {"unfiltered": 6, "seed": 1},
}

# sha256 of each file the previous release's miner wrote from the v2 fixture store (same
# episodes, same configs): the bytes a dataset must keep. They change only if the fixture
# (legacy_stores.episodes) does; then regenerate them with the previous release's miner, never
# with this one.
PREVIOUS_RELEASE = {
    "default": {
        "rows/dpo.jsonl":
            "3c649bd48a0b56cd02f44881513a12ff9c36b44d12e555b34729d13f07d8cc6d",
        "rows/fix.jsonl":
            "a487b1bd123c012a068c871b2227882b77c03c8657bf227ae820b3f5c30ce70f",
        "rows/sft.jsonl":
            "00aa73d56cc81dcd67ef9209688609e0ec4697c6754f3dcae62243726cb92df9",
        "formats/dpo.together.jsonl":
            "1d4fb3fad02493cbe24c0a208a3a53e59079675a588f4bf6303382a83e9a5d4b",
        "formats/dpo.trl.jsonl":
            "17d11b4f166450b2dbd55a0374835f13ce4bfbe20654247892a92d6f8a084653",
        "formats/sft.alpaca.jsonl":
            "1462f1b1ad2a00af095e83a1f1e441974ca173e21b1a16e1dab6fb80ab2d9a13",
        "formats/sft.messages.jsonl":
            "a8f341b07d36b0948ad78e3a808deb6543c1c35c9f9df3965ebe93491105a9ae",
        "formats/sft.prompt_completion.jsonl":
            "4a9ff778e5368bc5e9f42afd518be5fa42e270c6fd1ca8b059016b573a469ee5",
    },
    "every_step": {
        "rows/dpo.jsonl":
            "3c649bd48a0b56cd02f44881513a12ff9c36b44d12e555b34729d13f07d8cc6d",
        "rows/fix.jsonl":
            "a487b1bd123c012a068c871b2227882b77c03c8657bf227ae820b3f5c30ce70f",
        "rows/sft.jsonl":
            "574f8fb037ecf403b85793af950a485b5290cb7aa66f465cf05b2762ef6fd44e",
        "formats/dpo.together.jsonl":
            "1d4fb3fad02493cbe24c0a208a3a53e59079675a588f4bf6303382a83e9a5d4b",
        "formats/dpo.trl.jsonl":
            "17d11b4f166450b2dbd55a0374835f13ce4bfbe20654247892a92d6f8a084653",
        "formats/sft.alpaca.jsonl":
            "dda0dc9b6a12e732fd91cc5f8ef6092bb97a76f7bb740b32fc942750ebc905ff",
        "formats/sft.messages.jsonl":
            "31cf5eea1e0967911c766b768f062fba5ea489cebdf32791f04b8c921e7ec5fe",
        "formats/sft.prompt_completion.jsonl":
            "ae4704083d7b861c4475015d99af3da232991c4a741f6526fd25d1b1a22e4ffa",
    },
    "unfiltered": {
        "rows/sft.jsonl":
            "33fb5efda768ad06ef242d740daf666e5e986db07a24b3c4ef351d1562715c5f",
        "formats/sft.alpaca.jsonl":
            "b98eba1a23c548cdc5982168e94af7117b0096be8861998507afbcefa8e5f97a",
        "formats/sft.messages.jsonl":
            "ec261703ca0e2a18f7a1155de595d2becbe8af89966c343e2e1689731ac2ddb9",
        "formats/sft.prompt_completion.jsonl":
            "0061144c68e789dc35177d0f75c5a99e9dd9881cd7ea237eac9335c42b01c737",
    },
}


def _files(ds: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ds)): p.read_bytes()
            for sub in (ROWS_DIR, FORMATS_DIR) for p in sorted((ds / sub).iterdir())}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_upgraded_v2_store_mines_like_a_fresh_one_and_like_the_previous_release(tmp_path, name):
    eps = legacy.episodes("fx/direct", "fx/tdd", "fx/repair")
    old = legacy.write_legacy_store(tmp_path / "old", 2, eps).parent
    new = legacy.write_fresh_store(tmp_path / "new", eps).parent
    config = MineConfig(**BASE, **CONFIGS[name])
    old_rep = mine([old], tmp_path / "ds_old", config)
    new_rep = mine([new], tmp_path / "ds_new", config)
    assert {k: [r.to_dict() for r in v] for k, v in old_rep.rows.items()} == \
        {k: [r.to_dict() for r in v] for k, v in new_rep.rows.items()}
    assert old_rep.dropped == new_rep.dropped
    old_files, new_files = _files(tmp_path / "ds_old"), _files(tmp_path / "ds_new")
    assert old_files == new_files
    assert {f: hashlib.sha256(b).hexdigest() for f, b in new_files.items()} == \
        PREVIOUS_RELEASE[name]


def test_the_fixture_mines_every_kind_from_both_workflow_families(tmp_path):
    # Guards the comparison above against passing on a fixture that mines (almost) nothing.
    eps = legacy.episodes("fx/direct", "fx/tdd", "fx/repair")
    run = legacy.write_legacy_store(tmp_path / "old", 2, eps).parent
    rep = mine([run], tmp_path / "ds", MineConfig(**BASE, **CONFIGS["default"]))
    steps = {k: sorted({r.step for r in v}) for k, v in rep.rows.items()}
    assert steps == {"sft": ["g_impl", "g_test", "impl", "repair"], "fix": ["impl"],
                     "dpo": ["g_impl", "impl", "repair"]}
    repair_sft = [r for r in rep.rows["sft"] if r.step == "repair"]
    # Trial 0's four successful tool calls and its final answer (the episode succeeded).
    assert len(repair_sft) == 4 and all(r.tiers == ["tool_ok", "workflow"] for r in repair_sft)
    [pair] = [r for r in rep.rows["dpo"] if r.step == "repair"]
    assert pair.rejected["content"] == "hello" and pair.provenance["rejected_kind"] == \
        "parse_error" and '"list_files"' in pair.chosen["content"]
