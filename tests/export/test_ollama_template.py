"""The Ollama Modelfile renders, for any conversation, exactly the prompt that training and
evaluation render from the base's chat template. The Modelfile's TEMPLATE is executed here by a
small renderer of the Go text/template subset it uses, under Ollama's rules for SYSTEM."""

import re

import pytest

from tracetune.errors import TracetuneError
from tracetune.export.ollama import chat_format

CONVERSATIONS = [
    [("user", "Write a Python function `add(a, b)` that returns the sum of a and b.")],
    [("system", "You are a careful Python programmer."), ("user", "Write `is_even(n)`.")],
    [("user", "Write `f(x)`."), ("assistant", "```python\ndef f(x):\n    return x\n```"),
     ("user", "Add a docstring.\n\nKeep the name.")],
    [("system", "Answer in one fenced block."), ("user", "Hi"), ("assistant", "Hello."),
     ("user", "Write `g()`.")],
]


# --- a renderer for the Go template subset Modelfiles use ----------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with {{- and -}} whitespace trimming applied."""
    out, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out += [("text", text), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens, i=0, stop=("end",)):
    """(nodes, index of the stopping action, its text)."""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split()[0]
        if word in stop or value.startswith("else"):
            return nodes, i, value
        if word == "range":
            body, i, _ = _parse(tokens, i + 1)
            nodes.append(("range", value.split()[1], body))
        elif word == "if":
            branches, cond = [], value[3:]
            while True:
                body, i, end = _parse(tokens, i + 1)
                branches.append((cond, body))
                if end == "end":
                    break
                cond = end[len("else if "):] if end.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif value.startswith("."):
            nodes.append(("field", value))
        else:
            raise ValueError(f"unsupported action {{{{ {value} }}}}")
        i += 1
    return nodes, i, None


def _field(dot, path: str):
    return dot[path[1:]]


def _cond(dot, cond: str) -> bool:
    if cond == "true":
        return True
    m = re.fullmatch(r'eq (\.\w+) "([^"]*)"', cond)
    if m:
        return _field(dot, m.group(1)) == m.group(2)
    if re.fullmatch(r"\.\w+", cond):
        return bool(_field(dot, cond))
    raise ValueError(f"unsupported condition {cond!r}")


def _run(nodes, dot) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(str(_field(dot, node[1])))
        elif node[0] == "range":
            out += [_run(node[2], item) for item in _field(dot, node[1])]
        else:
            out += [_run(body, dot) for cond, body in node[1] if _cond(dot, cond)][:1]
    return "".join(out)


def ollama_prompt(modelfile: str, conversation) -> str:
    """The prompt Ollama's chat endpoint builds: the Modelfile's SYSTEM is prepended as a message
    unless the conversation opens with a system message; system contents are also collected
    into .System; the TEMPLATE is executed over .Messages."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.DOTALL | re.MULTILINE).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile, re.DOTALL | re.MULTILINE)
    msgs = [{"Role": r, "Content": c} for r, c in conversation]
    if system and msgs[0]["Role"] != "system":
        msgs.insert(0, {"Role": "system", "Content": system.group(1)})
    data = {"Messages": msgs, "System": "\n\n".join(m["Content"] for m in msgs
                                                    if m["Role"] == "system")}
    nodes, _, _ = _parse(_tokens(template))
    return _run(nodes, data)


def test_the_go_renderer_follows_go_semantics():
    modelfile = ('TEMPLATE """{{- if .System }}[{{ .System }}]{{ end }}\n  {{- range .Messages }}'
                 '{{ if eq .Role "user" }}U:{{ .Content }} {{- else }}X{{ end }}{{ end -}}\n'
                 ' !"""\n')
    assert ollama_prompt(modelfile, [("system", "s"), ("user", "a "), ("assistant", "b")]) \
        == "[s]XU:a X!"


# --- the Modelfile of the embedded model ---------------------------------------------------------

@pytest.fixture(scope="module")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from tracetune.models.hf import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source("embedded"))


def _training_prompt(tok, conversation) -> str:
    """The prompt of a training row as TRL renders it (prompt/completion rows)."""
    from trl.data_utils import maybe_apply_chat_template

    row = {"prompt": [{"role": r, "content": c} for r, c in conversation]}
    return maybe_apply_chat_template(row, tok)["prompt"]


@pytest.fixture(scope="module")
def served_formatter():
    """What tracetune's llama.cpp backend renders prompts with: the GGUF's own chat template in
    llama-cpp-python's formatter."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from tracetune.models.spec import embedded_gguf_path

    llm = Llama(model_path=str(embedded_gguf_path()), vocab_only=True, verbose=False)
    try:
        return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                   eos_token=llm.detokenize([llm.token_eos()]).decode(),
                                   bos_token=llm.detokenize([llm.token_bos()]).decode())
    finally:
        llm.close()


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_modelfile_prompt_is_the_training_and_eval_prompt(embedded_tokenizer, served_formatter,
                                                         conversation):
    modelfile = chat_format(embedded_tokenizer).modelfile()
    trained = _training_prompt(embedded_tokenizer, conversation)
    assert ollama_prompt(modelfile, conversation) == trained
    assert embedded_tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in conversation], tokenize=False,
        add_generation_prompt=True) == trained  # the hf backend's eval prompt
    served = served_formatter(messages=[{"role": r, "content": c} for r, c in conversation])
    assert served.prompt == trained  # the llama.cpp backend's eval prompt


def test_modelfile_carries_the_default_system_prompt_and_stop(embedded_tokenizer):
    modelfile = chat_format(embedded_tokenizer).modelfile()
    trained = _training_prompt(embedded_tokenizer, CONVERSATIONS[0])
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile, re.DOTALL | re.MULTILINE).group(1)
    assert f"<|im_start|>system\n{system}<|im_end|>" in trained
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.splitlines()
    assert modelfile.splitlines()[2] == "FROM ./model.gguf"


# --- other template shapes -----------------------------------------------------------------------

class JinjaTokenizer:
    """A tokenizer stand-in with only a chat template (rendered as transformers does)."""

    def __init__(self, template: str, bos="<s>", eos="</s>"):
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        self.template, self.bos_token, self.eos_token = env.from_string(template), bos, eos

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token)


LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
          "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt"
          " %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template", [LLAMA3, QWEN], ids=["bos-no-default-system", "chatml"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_other_template_shapes_round_trip(template, conversation):
    tok = JinjaTokenizer(template, bos="<|begin_of_text|>", eos="<|eot_id|>")
    modelfile = chat_format(tok).modelfile()
    expected = tok.apply_chat_template([{"role": r, "content": c} for r, c in conversation],
                                       add_generation_prompt=True)
    assert ollama_prompt(modelfile, conversation) == expected


@pytest.mark.parametrize("template, why", [
    ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}</s>{% endfor %}",
     "not rendered verbatim"),
    (("{% for m in messages %}{% if loop.last %}[LAST]{% endif %}<{{ m['role'] }}>"
      "{{ m['content'] }}</s>{% endfor %}"), "changes how earlier ones"),
    (("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}</s>{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}"), "renders"),
])
def test_templates_with_no_ollama_form_are_refused(template, why):
    with pytest.raises(TracetuneError, match=f"cannot be written as an Ollama TEMPLATE: .*{why}"):
        chat_format(JinjaTokenizer(template))
