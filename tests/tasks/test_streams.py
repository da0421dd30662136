import json
import random
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.tasks import load_suite
from tracetune.tasks.streams import (
    BUILTINS,
    ORDERINGS,
    read_swe_bench_cl,
    reorder,
    seen_task_ids,
    sequence_sessions,
    stream_from_table,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOPICS = ["strings", "lists", "dicts", "math", "recursion", "dates"]
CATEGORIES = ["lists", "strings", "math", "sorting", "recursion", "graphs", "dp", "searching"]


def _names(stream) -> list[str]:
    return [s.name for s in stream.sessions]


def _ids(stream, name: str) -> list[str]:
    return [t.id for s in stream.sessions if s.name == name for t in s.tasks]


def _assert_partition(stream) -> None:
    ids = stream.task_ids()
    assert len(ids) == len(set(ids)), "a task is in two sessions"
    assert all(s.tasks for s in stream.sessions)


def _assert_first_group_rule(stream, groups: list[list[str]]) -> None:
    """Every task carries a tag of its own group and none of an earlier group's."""
    for k, session in enumerate(stream.sessions):
        earlier = {tag for g in groups[:k] for tag in g}
        for task in session.tasks:
            assert set(groups[k]) & set(task.tags), (task.id, session.name)
            assert not earlier & set(task.tags), (task.id, session.name)


def test_funcs_topics_is_one_session_per_topic_in_the_stated_order():
    stream = stream_from_table({"by": "builtin", "name": "funcs-topics"})
    assert (stream.name, stream.suite, stream.ordering) == ("funcs-topics", "funcs", "A")
    assert _names(stream) == TOPICS
    _assert_partition(stream)
    _assert_first_group_rule(stream, [[t] for t in TOPICS])
    # tagged recursion and math: math comes first in the stated order, so math takes it
    assert "funcs/hanoi_moves" in _ids(stream, "math")
    assert "funcs/hanoi_moves" not in _ids(stream, "recursion")


def test_tier_filter_and_cap_keep_the_first_tasks_by_id():
    whole = stream_from_table({"by": "builtin", "name": "funcs-topics",
                               "groups": ["strings", "lists", "math"], "max_difficulty": 2})
    capped = stream_from_table({"by": "builtin", "name": "funcs-topics",
                                "groups": ["strings", "lists", "math"], "max_difficulty": 2,
                                "max_per_session": 5})
    suite = {t.id: t for t in load_suite("funcs").tasks}
    assert all(suite[i].difficulty <= 2 for i in whole.task_ids())
    assert any(t.difficulty == 3 and "strings" in t.tags for t in suite.values())
    for name in ("strings", "lists", "math"):
        assert len(_ids(whole, name)) > 5
        assert _ids(capped, name) == sorted(_ids(whole, name))[:5]


def test_bugs_categories_place_every_bug_once_by_the_first_stated_category():
    stream = stream_from_table({"by": "builtin", "name": "bugs-categories"})
    assert stream.suite == "bugs" and _names(stream) == CATEGORIES
    _assert_partition(stream)
    assert sorted(stream.task_ids()) == sorted(t.id for t in load_suite("bugs").tasks)
    _assert_first_group_rule(stream, [[c] for c in CATEGORIES])
    assert "bugs/quicksort" in _ids(stream, "sorting")      # sorting, recursion
    assert "bugs/max_subarray" in _ids(stream, "lists")     # dp, lists


@pytest.mark.parametrize("groups, home", [(["math", "strings"], "math"),
                                          (["strings", "math"], "strings")])
def test_a_task_with_tags_of_two_groups_goes_to_the_first_group(groups, home):
    stream = stream_from_table({"by": "tags", "suite": "bugs", "groups": groups})
    for task_id in ("bugs/to_base", "bugs/int_to_roman"):  # tagged (math, strings), (strings, math)
        assert task_id in _ids(stream, home)
        assert stream.session_of(task_id) == groups.index(home)


def test_a_group_of_several_tags_takes_a_task_with_any_of_them():
    stream = stream_from_table({"by": "tags", "suite": "funcs", "name": "text-then-time",
                                "groups": [["strings", "parsing"], "dates"]})
    assert stream.name == "text-then-time" and _names(stream) == ["strings+parsing", "dates"]
    _assert_first_group_rule(stream, [["strings", "parsing"], ["dates"]])
    suite = load_suite("funcs").tasks
    parsing_only = [t.id for t in suite if "parsing" in t.tags and "strings" not in t.tags]
    assert parsing_only and set(parsing_only) <= set(_ids(stream, "strings+parsing"))
    # a task matching no group is left out
    assert not any("lists" in t.tags and not {"strings", "parsing", "dates"} & set(t.tags)
                   and t.id in stream.task_ids() for t in suite)


SUITE = """
[suite]
name = "timeline"

{tasks}
"""
TASK = """
[[task]]
id = "t/{name}"
spec = "Write {name}."
names = ["{name}"]
reference = "def {name}():\\n    return 1\\n"
tests = "from solution import {name}\\n"
{extra}
"""


def _suite_file(tmp_path: Path, extras: dict[str, str]) -> Path:
    path = tmp_path / "suites" / "timeline.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SUITE.format(tasks="".join(TASK.format(name=n, extra=e)
                                               for n, e in extras.items())))
    return path


def test_field_kind_sorts_by_order_and_cuts_sessions(tmp_path):
    _suite_file(tmp_path, {"e": "order = 5", "a": "order = 1", "d": "order = 4",
                           "b": "order = 2", "c": "order = 3"})
    stream = stream_from_table({"by": "field", "suite": "suites/timeline.toml",
                                "field": "order", "per_session": 2}, base_dir=tmp_path)
    assert _names(stream) == ["order-1", "order-2", "order-3"]
    assert [[t.id for t in s.tasks] for s in stream.sessions] == \
        [["t/a", "t/b"], ["t/c", "t/d"], ["t/e"]]
    # the suite path is resolved against base_dir: it loads from anywhere
    assert Path(stream.suite).is_absolute() and len(load_suite(stream.suite).tasks) == 5
    assert stream.name == "timeline-by-order"


def test_field_kind_sorts_by_created_at(tmp_path):
    _suite_file(tmp_path, {"x": 'created_at = "2024-03-01T00:00:00Z"',
                           "y": 'created_at = "2023-12-31T23:00:00Z"',
                           "z": 'created_at = "2024-01-15T12:00:00Z"'})
    stream = stream_from_table({"by": "field", "suite": str(tmp_path / "suites/timeline.toml"),
                                "field": "created_at", "per_session": 1})
    assert stream.task_ids() == ("t/y", "t/z", "t/x")
    assert load_suite(stream.suite).tasks[0].created_at == "2024-03-01T00:00:00Z"


def test_field_kind_names_the_first_task_without_the_field(tmp_path):
    _suite_file(tmp_path, {"a": "order = 1", "b": "", "c": ""})
    with pytest.raises(TracetuneError, match="task t/b has no order"):
        stream_from_table({"by": "field", "suite": "suites/timeline.toml", "field": "order",
                           "per_session": 1}, base_dir=tmp_path)


def test_suite_loader_checks_the_type_of_order(tmp_path):
    path = _suite_file(tmp_path, {"a": 'order = "first"'})
    with pytest.raises(TracetuneError, match="order must be an integer"):
        load_suite(str(path))


def test_explicit_kind_keeps_the_stated_sessions_and_helpers_agree():
    stream = stream_from_table({"by": "explicit", "suite": "demo", "sessions": [
        {"name": "strings", "tasks": ["demo/reverse_string", "demo/count_vowels"]},
        {"name": "math", "tasks": ["demo/is_even", "demo/factorial"]},
        {"name": "more", "tasks": ["demo/fizzbuzz"]}]})
    assert _names(stream) == ["strings", "math", "more"] and stream.name == "demo-explicit"
    assert stream.task_ids() == ("demo/reverse_string", "demo/count_vowels", "demo/is_even",
                                 "demo/factorial", "demo/fizzbuzz")
    assert [stream.session_of(i) for i in stream.task_ids()] == [0, 0, 1, 1, 2]
    with pytest.raises(KeyError):
        stream.session_of("demo/nope")
    assert seen_task_ids(stream, 0) == frozenset()
    assert seen_task_ids(stream, 2) == {"demo/reverse_string", "demo/count_vowels",
                                        "demo/is_even", "demo/factorial"}
    assert seen_task_ids(stream, 3) == set(stream.task_ids())


TWO = [{"name": "a", "tasks": ["demo/is_even"]}, {"name": "b", "tasks": ["demo/factorial"]}]


@pytest.mark.parametrize("table, message", [
    ({"by": "topics", "suite": "funcs"},
     "by must be one of tags, field, explicit, builtin, not 'topics'"),
    ({"suite": "funcs"}, "by must be one of"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", "lists"], "colour": "red"},
     (r"unknown key\(s\) colour for by = 'tags' \(accepted: by, suite, groups, name, "
      r"max_difficulty, max_per_session, min_per_session\)")),
    ({"by": "builtin", "name": "funcs-topics", "suite": "bugs"}, r"unknown key\(s\) suite"),
    ({"by": "explicit", "suite": "demo", "sessions": TWO, "per_session": 2},
     r"unknown key\(s\) per_session for by = 'explicit'"),
    ({"by": "field", "suite": "funcs", "field": "order"}, "by = 'field' needs per_session"),
    ({"by": "field", "suite": "funcs", "field": "colour", "per_session": 2},
     "field must be one of order, created_at"),
    ({"by": "builtin", "name": "funcs-everything"},
     r"unknown built-in stream 'funcs-everything' \(built-in: funcs-topics, bugs-categories\)"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", "lists"], "max_per_session": 0},
     "max_per_session must be an integer of at least 1"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", ["lists", "strings"]]},
     "tag 'strings' is in two groups"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", 3]}, "groups must be a list"),
    # empty sessions, named
    ({"by": "explicit", "suite": "demo", "sessions": [TWO[0], {"name": "b", "tasks": []}]},
     "session 'b' is empty"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", "no-such-tag"]},
     "session 'no-such-tag' is empty: no task is tagged no-such-tag"),
    ({"by": "builtin", "name": "funcs-topics", "max_difficulty": 2},
     (r"session 'recursion' is empty: the 4 task\(s\) of difficulty <= 2 tagged recursion all "
      "carry a tag of an earlier group")),
    ({"by": "tags", "suite": "funcs", "groups": ["strings", "dates"], "min_per_session": 20},
     r"session 'dates' has 12 task\(s\), fewer than min_per_session = 20"),
    # a task in two sessions, named with both sessions
    ({"by": "explicit", "suite": "demo", "sessions": [
        TWO[0], {"name": "b", "tasks": ["demo/factorial", "demo/is_even"]}]},
     "task demo/is_even is in two sessions: 'a' and 'b'"),
    ({"by": "explicit", "suite": "demo", "sessions": [
        TWO[0], {"name": "b", "tasks": ["demo/factorial", "demo/factorial"]}]},
     "task demo/factorial is twice in session 'b'"),
    ({"by": "explicit", "suite": "demo", "sessions": [TWO[0], {"name": "a", "tasks": ["x"]}]},
     "two sessions are named 'a'"),
    ({"by": "explicit", "suite": "demo",
      "sessions": TWO + [{"name": "c", "tasks": ["demo/x", "demo/y"]}]},
     r"unknown task id\(s\) in suite demo: demo/x, demo/y"),
    # fewer than 2 sessions
    ({"by": "explicit", "suite": "demo", "sessions": TWO[:1]},
     "at least 2 sessions, this one has 1"),
    ({"by": "tags", "suite": "funcs", "groups": ["strings"]}, "at least 2 sessions"),
    ({"by": "field", "suite": "demo", "field": "order", "per_session": 2},
     "task demo/is_even has no order"),
    # unknown suite
    ({"by": "tags", "suite": "no-such-suite", "groups": ["a", "b"]},
     "unknown suite 'no-such-suite'"),
    ({"by": "explicit", "suite": "missing.toml", "sessions": TWO}, "suite file not found"),
])
def test_a_bad_stream_table_is_one_clear_error(table, message):
    with pytest.raises(TracetuneError, match=message):
        stream_from_table(table)


def test_the_table_is_checked_before_the_suite_is_loaded():
    with pytest.raises(TracetuneError, match=r"unknown key\(s\) colour"):
        stream_from_table({"by": "tags", "suite": "no-such-suite", "groups": ["a", "b"],
                           "colour": "red"})
    with pytest.raises(TracetuneError, match="in two sessions"):
        stream_from_table({"by": "explicit", "suite": "no-such-suite",
                           "sessions": [TWO[0], TWO[0] | {"name": "b"}]})


def test_field_kind_with_one_session_is_refused(tmp_path):
    _suite_file(tmp_path, {"a": "order = 1", "b": "order = 2"})
    with pytest.raises(TracetuneError, match="at least 2 sessions, this one has 1"):
        stream_from_table({"by": "field", "suite": "suites/timeline.toml", "field": "order",
                           "per_session": 5}, base_dir=tmp_path)


def _explicit(n: int):
    ids = [t.id for t in load_suite("funcs").tasks][:n]
    return stream_from_table({"by": "explicit", "suite": "funcs", "sessions": [
        {"name": f"s{k + 1}", "tasks": [i]} for k, i in enumerate(ids)]})


@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_orderings_are_seed_004s_designs_on_the_session_order(n):
    stream = _explicit(n)
    names = _names(stream)
    got = {d: reorder(stream, d) for d in ORDERINGS}
    assert {d: s.ordering for d, s in got.items()} == {d: d for d in ORDERINGS}
    assert _names(got["A"]) == names
    assert _names(got["B"]) == names[::-1]
    assert _names(got["C"]) == names[0::2] + names[1::2]
    for design, seed in (("D", 42), ("E", 123)):
        expected = list(names)
        random.Random(seed).shuffle(expected)
        assert _names(got[design]) == expected
        assert _names(reorder(stream, design)) == expected  # deterministic
    assert _names(got["D"]) != _names(got["E"])
    for s in got.values():  # each a permutation of the same sessions
        assert sorted(s.sessions, key=lambda x: x.name) == \
            sorted(stream.sessions, key=lambda x: x.name)
        assert set(s.task_ids()) == set(stream.task_ids())


def test_c_puts_odd_numbered_sessions_first():
    stream = stream_from_table({"by": "builtin", "name": "funcs-topics"})
    assert _names(reorder(stream, "C")) == ["strings", "dicts", "recursion", "lists", "math",
                                            "dates"]
    assert reorder(stream, "B").session_of("funcs/to_upper") == 5


def test_an_unknown_ordering_lists_the_accepted_ones():
    with pytest.raises(TracetuneError, match=r"unknown ordering 'F' .*A, B, C, D, E"):
        reorder(_explicit(4), "F")


def test_builtins_name_their_suites():
    assert {k: v[0] for k, v in BUILTINS.items()} == {"funcs-topics": "funcs",
                                                      "bugs-categories": "bugs"}


# ---- SWE-Bench-CL ---------------------------------------------------------------------------

MINI = FIXTURES / "swe_bench_cl_mini.json"


def test_swe_bench_cl_sequences_are_read_in_sequence_position_order():
    seqs = read_swe_bench_cl(MINI)
    assert [(s.id, s.repo, len(s.tasks)) for s in seqs] == [
        ("example_calc_sequence", "example/calc", 4),
        ("example_textkit_sequence", "example/textkit", 3)]
    calc = seqs[0]
    # the file lists calc-12 (position 2) first
    assert [t.instance_id for t in calc.tasks] == ["example__calc-7", "example__calc-12",
                                                  "example__calc-20", "example__calc-31"]
    assert [t.sequence_position for t in calc.tasks] == [1, 2, 3, 4]
    first, second = calc.tasks[0], calc.tasks[1]
    assert first.fail_to_pass == ("tests/test_ops.py::test_add_numeric_strings",)
    assert first.pass_to_pass == ("tests/test_ops.py::test_add",)
    assert (first.difficulty, first.difficulty_score) == ("<15 min fix", 1)
    assert first.hints == "" and second.hints.startswith("Check the divisor")  # null -> ""
    assert second.dependencies == ("example__calc-7",)
    assert calc.tasks[3].modified_files == ("calc/eval.py", "calc/parse.py")
    assert first.created_at == "2021-01-15T10:30:00+00:00" and first.repo == "example/calc"


def test_sequence_sessions_cut_the_sequence_in_order():
    calc = read_swe_bench_cl(MINI)[0]
    sessions = sequence_sessions(calc, 3)
    assert [[t.instance_id for t in s] for s in sessions] == [
        ["example__calc-7", "example__calc-12", "example__calc-20"], ["example__calc-31"]]
    assert len(sequence_sessions(calc, 1)) == 4
    with pytest.raises(TracetuneError, match="per_session must be an integer of at least 1"):
        sequence_sessions(calc, 0)


def _mini(tmp_path: Path, change) -> Path:
    data = json.loads(MINI.read_text())
    change(data)
    path = tmp_path / "cl.json"
    path.write_text(json.dumps(data))
    return path


def test_ties_in_position_go_by_created_at_and_test_lists_may_be_json_text(tmp_path):
    def change(data):
        for task in data["sequences"][0]["tasks"]:
            task["continual_learning"]["sequence_position"] = 1
        data["sequences"][1]["tasks"][0]["evaluation"]["FAIL_TO_PASS"] = '["t::a", "t::b"]'
    seqs = read_swe_bench_cl(_mini(tmp_path, change))
    created = [t.created_at for t in seqs[0].tasks]
    assert created == sorted(created) and len(set(created)) == 4
    assert seqs[1].tasks[0].fail_to_pass == ("t::a", "t::b")


@pytest.mark.parametrize("section, key", [("metadata", "created_at"),
                                          ("continual_learning", "sequence_position"),
                                          ("evaluation", "FAIL_TO_PASS"),
                                          ("task", "problem_statement")])
def test_a_missing_key_names_it_and_the_task_index(tmp_path, section, key):
    path = _mini(tmp_path, lambda d: d["sequences"][1]["tasks"][2][section].pop(key))
    with pytest.raises(TracetuneError, match=rf"sequences\[1\] \(example_textkit_sequence\)"
                                             rf"\.tasks\[2\]: missing {section}\.{key}"):
        read_swe_bench_cl(path)


@pytest.mark.parametrize("text, message", [("[1, 2]", 'no "sequences" list'),
                                           ("{not json", "is not JSON text")])
def test_a_file_that_is_not_swe_bench_cl_is_refused(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(TracetuneError, match=message):
        read_swe_bench_cl(path)
    with pytest.raises(TracetuneError, match="not found"):
        read_swe_bench_cl(tmp_path / "missing.json")
