"""One flag style for every command: booleans take ``true``/``false`` as LightningCLI's do (``--overwrite true``);
the argparse-based commands also accept the bare flag (``--overwrite``) as ``true``. A mistake in a flag is one line,
``--flag: expected <type>, got <value>`` (:func:`flag_error`), whichever parser met it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from lit_nat.core.errors import UsageError

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in TRUE or value in FALSE:
        return value in TRUE
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, help: str, default: bool | None = False) -> None:
    """``--name [true|false]``: the bare flag means true; ``default`` when absent (None: decided later)."""
    parser.add_argument(name, nargs="?", const=True, default=default, type=parse_bool, metavar="true|false",
                        help=help)  # fmt: skip


# ------------------------------------------------------------------------------------------ parse errors, one line
_ARGPARSE_TYPE = re.compile(r"argument (?P<flag>\S+): invalid (?P<type>[\w.]+) value: (?P<got>.*)", re.S)
_ARGPARSE_CHOICE = re.compile(r"argument (?P<flag>\S+): invalid choice: (?P<got>.*?) \(choose from (?P<choices>.*)\)",
                              re.S)  # fmt: skip
_ARGPARSE_OTHER = re.compile(r"argument (?P<flag>\S+): (?P<rest>.*)", re.S)
_JSONARGPARSE_KEY = re.compile(r'Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)', re.S)
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
    """A command-line parser's error message (argparse's or jsonargparse's, often several lines with the usage) as
    the one line a user reads: ``--flag: expected <type>, got <value>``; other messages keep their first line."""
    message = message.strip()
    if match := _JSONARGPARSE_KEY.match(message):
        return f"--{match.group('key')}: {_jsonargparse_detail(match.group('rest'))}"
    if match := _ARGPARSE_TYPE.match(message):
        return f"{match.group('flag')}: expected {match.group('type')}, got {match.group('got').strip()}"
    if match := _ARGPARSE_CHOICE.match(message):
        return f"{match.group('flag')}: expected one of {match.group('choices')}, got {match.group('got')}"
    if match := _ARGPARSE_OTHER.match(message):
        return f"{match.group('flag')}: {(match.group('rest').splitlines() or [''])[0]}"
    return (message.splitlines() or [""])[0]


@contextmanager
def one_line_parse_errors(plain_argparse: bool = True) -> Iterator[None]:
    """A parse error met inside becomes :class:`~lit_nat.core.errors.UsageError` with :func:`flag_error`'s line, which the
    command line prints as ``lit_nat: error: <line>`` (exit 2) instead of the whole usage.

    jsonargparse's parsers (LightningCLI's) are built with ``exit_on_error=False`` and raise ``ArgumentError``, caught
    here. The standalone commands build plain ``argparse`` parsers themselves, which print the usage and exit; with
    ``plain_argparse``, ``ArgumentParser.error`` (argparse's documented override point) raises instead for the
    duration (jsonargparse's parsers override ``error`` and are not affected)."""
    original = argparse.ArgumentParser.error

    def error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
        raise UsageError(flag_error(message))

    if plain_argparse:
        argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    except argparse.ArgumentError as err:
        raise UsageError(flag_error(str(err))) from None
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]
