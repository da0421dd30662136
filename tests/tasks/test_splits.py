import hashlib

import pytest

from tracetune.errors import TracetuneError
from tracetune.tasks import Task, load_suite
from tracetune.tasks.splits import in_train, select, task_bucket


def test_bucket_is_md5_mod_100():
    assert task_bucket("funcs/chunk_list") == \
        int(hashlib.md5(b"funcs/chunk_list").hexdigest(), 16) % 100
    assert task_bucket("a") == 97  # fixed forever: a named split is stable across releases


def test_split_is_a_partition_and_deterministic():
    tasks = load_suite("funcs").tasks
    train, test = select(tasks, "train", 50), select(tasks, "test", 50)
    assert {t.id for t in train}.isdisjoint(t.id for t in test)
    assert len(train) + len(test) == len(tasks)
    assert [t.id for t in select(tasks, "train", 50)] == [t.id for t in train]
    assert 35 <= len(train) <= 85  # roughly half


def test_adding_tasks_moves_no_other_task():
    tasks = list(load_suite("funcs").tasks)
    extra = Task("funcs/new_one", "s", ("f",), "r", "t")
    before = {t.id for t in select(tasks, "train", 60)}
    after = {t.id for t in select(tasks + [extra], "train", 60)}
    assert after - {"funcs/new_one"} == before


def test_bounds_and_bad_split():
    tasks = load_suite("demo").tasks
    assert select(tasks, "train", 0) == [] and select(tasks, "test", 100) == []
    assert in_train("x", 100) and not in_train("x", 0)
    with pytest.raises(TracetuneError, match="unknown split"):
        select(tasks, "validation")
    with pytest.raises(TracetuneError, match="within 0..100"):
        select(tasks, "train", 101)
