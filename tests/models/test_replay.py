import json

import pytest

from tracetune.errors import ModelError
from tracetune.models import load_model
from tracetune.types import GenerationRequest, chat


def _write(tmp_path, lines):
    p = tmp_path / "script.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def test_replay_returns_scripted_outputs_in_order(tmp_path):
    p = _write(tmp_path, [{"text": "first"}, "second"])
    m = load_model(f"replay:{p}")
    texts = [c.text for c in m.generate_many([GenerationRequest(chat("a")),
                                              GenerationRequest(chat("b"))])]
    assert texts == ["first", "second"]
    with pytest.raises(ModelError, match="no unused output"):
        m.generate(GenerationRequest(chat("c")))


def test_replay_matches_on_the_last_user_message(tmp_path):
    p = _write(tmp_path, [{"text": "for fizz", "match": "fizz"}, {"text": "for add", "match": "add"}])
    m = load_model(f"replay:{p}")
    assert m.generate(GenerationRequest(chat("write add(a, b)"))).text == "for add"
    assert m.generate(GenerationRequest(chat("write fizzbuzz"))).text == "for fizz"


def test_replay_lenient_mode_and_usage(tmp_path):
    p = _write(tmp_path, [{"text": "one two three"}])
    m = load_model(f"replay:{p},strict=false")
    c = m.generate(GenerationRequest(chat("hello world")))
    assert c.usage.completion_tokens == 3 and c.usage.prompt_tokens == 2
    assert m.generate(GenerationRequest(chat("again"))).text == ""


def test_replay_rejects_bad_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(f"replay:{tmp_path / 'missing.jsonl'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ModelError, match="bad.jsonl:2"):
        load_model(f"replay:{bad}")
