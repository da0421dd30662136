"""TOML tables -> frozen dataclasses, with errors that name the file, the key and the problem."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from tracetune.errors import TracetuneError


def read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TracetuneError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TracetuneError(f"{path}: not valid TOML ({exc})") from None


def build(cls: type, values: dict, where: str, *, exclude: tuple[str, ...] = ()):
    """`cls(**values)` after checking every key exists (and is not in `exclude`) and every value
    has the field's type. `where` prefixes messages, e.g. "exp.toml [eval]"."""
    if not isinstance(values, dict):
        raise TracetuneError(f"{where} must be a table")
    fields = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TracetuneError(f"{where}: unknown key(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    clean = {k: check_type(f"{where}: {k}", v, hints[k]) for k, v in values.items()}
    return cls(**clean)


def check_type(name: str, value, hint):
    """`value` converted to `hint` (lists to tuples, ints to floats), or a TracetuneError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    if origin is tuple:
        item = args[0] if args else str
        if not isinstance(value, (list, tuple)):
            raise TracetuneError(f"{name} must be {_name(hint)}")
        return tuple(check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TracetuneError(f"{name} must be a table")
        return {str(k): check_type(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and hint is not bool:
        raise TracetuneError(f"{name} must be {_name(hint)}, not a boolean")
    if not isinstance(value, hint):
        raise TracetuneError(f"{name} must be {_name(hint)}, not {type(value).__name__}")
    return value


def _name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        item = (typing.get_args(hint) or (str,))[0]
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(item, "items")
    if typing.get_origin(hint) is dict:
        return "a table"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return " or ".join(_name(a) for a in args)
    return {"str": "a string", "int": "an integer", "float": "a number",
            "bool": "true or false"}.get(getattr(hint, "__name__", ""), str(hint))


# --- key=value option strings ("NAME,key=value,...") -------------------------------------------

def split_options(text: str, what: str) -> tuple[str, dict[str, str]]:
    """`"NAME,key=value,..."` -> ("NAME", {key: value}); `what` names the string in errors
    (e.g. "workflow 'repair,max_iters=5'")."""
    head, *parts = text.strip().split(",")  # the head as written: it names a file or model
    if not head.strip():
        raise TracetuneError(f"{what}: empty name")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise TracetuneError(f"{what}: bad option {part!r} (expected key=value)")
        options[key.strip()] = value.strip()
    return head, options


def build_from_strings(cls: type, values: dict[str, str], where: str):
    """`cls(**values)` with each string converted to its field's type (bool: true/false/1/0/
    yes/no/on/off); unknown keys and unparsable values raise one TracetuneError naming them."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TracetuneError(f"{where}: unknown option(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(sorted(fields)) or 'none'})")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _from_string(f"{where}: {k}", v, hints[k]) for k, v in values.items()})


def _from_string(name: str, raw, hint):
    if not isinstance(raw, str):  # already typed (a TOML table's value)
        return check_type(name, raw, hint)
    try:
        return parse_value(raw, hint)
    except ValueError:
        raise TracetuneError(f"{name} = {raw!r} is not {_name(unwrap_optional(hint))}") from None


def unwrap_optional(hint):
    """X | None -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if args else str
    return hint


def parse_value(raw: str, hint):
    """One option's text as its field's type: bool (true/false/1/0/yes/no/on/off), int, float,
    Path (~ expanded), str; "none" is None where the field is optional. Raises ValueError."""
    import os
    from pathlib import Path as _Path

    if raw.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    hint = unwrap_optional(hint)
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if hint in (int, float):
        return hint(raw)
    if hint is _Path:
        return _Path(os.path.expanduser(raw))
    return raw


def field_help(cls: type) -> dict[str, str]:
    """A dataclass's one-line field docs: the string literal under each field, as written in
    its source (the house style's field docs). Fields without one are left out.

    Read from the source with `ast` because Python keeps no attribute docstrings at run time;
    this is what lets CLI help and config docs be written once, beside the field."""
    import ast
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and \
                    isinstance(nxt.value.value, str):
                out[node.target.id] = " ".join(nxt.value.value.split())
    return out


def field_defaults(cls: type) -> dict:
    """name -> default of every dataclass field that has one (factories called)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
