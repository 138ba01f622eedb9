"""``python -m lit_nat <command>``: the table of :mod:`lit_nat.commands`, one parser per command, errors as one line.

A command without a model is its function's options (:func:`~lit_nat.commands.parsing.command_parser`). A command
over a model builds the model, its data and a Trainer from ``--config``
(:class:`~lit_nat.commands.objects.ConfiguredRun`), or, for ``sample`` and ``edit``, from ``--ckpt_path`` alone when
no config names a model or data (:func:`~lit_nat.commands.objects.checkpoint_run`). Either way ``--config`` and
``--print_config`` work the same.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_nat.commands import COMMANDS, Command
from lit_nat.commands.objects import ConfiguredRun, checkpoint_run
from lit_nat.commands.parsing import INJECTED, command_parser, function_kwargs, parse
from lit_nat.core.diskspace import disk_full_cause, disk_full_error
from lit_nat.core.errors import LitNatError, UsageError

__all__ = ["COMMANDS", "Command", "entry", "main", "run_command", "top_level_help"]


def top_level_help() -> str:
    """What ``python -m lit_nat --help`` prints: the command table."""
    width = max(map(len, COMMANDS)) + 2
    rows = "\n".join(f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items())
    return (
        "usage: python -m lit_nat <command> [options]   (python -m lit_nat <command> --help: its options)\n\n"
        "Train, sample, edit and tune masked-token image generators (AutoNAT, ENAT, aMUSEd) with Lightning.\n\n"
        f"commands:\n{rows}\n\noptions:\n  -h, --help{' ' * (width - 10)}this list\n"
        f"  --version{' ' * (width - 9)}lit_nat's version\n"
        f"  --debug{' ' * (width - 7)}before the command: show the traceback of an error (or LIT_NAT_DEBUG=1)\n\n"
        "Every command takes --config FILE.yaml and --print_config. Booleans take a value (--overwrite true); list "
        "options take several (--labels 3 7). A user's mistake prints one line."
    )


def version() -> str:
    import lightning

    from lit_nat import __version__

    return f"lit_nat {__version__} (torch {torch.__version__}, lightning {lightning.__version__})"


def names_config_objects(argv: list[str]) -> bool:
    """Whether a command line builds its model from a config: a ``--model.*``/``--data.*`` option, or a ``--config``
    file with a ``model`` or ``data`` section (a saved checkpoint-only ``sample`` config has neither)."""
    if any(a.startswith(("--model", "--data")) for a in argv):
        return True
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and \
            i + 1 < len(argv) else None  # fmt: skip
        if path is not None and Path(path).is_file():
            sections = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            if isinstance(sections, dict) and ({"model", "data"} & set(sections)):
                return True
    return False


def call(function: Callable, kwargs: dict[str, Any], **objects: Any) -> Any:
    """``function(**kwargs)`` plus the objects (trainer, model, datamodule) its signature asks for."""
    wanted = inspect.signature(function).parameters
    return function(**kwargs, **{k: v for k, v in objects.items() if k in wanted and k in INJECTED})


def run_command(name: str, argv: list[str]) -> Any:
    """Parse ``argv`` for the command ``name`` and run it; returns what its function returns."""
    command, prog = COMMANDS[name], f"python -m lit_nat {name}"
    if command.objects == "none":
        config = parse(command_parser(prog, command.function), argv)
        return command.function(**function_kwargs(config, command.function))
    quiet_lightning()
    if command.objects != "config" and not names_config_objects(argv):
        build_model = command.objects == "config_or_checkpoint_module"
        trainer, model, kwargs = checkpoint_run(command.function, argv, prog, build_model, command.trainer_defaults)
        return call(command.function, kwargs, trainer=trainer, model=model, datamodule=None)
    run = ConfiguredRun(command.function, argv, prog, command.trainer_defaults)
    return call(command.function, run.command_kwargs(), trainer=run.trainer, model=run.model,
                datamodule=run.datamodule)  # fmt: skip


def quiet_lightning() -> None:
    """Lightning's messages that ask nothing of a user of lit_nat, off; float32 matmuls on tensor cores."""
    # The EMA backbone is in eval mode on purpose (it is only evaluated); Lightning would warn at every fit start.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # sample's writer takes each batch's sample indices from the batch itself, not from Lightning's batch_indices
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
    torch.set_float32_matmul_precision("high")
    # Lightning's advertisements for its cloud services ("Tip: ... litlogger / litmodels"), at every run's start
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not_an_advertisement not in handler.filters:
            handler.addFilter(not_an_advertisement)


def not_an_advertisement(record: logging.LogRecord) -> bool:
    return "Tip: For seamless cloud" not in record.getMessage()


def main(args: list[str] | None = None) -> Any:
    """Entry point of ``python -m lit_nat`` and the ``lit-nat`` console script; ``args`` default to ``sys.argv``."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return None
    if argv[0] == "--debug":  # (entry() handles it for the console; here for main([...]) calls)
        os.environ["LIT_NAT_DEBUG"] = "1"
        return main(argv[1:])
    if argv[0] == "--version":
        print(version())
        return None
    if argv[0] not in COMMANDS:
        raise UsageError(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} (see --help)")
    return run_command(argv[0], argv[1:])


#: built-in errors that lit_nat raises for a user's value or path (and that libraries raise for a bad file): printed
#: as one line by :func:`entry`, like :class:`~lit_nat.core.errors.LitNatError`
USER_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                     PermissionError)  # fmt: skip


def entry() -> None:
    """The console entry (``python -m lit_nat``, ``lit-nat``): :func:`main` with a user's errors as one line.

    A :class:`~lit_nat.core.errors.LitNatError` prints ``lit_nat: error: <message>`` and exits with its code; a bad
    value or path met as a built-in error (``ValueError``, ``FileNotFoundError``, ``FileExistsError``, ...) prints
    ``lit_nat: error: <type>: <message>`` and exits with 2; neither shows a traceback unless ``--debug`` (first
    argument) or ``LIT_NAT_DEBUG=1`` asks for it. A fit or command stopped by SIGTERM exits with 143 after saving
    what it had, Ctrl-C with 130.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_nat.callbacks.reliability import stop_signal_name

    if sys.argv[1:2] == ["--debug"]:
        del sys.argv[1]
        os.environ["LIT_NAT_DEBUG"] = "1"  # also for the processes a DDP launcher starts
    debug = os.environ.get("LIT_NAT_DEBUG", "") not in ("", "0")
    try:
        main()
    except SIGTERMException:  # (a Ctrl-C during fit takes this path too: Preemption saves the current step)
        name = stop_signal_name()
        print(f"lit_nat: stopped by {name}; what was finished is saved, rerun to resume", file=sys.stderr)
        sys.exit(130 if name == "SIGINT" else 143)
    except SystemExit as stop:
        # Lightning catches a Ctrl-C itself (sample, search, a second Ctrl-C in fit), tears the run down and exits 1
        # from its handler: the KeyboardInterrupt is the exit's context. Every file written so far is whole (atomic).
        if isinstance(stop.__context__, KeyboardInterrupt):
            print("lit_nat: stopped by SIGINT; what was finished is saved, rerun to resume", file=sys.stderr)
            sys.exit(130)
        raise
    except LitNatError as err:
        if debug:
            traceback.print_exc()
        print(f"lit_nat: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        if debug:
            traceback.print_exc()
        full = disk_full_cause(err)  # a write that is not ours (a library's log, config or cache file) met a full disk
        if full is not None:
            print(f"lit_nat: error: {disk_full_error(full.filename, None, full)}", file=sys.stderr)
            sys.exit(1)
        if not isinstance(err, USER_INPUT_ERRORS):
            raise
        first_line = (str(err).strip().splitlines() or [""])[0]
        hint = "" if debug else " (--debug for the traceback)"
        print(f"lit_nat: error: {type(err).__name__}: {first_line}{hint}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lit_nat: stopped by SIGINT; what was finished is saved, rerun to resume", file=sys.stderr)
        sys.exit(130)
