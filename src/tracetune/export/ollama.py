"""The Ollama Modelfile, generated from the one chat template the whole pipeline uses: the base
tokenizer's. Training applies it to every row (TRL), evaluation applies it (transformers) or the
same template stored in the GGUF (llama.cpp), and the merged exports carry it; the Modelfile's
TEMPLATE, SYSTEM and stop parameters are derived from it here and checked against it, so an
exported model sees the prompt the adapter was trained on.

The template is read as one wrapper per role (text before and after a message's content), the
text before the first message (empty for most), a default system prompt that the template inserts
when a conversation opens without one (SmolLM2 and Qwen2.5 have one), and the text that opens the
assistant's answer. The Modelfile says the same in Ollama's terms: SYSTEM holds the default
system prompt (Ollama prepends it as a system message when a conversation does not start with
one), and TEMPLATE ranges over the messages with the role wrappers. Before anything is written,
the derived format is rendered under Ollama's rules for several conversations and compared,
string for string, with the tokenizer's own rendering; a template that does not fit this shape
(one that rewrites earlier turns, trims contents, ...) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracetune.errors import TracetuneError

ROLES = ("system", "user", "assistant")
# Sentinel contents: plain mixed-case words, so a template that rewrites contents is noticed.
_S, _U1, _A1, _U2 = "SentinelSystemText", "SentinelUserOne", "SentinelAssistantOne", \
    "SentinelUserTwo"
SAMPLES = (
    (("user", "Write a Python function `add(a, b)` that returns the sum of a and b."),),
    (("system", "You write Python.\nAnswer with one fenced block."),
     ("user", "Write `is_even(n)`.")),
    (("user", "Write `f(x)`."), ("assistant", "```python\ndef f(x):\n    return x\n```"),
     ("user", "Now with a docstring, please.")),
    (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")),
    (("user", "  Complete this:\n\ndef h():\n    "),),  # contents are not trimmed
)


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as role wrappers (see the module docstring)."""

    wrappers: dict[str, tuple[str, str]]
    """Role -> (text before the content, text after it)."""
    head: str
    """Text before the first message (a BOS written by the template), usually empty."""
    default_system: str | None
    """The system prompt the template inserts when the conversation has none."""
    generation: str
    """Text that opens the assistant's answer (add_generation_prompt)."""
    stops: tuple[str, ...]
    """End-of-turn strings a server should stop at."""

    def render(self, messages) -> str:
        """The prompt Ollama builds from this format for `messages` ((role, content) pairs),
        ready for the assistant's answer."""
        msgs = list(messages)
        if self.default_system is not None and (not msgs or msgs[0][0] != "system"):
            msgs.insert(0, ("system", self.default_system))
        body = "".join(self.wrappers[r][0] + c + self.wrappers[r][1] for r, c in msgs)
        return self.head + body + self.generation

    def go_template(self) -> str:
        """The Modelfile TEMPLATE (Go text/template over Ollama's .Messages)."""
        branches = "{{ else if ".join(
            f'eq .Role "{r}" }}}}{self.wrappers[r][0]}{{{{ .Content }}}}{self.wrappers[r][1]}'
            for r in ROLES)
        return (f"{self.head}{{{{ range .Messages }}}}{{{{ if {branches}{{{{ end }}}}"
                f"{{{{ end }}}}{self.generation}")

    def modelfile(self, gguf_name: str = "model.gguf", temperature: float = 0.2) -> str:
        """The whole Modelfile for a model file beside it."""
        lines = ["# Ollama Modelfile written by tracetune: ollama create NAME -f Modelfile",
                 "# TEMPLATE and SYSTEM reproduce the chat template the adapter was trained on.",
                 f"FROM ./{gguf_name}", f'TEMPLATE """{self.go_template()}"""']
        if self.default_system is not None:
            lines.append(f'SYSTEM """{self.default_system}"""')
        lines += [f'PARAMETER stop "{s}"' for s in self.stops]
        lines.append(f"PARAMETER temperature {temperature}")
        return "\n".join(lines) + "\n"


def chat_format(tok) -> ChatFormat:
    """Read a tokenizer's chat template as a ChatFormat, checked on SAMPLES against the
    tokenizer's own rendering. Raises TracetuneError (one line) for a template that has no
    Ollama form this writer can give it."""
    from jinja2 import TemplateError

    def render(msgs, gen=False) -> str:
        return tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs],
                                       tokenize=False, add_generation_prompt=gen)

    def refuse(why: str):
        return TracetuneError(f"the base's chat template cannot be written as an Ollama "
                              f"TEMPLATE: {why}")

    try:
        one = render([("user", _U1)])
        two = render([("user", _U1), ("assistant", _A1)])
        three = render([("user", _U1), ("assistant", _A1), ("user", _U2)])
        with_gen = render([("user", _U1)], gen=True)
        with_system = render([("system", _S), ("user", _U1)])
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise refuse(f"it does not render plain conversations ({exc})") from None
    if not (two.startswith(one) and three.startswith(two) and with_gen.startswith(one)):
        raise refuse("a later message changes how earlier ones are rendered")
    assistant = _split(two[len(one):], _A1)
    user = _split(three[len(two):], _U2)
    if assistant is None or user is None:
        raise refuse("a message's content is not rendered verbatim")
    user_block = user[0] + _U1 + user[1]
    if not one.endswith(user_block) or not with_system.endswith(user_block):
        raise refuse("the user message is not rendered the same way in every position")
    head = one[:-len(user_block)]
    system = _split(with_system[:-len(user_block)], _S)
    if system is None:
        raise refuse("a system message's content is not rendered verbatim")
    lead, system_after = system
    default = None
    if lead.startswith(head):  # no default system prompt; `head` opens every conversation
        system = (lead[len(head):], system_after)
    elif head.startswith(lead) and head.endswith(system_after) \
            and len(head) >= len(lead) + len(system_after):
        default = head[len(lead):len(head) - len(system_after)]
        system, head = (lead, system_after), ""
    else:
        raise refuse("the text before the first message depends on the system message")
    stops = tuple(dict.fromkeys(s for s in (assistant[1].strip(), tok.eos_token or "") if s))
    fmt = ChatFormat({"system": system, "user": user, "assistant": assistant}, head, default,
                     with_gen[len(one):], stops)
    for sample in SAMPLES:
        if fmt.render(sample) != render(sample, gen=True):
            raise refuse(f"the derived template renders {sample[0][1]!r}... differently")
    texts = [fmt.head, fmt.generation, *(w for pair in fmt.wrappers.values() for w in pair)]
    if any("{{" in t or '"""' in t for t in texts + [default or ""]) \
            or any('"' in s for s in stops):
        raise refuse('it contains "{{" or quotes, which a Modelfile cannot hold verbatim')
    return fmt


def _split(text: str, sentinel: str) -> tuple[str, str] | None:
    """(before, after) the one occurrence of `sentinel` in `text`, else None."""
    if text.count(sentinel) != 1:
        return None
    before, after = text.split(sentinel)
    return before, after
