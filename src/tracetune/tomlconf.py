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
