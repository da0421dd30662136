"""KodCode / TestGenEval loaders on hand-written fixtures in the datasets' column layouts
(tests/testgen/fixtures; no real dataset row, no network)."""

import json
from pathlib import Path
from typing import ClassVar

import pytest

from tracetune.datasets.mine import normalize_code
from tracetune.datasets.rows import row_id
from tracetune.errors import TracetuneError
from tracetune.testgen.loaders import (FILTERS, MissingColumnError, load_kodcode,
                                       load_testgeneval, module_name, write_dataset)
from tracetune.testgen.prompt import render

FIXTURES = Path(__file__).parent / "fixtures"
KODCODE = FIXTURES / "kodcode_sft_r1.jsonl"
TESTGENEVAL = FIXTURES / "testgeneval"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def words(text: str) -> list[str]:
    """A whitespace tokenizer: a callable str -> token list."""
    return text.split()


# --- KodCode ----------------------------------------------------------------------------------


def test_kodcode_maps_solution_to_the_prompt_and_the_test_to_the_completion():
    raw = jsonl(KODCODE)
    rows, report = load_kodcode(KODCODE)
    by_task = {r.task: r for r in rows}
    first = by_task["kodcode/Fixture_0001_I"]
    assert first.kind == "sft" and first.step == "testgen" and first.tiers == []
    assert first.prompt == [{"role": "user",
                             "content": render(raw[0]["solution"], module="solution")}]
    assert "from solution import running_total" in first.prompt[0]["content"]
    assert first.completion == {"role": "assistant", "content": raw[0]["test_code"]}
    assert first.code == raw[0]["test_code"]
    assert first.id == row_id("sft", first.prompt, first.completion)
    p = first.provenance
    assert (p["source"], p["dataset"], p["split"], p["index"], p["row_id"], p["module"]) == (
        "kodcode", str(KODCODE), "train", 0, "Fixture_0001_I", "solution")
    assert p["filters"] == {"r1_correctness": True, "dedup": "normalized solution",
                            "max_tokens": None, "tokenizer": None, "limit": None, "seed": 0}
    assert report.columns == {"code": "solution", "test": "test_code",
                              "r1_correctness": "r1_correctness"}
    assert [r.provenance["index"] for r in rows] == [0, 1, 4, 5]  # source order


def test_kodcode_report_counts_each_filter_in_order():
    _, report = load_kodcode(KODCODE)
    assert report.read == 7 and report.kept == 4
    assert report.dropped == {"empty": 1, "r1_incorrect": 1, "duplicate": 1}
    assert list(report.dropped) == [f for f in FILTERS if f in report.dropped]
    assert report.dropped_examples["r1_incorrect"] == ["row 2 (kodcode/Fixture_0003_I)"]
    assert "7 read, 4 kept" in report.summary()


def test_missing_solution_column_raises_a_key_error_naming_column_and_dataset():
    path = FIXTURES / "kodcode_no_solution.jsonl"
    with pytest.raises(KeyError, match="'solution'") as exc:
        load_kodcode(path)
    assert isinstance(exc.value, TracetuneError) and isinstance(exc.value, MissingColumnError)
    assert "KodCode" in str(exc.value) and str(path) in str(exc.value)


def test_missing_test_column_names_both_accepted_names(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "test_code"} for r in jsonl(KODCODE)]
    with pytest.raises(KeyError, match="'test_code' or 'test'"):
        load_kodcode(write_jsonl(tmp_path / "k.jsonl", rows))


def test_test_and_test_code_columns_are_both_accepted(tmp_path):
    renamed = [{("test" if k == "test_code" else k): v for k, v in r.items()}
               for r in jsonl(KODCODE)]
    old_rows, _ = load_kodcode(KODCODE)
    new_rows, report = load_kodcode(write_jsonl(tmp_path / "k.jsonl", renamed))
    assert report.columns["test"] == "test"
    assert [r.completion for r in new_rows] == [r.completion for r in old_rows]
    assert [r.id for r in new_rows] == [r.id for r in old_rows]


def test_r1_filter_reads_strings_and_booleans_and_is_skipped_without_the_column(tmp_path):
    raw = jsonl(KODCODE)
    as_bools = [{**r, "r1_correctness": r["r1_correctness"] == "True"} for r in raw]
    rows, report = load_kodcode(write_jsonl(tmp_path / "b.jsonl", as_bools))
    assert report.dropped["r1_incorrect"] == 1
    assert "kodcode/Fixture_0003_I" not in {r.task for r in rows}

    without = [{k: v for k, v in r.items() if k != "r1_correctness"} for r in raw]
    rows, report = load_kodcode(write_jsonl(tmp_path / "n.jsonl", without))
    assert "r1_incorrect" not in report.dropped and report.kept == 5
    assert "kodcode/Fixture_0003_I" in {r.task for r in rows}
    assert report.settings["r1_correctness"] is False
    assert rows[0].provenance["filters"]["r1_correctness"] is False


def test_dedup_keeps_the_first_of_solutions_equal_once_normalized():
    raw = jsonl(KODCODE)
    assert raw[0]["solution"] != raw[3]["solution"]
    assert normalize_code(raw[0]["solution"]) == normalize_code(raw[3]["solution"])
    rows, report = load_kodcode(KODCODE)
    tasks = {r.task for r in rows}
    assert "kodcode/Fixture_0001_I" in tasks and "kodcode/Fixture_0004_I" not in tasks
    assert report.dropped_examples["duplicate"] == ["row 3 (kodcode/Fixture_0004_I)"]


def test_token_filter_measures_prompt_plus_completion_not_the_test_alone():
    rows, _ = load_kodcode(KODCODE)
    long = next(r for r in rows if r.task == "kodcode/Fixture_0005_I")
    total = {r.task: len(words(r.prompt[0]["content"] + "\n" + r.completion["content"]))
             for r in rows}
    budget = max(n for task, n in total.items() if task != long.task)
    # The long row's test alone fits the budget; its whole example does not.
    assert len(words(long.completion["content"])) <= budget < total[long.task]

    kept, report = load_kodcode(KODCODE, max_tokens=budget, tokenizer=words)
    assert long.task not in {r.task for r in kept}
    assert report.dropped["too_long"] == 1 and report.kept == 3
    assert report.settings["max_tokens"] == budget and report.settings["tokenizer"] == "words"
    assert kept[0].provenance["filters"]["max_tokens"] == budget


def test_token_filter_takes_counts_and_chat_templated_tokenizers():
    rows, report = load_kodcode(KODCODE, max_tokens=10**6, tokenizer=lambda text: len(text))
    assert report.kept == 4 and "too_long" not in report.dropped

    class ChatTokenizer:
        """The surface of a Hugging Face tokenizer with a chat template (one token a char)."""
        name_or_path = "fake/chat"
        chat_template = "{{ messages }}"
        seen: ClassVar[list] = []

        def apply_chat_template(self, messages, tokenize=False):
            self.seen.append([m["role"] for m in messages])
            return "".join(f"<{m['role']}>{m['content']}" for m in messages)

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": list(text)}

    tok = ChatTokenizer()
    long = max(rows, key=lambda r: len(r.prompt[0]["content"]))
    budget = len(long.prompt[0]["content"]) + len("<user>")  # the prompt alone fits
    kept, report = load_kodcode(KODCODE, max_tokens=budget, tokenizer=tok)
    assert long.task not in {r.task for r in kept} and report.dropped["too_long"] >= 1
    assert tok.seen[0] == ["user", "assistant"]
    assert report.settings["tokenizer"] == "fake/chat"


def test_max_tokens_needs_a_tokenizer_and_limit_cannot_be_negative():
    with pytest.raises(TracetuneError, match="tokenizer"):
        load_kodcode(KODCODE, max_tokens=100)
    with pytest.raises(TracetuneError, match="limit"):
        load_kodcode(KODCODE, limit=-1)


def test_limit_is_a_deterministic_subset_after_filtering():
    a, report = load_kodcode(KODCODE, limit=2, seed=3)
    b, _ = load_kodcode(KODCODE, limit=2, seed=3)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 2
    assert report.dropped["limit"] == 2 and report.kept == 2
    indices = [r.provenance["index"] for r in a]
    assert indices == sorted(indices)  # source order kept
    all_rows, _ = load_kodcode(KODCODE)
    assert {r.id for r in a} <= {r.id for r in all_rows}  # drawn from the filtered rows
    subsets = {tuple(r.id for r in load_kodcode(KODCODE, limit=2, seed=s).rows)
               for s in range(10)}
    assert len(subsets) > 1  # the seed picks the subset
    rows, report = load_kodcode(KODCODE, limit=10)
    assert len(rows) == 4 and "limit" not in report.dropped


# --- TestGenEval ------------------------------------------------------------------------------


def test_testgeneval_train_and_dev_splits():
    train, train_report = load_testgeneval(TESTGENEVAL)
    dev, dev_report = load_testgeneval(TESTGENEVAL, split="dev")
    assert (train_report.read, train_report.kept, train_report.dropped) == (5, 4, {"duplicate": 1})
    assert (dev_report.read, dev_report.kept) == (2, 2)
    assert {r.provenance["split"] for r in train} == {"train"}
    assert {r.provenance["split"] for r in dev} == {"dev"}
    assert not {r.task for r in train} & {r.task for r in dev}
    raw_dev = jsonl(TESTGENEVAL / "dev.jsonl")
    assert [r.task for r in dev] == [f"testgeneval/{r['id']}" for r in raw_dev]


def test_testgeneval_maps_columns_and_names_the_repository_module():
    raw = jsonl(TESTGENEVAL / "train.jsonl")
    rows, _ = load_testgeneval(TESTGENEVAL / "train.jsonl")
    first = rows[0]
    assert first.prompt[0]["content"] == render(raw[0]["code_src"], module="tinyqueue.core")
    assert first.completion["content"] == raw[0]["test_src"] == first.code
    assert "preamble" not in first.prompt[0]["content"]  # full-file generation only
    p = first.provenance
    assert (p["source"], p["code_file"], p["test_file"], p["module"], p["repo"]) == (
        "testgeneval", "src/tinyqueue/core.py", "tests/test_core.py", "tinyqueue.core",
        "example-org/tinyqueue")
    modules = {r.provenance["code_file"]: r.provenance["module"] for r in rows}
    assert modules == {"src/tinyqueue/core.py": "tinyqueue.core",
                       "unitconv/lengths.py": "unitconv.lengths",
                       "lib/plotkit/palette.py": "plotkit.palette",
                       "scripts/run-report.py": "solution"}


def test_testgeneval_without_code_file_uses_module_solution(tmp_path):
    raw = [{k: v for k, v in r.items() if k != "code_file"}
           for r in jsonl(TESTGENEVAL / "dev.jsonl")]
    rows, _ = load_testgeneval(write_jsonl(tmp_path / "rows.jsonl", raw), split="dev")
    assert {r.provenance["module"] for r in rows} == {"solution"}
    assert "from solution import c_to_f, f_to_c" in rows[0].prompt[0]["content"]


def test_testgeneval_missing_column_and_bad_split(tmp_path):
    raw = [{k: v for k, v in r.items() if k != "test_src"}
           for r in jsonl(TESTGENEVAL / "train.jsonl")]
    with pytest.raises(KeyError, match="'test_src'") as exc:
        load_testgeneval(write_jsonl(tmp_path / "rows.jsonl", raw))
    assert "TestGenEval" in str(exc.value)
    with pytest.raises(TracetuneError, match="unknown TestGenEval split"):
        load_testgeneval(TESTGENEVAL, split="validation")
    with pytest.raises(TracetuneError, match="holds the dev split"):
        load_testgeneval(TESTGENEVAL / "dev.jsonl", split="train")


def test_testgeneval_token_filter_and_limit():
    rows, _ = load_testgeneval(TESTGENEVAL)
    long = next(r for r in rows if r.provenance["module"] == "plotkit.palette")
    budget = max(len(words(r.prompt[0]["content"] + "\n" + r.completion["content"]))
                 for r in rows if r is not long)
    kept, report = load_testgeneval(TESTGENEVAL, max_tokens=budget, tokenizer=words, limit=2)
    assert report.dropped == {"duplicate": 1, "too_long": 1, "limit": 1}
    assert len(kept) == 2 and long.task not in {r.task for r in kept}


def test_module_name():
    assert module_name("src/pkg/mod.py") == "pkg.mod"
    assert module_name("lib/pkg/sub/__init__.py") == "pkg.sub"
    assert module_name("pkg/mod.py") == "pkg.mod"
    assert module_name("solution.py") == "solution"
    assert module_name("my-tool/run.py") is None
    assert module_name("pkg/data.json") is None


# --- sources ----------------------------------------------------------------------------------


def _to_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_and_jsonl_give_the_same_rows(tmp_path):
    from_jsonl, _ = load_kodcode(KODCODE)
    # The hub's layout: data/{split}-NNNNN-of-NNNNN.parquet.
    parquet = _to_parquet(jsonl(KODCODE), tmp_path / "data" / "train-00000-of-00001.parquet")
    from_file, _ = load_kodcode(parquet)
    from_dir, report = load_kodcode(tmp_path)
    assert [r.id for r in from_file] == [r.id for r in from_jsonl] == [r.id for r in from_dir]
    assert report.dropped == {"empty": 1, "r1_incorrect": 1, "duplicate": 1}
    with pytest.raises(TracetuneError, match="no incorrect files"):
        load_kodcode(tmp_path, split="incorrect")


def test_testgeneval_parquet_directory_by_split(tmp_path):
    for split in ("train", "dev"):
        _to_parquet(jsonl(TESTGENEVAL / f"{split}.jsonl"),
                    tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    for split in ("train", "dev"):
        from_parquet, _ = load_testgeneval(tmp_path, split=split)
        from_jsonl, _ = load_testgeneval(TESTGENEVAL, split=split)
        assert [r.id for r in from_parquet] == [r.id for r in from_jsonl]


def test_a_json_array_file_is_read(tmp_path):
    path = tmp_path / "kodcode.json"
    path.write_text(json.dumps(jsonl(KODCODE)))
    rows, _ = load_kodcode(path)
    assert [r.id for r in rows] == [r.id for r in load_kodcode(KODCODE).rows]


def test_saved_dataset_dict_and_hub_id(tmp_path, monkeypatch):
    import datasets

    splits = {s: datasets.Dataset.from_list(jsonl(TESTGENEVAL / f"{s}.jsonl"))
              for s in ("train", "dev")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    rows, _ = load_testgeneval(tmp_path / "saved", split="dev")
    assert [r.id for r in rows] == [r.id for r in load_testgeneval(TESTGENEVAL, split="dev").rows]
    with pytest.raises(TracetuneError, match="no split 'test'"):
        load_testgeneval(tmp_path / "saved", split="test")

    calls = []

    def fake_load_dataset(name, split):  # the hub is never reached from the tests
        calls.append((name, split))
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, report = load_testgeneval(split="train")
    assert calls == [("kjain14/testgeneval", "train")] and report.kept == 4
    assert rows[0].provenance["dataset"] == "kjain14/testgeneval"


def test_a_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(TracetuneError, match="no such file"):
        load_kodcode(tmp_path / "absent.jsonl")


# --- writing a dataset ------------------------------------------------------------------------


def test_write_dataset_makes_a_dataset_train_reads(tmp_path):
    from tracetune.datasets.build import (SFT_PROMPT_COMPLETION, format_path, load_manifest,
                                          read_rows, rows_path)

    kod, kod_report = load_kodcode(KODCODE)
    tge, tge_report = load_testgeneval(TESTGENEVAL)
    out = write_dataset(kod + tge, tmp_path / "data", reports=[kod_report, tge_report])
    manifest = load_manifest(out)
    assert manifest["counts"] == {"sft": 8}
    assert manifest["dropped"] == {"empty": 1, "r1_incorrect": 1, "duplicate": 2}
    assert [s["dataset"] for s in manifest["sources"]] == ["kodcode", "testgeneval"]
    assert [r["id"] for r in read_rows(rows_path(out, "sft"))] == [r.id for r in kod + tge]
    pairs = read_rows(format_path(out, SFT_PROMPT_COMPLETION))
    assert pairs[0] == {"prompt": kod[0].prompt, "completion": [kod[0].completion]}
    assert (out / "hf" / "sft").is_dir()
    with pytest.raises(TracetuneError, match="not empty"):
        write_dataset(kod, out)
    with pytest.raises(TracetuneError, match="no rows"):
        write_dataset([], tmp_path / "empty")
