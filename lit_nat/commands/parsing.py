"""One way to read a command line: a command is a typed function; its signature is its options and its docstring its
``--help`` (litgpt's way), read by jsonargparse.

- A parameter whose type is a dataclass (a request or a settings group, stated once and shared with the callback
  and the config that use it) gives its fields as top-level options: ``--num_samples``, not ``--request.num_samples``.
- A list option takes its values after one flag, as users write them: ``--prompts "a red bus" "a cat"``,
  ``--labels 3 7``; given again, it adds to the list (``--tokenizer_arg a=1 --tokenizer_arg b=2``).
- Booleans take a value, ``--overwrite true``; alone, the flag means true.
- Every command has ``--config FILE.yaml`` (several merge, later wins; the command line wins over files) and
  ``--print_config`` (the complete options as YAML: save it and ``--config`` it to rerun the same job).
- A mistake in an option is one line, ``--flag: expected <type>, got <value>`` (:func:`flag_error`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import docstring_parser
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lit_nat.core.errors import UsageError

#: parameters a command function receives from the command layer, not from options: the objects of a config
INJECTED = ("trainer", "model", "datamodule")


def docstring_of(obj: Any) -> docstring_parser.Docstring:
    return docstring_parser.parse(inspect.getdoc(obj) or "")


def description(fn: Callable) -> str:
    """A function's docstring without its ``Args:`` section: the command's ``--help`` text."""
    doc = docstring_of(fn)
    return "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)


def list_item_type(hint: Any) -> Any | None:
    """``list[int] | None`` -> ``int``; None for a type that is not a list."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        items = [list_item_type(arg) for arg in typing.get_args(hint) if arg is not type(None)]
        return items[0] if len(items) == 1 else None
    if typing.get_origin(hint) is list:
        return (typing.get_args(hint) or (str,))[0]
    return None


def is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def add_option(parser: ArgumentParser, name: str, hint: Any, default: Any, help: str | None) -> None:
    """One typed option; ``default`` is ``inspect.Parameter.empty`` or ``dataclasses.MISSING`` when it is required."""
    required = default in (inspect.Parameter.empty, dataclasses.MISSING)
    kwargs: dict[str, Any] = {"help": help or "", "required": required}
    if not required:
        kwargs["default"] = default
    item = list_item_type(hint)
    if item is not None:  # --labels 3 7, --prompts "a b" c; repeated: extended
        parser.add_argument(f"--{name}", type=item, nargs="+", action="extend", **kwargs)
    elif hint is bool or hint == (bool | None):  # --overwrite means --overwrite true
        parser.add_argument(f"--{name}", type=hint, nargs="?", const=True, **kwargs)
    else:
        parser.add_argument(f"--{name}", type=hint, **kwargs)


def add_function_options(parser: ArgumentParser, fn: Callable, skip: tuple[str, ...] = INJECTED) -> None:
    """The options of ``fn``'s parameters (dataclass parameters: their fields), with the docstrings' help."""
    hints = typing.get_type_hints(fn)
    helps = {p.arg_name: p.description for p in docstring_of(fn).params}
    for name, param in inspect.signature(fn).parameters.items():
        if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(name, str)
        if is_settings(hint):
            field_hints = typing.get_type_hints(hint)
            field_helps = {p.arg_name: p.description for p in docstring_of(hint).params}
            for field in dataclasses.fields(hint):
                default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
                add_option(parser, field.name, field_hints[field.name], default, field_helps.get(field.name))
        else:
            add_option(parser, name, hint, param.default, helps.get(name))


def function_kwargs(config: Namespace, fn: Callable, skip: tuple[str, ...] = INJECTED) -> dict[str, Any]:
    """The arguments of ``fn`` from a parsed ``config``: plain parameters by name, dataclasses built from their
    fields."""
    hints, values = typing.get_type_hints(fn), dict(config.items()) if hasattr(config, "items") else dict(config)
    kwargs = {}
    for name in inspect.signature(fn).parameters:
        if name in skip:
            continue
        hint = hints.get(name, str)
        if is_settings(hint):
            kwargs[name] = hint(**{f.name: values[f.name] for f in dataclasses.fields(hint) if f.name in values})
        elif name in values:
            kwargs[name] = values[name]
    return kwargs


def command_parser(prog: str, fn: Callable, parser_class: type[ArgumentParser] = ArgumentParser) -> ArgumentParser:
    """The parser of a command without a model: ``--config``, ``--print_config`` and ``fn``'s options."""
    parser = parser_class(prog=prog, description=description(fn), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options (--print_config "
                        "writes one); options given after it override it")  # fmt: skip
    add_function_options(parser, fn)
    return parser


def parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """``parser.parse_args(argv)`` with a mistake as :class:`UsageError` (one line)."""
    try:
        return parser.parse_args(argv)
    except Exception as err:  # jsonargparse's ArgumentError (exit_on_error=False), argparse's for unknown options
        if type(err).__name__ != "ArgumentError":
            raise
        raise UsageError(flag_error(str(err))) from None


# ------------------------------------------------------------------------------------------ parse errors, one line
_ARGPARSE_TYPE = re.compile(r"argument (?P<flag>\S+): invalid (?P<type>[\w.]+) value: (?P<got>.*)", re.S)
_ARGPARSE_OTHER = re.compile(r"argument (?P<flag>\S+): (?P<rest>.*)", re.S)
_JSONARGPARSE_KEY = re.compile(r'Parser key "(?P<key>[^"]+)"(?: element \d+)?:\s*(?P<rest>.*)', re.S)
_EXPECTED = re.compile(r"Expected a (?P<type>.+?)\. Got value: (?P<got>.*)")
_SUBTYPES = re.compile(r"Subtypes: \[(?P<types>.*)\]")
_GIVEN = re.compile(r"Given value: (?P<got>.*)")


def type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``typing.List[int]`` -> ``List[int]``, ``NoneType`` -> ``null``."""
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text.strip()).replace("typing.", "")
    return "null" if text == "NoneType" else text


def _top_level_split(text: str) -> list[str]:
    """``int, Dict[str, int], NoneType`` -> its three items (commas inside brackets do not split)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += 1 if char in "[(" else -1 if char in "])" else 0
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in (*items, current) if item.strip()]


def _jsonargparse_detail(rest: str) -> str:
    """The body of jsonargparse's ``Parser key "k":`` error -> ``expected <types>, got <value>`` (or its first line)."""
    subtypes, expected, given = _SUBTYPES.search(rest), _EXPECTED.search(rest), _GIVEN.search(rest)
    if subtypes and given:
        names = " or ".join(type_name(t) for t in _top_level_split(subtypes.group("types")))
        return f"expected {names}, got {given.group('got').strip()!r}"
    if expected:
        return f"expected {type_name(expected.group('type'))}, got {expected.group('got').strip()!r}"
    return (rest.strip().splitlines() or ["invalid value"])[0].strip()


def flag_error(message: str) -> str:
    """A parser's error message (often several lines with the usage) as the one line a user reads:
    ``--flag: expected <type>, got <value>``; other messages keep their first line."""
    message = message.strip()
    if match := _JSONARGPARSE_KEY.match(message):
        return f"--{match.group('key')}: {_jsonargparse_detail(match.group('rest'))}"
    if match := _ARGPARSE_TYPE.match(message):
        return f"{match.group('flag')}: expected {match.group('type')}, got {match.group('got').strip()}"
    if match := _ARGPARSE_OTHER.match(message):
        return f"{match.group('flag')}: {(match.group('rest').splitlines() or [''])[0]}"
    return (message.splitlines() or [""])[0]
