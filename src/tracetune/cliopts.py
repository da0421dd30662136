"""Command-line options derived from a config dataclass: one option per field, its default and
help taken from the field (written once, beside the field), its type from the annotation.

typer reads a command's options from its signature, so the decorator gives the command a
signature that holds the command's own parameters followed by one typer.Option per field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Optional

import typer

from tracetune.tomlconf import field_defaults, field_help


def config_options(cls: type, *, exclude: tuple[str, ...] = (),
                   flags: dict[str, tuple[str, ...]] | None = None,
                   defaults: dict[str, Any] | None = None,
                   required: tuple[str, ...] = (),
                   hidden: dict[str, type] | None = None) -> Callable:
    """Decorate a typer command `fn(..., settings: dict)`: it gains an option per field of
    `cls` (minus `exclude`) and receives their values as `settings` (lists as tuples).

    flags: field -> option names (default `--field-name`); defaults: per-command defaults
    (e.g. a teacher's temperature); required: fields with no default on this command;
    hidden: name -> type of options kept for earlier releases' command lines (not in --help),
    passed in `settings` only when given."""
    flags, defaults = flags or {}, defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    base = {**field_defaults(cls), **defaults}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "settings"]
        names, added = [], []
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            annotation, default = _cli_type(hints[f.name]), base.get(f.name)
            if isinstance(default, tuple):
                default = list(default)
            decls = flags.get(f.name, ("--" + f.name.replace("_", "-"),))
            if hints[f.name] is bool and len(decls) == 1:
                decls = (f"{decls[0]}/--no-{decls[0][2:]}",)
            text = docs.get(f.name, "")
            if typing.get_origin(hints[f.name]) is tuple:
                text += " (repeatable)"
            option = typer.Option(... if f.name in required else default, *decls,
                                  help=text, show_default=f.name not in required)
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                           default=option, annotation=annotation))
            names.append(f.name)
        for name, kind in (hidden or {}).items():
            option = typer.Option(None, "--" + name.replace("_", "-"), hidden=True)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=Optional[kind]))

        @functools.wraps(fn)
        def command(**kwargs):
            settings = {n: kwargs.pop(n) for n in names}
            settings.update({n: v for n in (hidden or {}) if (v := kwargs.pop(n)) is not None})
            settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
            return fn(settings=settings, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        command.__signature__ = sig.replace(parameters=params)
        hints_fn = typing.get_type_hints(fn)
        command.__annotations__ = {**{p.name: hints_fn.get(p.name, p.annotation) for p in own},
                                   **{p.name: p.annotation for p in added}}
        return command

    return decorate


def _cli_type(hint):
    """A field's annotation as typer understands it (tuple[X, ...] -> list[X], X | None ->
    Optional[X])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return list[args[0] if args else str]
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return Optional[_cli_type(inner[0])]
    return hint
