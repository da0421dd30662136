from tracetune.agents.extract import extract_code


def test_fenced_python_block():
    text = "Here you go:\n```python\ndef f():\n    return 1\n```\nThis returns one."
    assert extract_code(text, ("f",)) == "def f():\n    return 1\n"


def test_prefers_the_block_defining_the_required_name():
    text = "```python\nprint(g())\n```\nand\n```python\ndef g():\n    return 2\n```"
    assert "def g" in extract_code(text, ("g",))


def test_joins_helper_and_main_blocks():
    text = "```python\ndef helper(x):\n    return x\n```\n```python\ndef main(x):\n    return helper(x)\n```"
    code = extract_code(text, ("helper", "main"))
    assert "def helper" in code and "def main" in code


def test_untagged_fence_and_unclosed_fence():
    assert extract_code("```\ndef f(): pass\n```", ("f",)) == "def f(): pass\n"
    assert extract_code("```python\ndef f(): pass\n", ("f",)) == "def f(): pass\n"


def test_bare_code_after_chatter():
    text = "Sure! Here is the function.\ndef f(x):\n    return x + 1"
    assert extract_code(text, ("f",)) == "def f(x):\n    return x + 1\n"


def test_no_code_returns_text():
    assert extract_code("I cannot do that.") == "I cannot do that.\n"


def test_sanitize_drops_examples_and_keeps_definitions():
    from tracetune.agents.extract import sanitize

    code = ("import math\nLIMIT = 10\n\n@staticmethod\ndef helper(x):\n    return x\n\n"
            "def f(x):\n    return helper(x) + LIMIT\n\n"
            "print(f(1))\nassert f(1) == 99\nresult = f(2)\n"
            "if __name__ == '__main__':\n    f(3)\n")
    out = sanitize(code)
    assert "import math" in out and "LIMIT = 10" in out and "@staticmethod" in out
    assert "def f(x)" in out and "print" not in out and "assert" not in out
    assert "result" not in out and "__main__" not in out


def test_sanitize_leaves_unparsable_code_alone():
    from tracetune.agents.extract import sanitize

    assert sanitize("def f(:\n") == "def f(:\n"
