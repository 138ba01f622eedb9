"""One flag style for every command: booleans take ``true``/``false`` as LightningCLI's do (``--overwrite true``);
the argparse-based commands also accept the bare flag (``--overwrite``) as ``true``."""

from __future__ import annotations

import argparse

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
