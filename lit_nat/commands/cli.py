"""Command line: ``python -m lit_nat <command>``.

Trainer subcommands (LightningCLI over :class:`~lit_nat.training.module.NATModule` and
:class:`~lit_nat.data.TokenShardDataModule`): ``fit``, ``validate``, ``test``, ``predict``, and ``sample`` and
``search``, which are methods of :class:`~lit_nat.training.trainer.NATTrainer` (their signatures and docstrings are the
subcommands' options and help). The token space of the model (codebook size, grid, classes, tokenizer) is *linked*
from the data's ``meta.json`` at instantiation, so a model can never be built for other shards than the ones it reads.
Standalone commands without a model or Trainer: ``import-checkpoint``, ``reference-stats``, ``flops``, ``autonat``,
and ``tokenize`` / ``tokenize-verify`` (image folder -> token shards, :mod:`lit_nat.data.tokenize`). ``sample`` and
``edit`` also run from ``--ckpt_path`` alone (no config, no data): the checkpoint describes its model.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.core.checkpointing import is_remote, read_checkpoint
from lit_nat.data import TokenShardDataModule
from lit_nat.core.diskspace import disk_full_cause, disk_full_error
from lit_nat.core.errors import CheckpointError, LitNatError, UsageError
from lit_nat.core.flags import one_line_parse_errors
from lit_nat.training.importer import import_checkpoint, import_checkpoint_parser
from lit_nat.training.loading import module_from_checkpoint
from lit_nat.models import resolve_arch
from lit_nat.training.module import NATModule
from lit_nat.callbacks.schedule_search import ScheduleSearch
from lit_nat.training.trainer import NATTrainer

#: data attribute -> model argument, resolved after the DataModule has read meta.json
DATA_TO_MODEL_LINKS = {
    "codebook_size": "codebook_size",
    "grid_size": "grid_size",
    "num_classes": "num_classes",
    "tokenizer_config": "tokenizer",
    "text_encoder_config": "text_encoder",
}


#: model arguments taken from the checkpoint's hyperparameters when --ckpt_path is given (see _parse_ckpt_path)
STRUCTURE_ARGS = ("arch", "arch_overrides")
#: saved by value (NATModule records the resolved schedule); on_load_checkpoint reports which schedule wins
SCHEDULE_ARGS = ("schedule", "schedule_params")
#: --ckpt_path values Lightning resolves itself
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class NATLightningCLI(LightningCLI):
    """LightningCLI with the data -> model links of the token space and the ``sample`` subcommand."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # the Trainer method's arguments that come from the instantiated classes, not from the command line
        trainer_methods = {name: {"model", "datamodule"} for name in ("sample", "search", "edit")}
        return {**LightningCLI.subcommands(), **trainer_methods}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")
        # A config's top-level `evaluation:` (FID in validation) and `schedule_search:` (the schedule's gradient steps
        # between epochs) sections: Lightning adds both callbacks to the Trainer's. Off unless a config says
        # `enabled: true` (the paper configs do); `--evaluation.enabled false` / `--schedule_search.enabled false`
        # turn them off for one run.
        parser.add_lightning_class_args(GenerativeEvaluation, "evaluation")
        parser.add_lightning_class_args(ScheduleSearch, "schedule_search")
        parser.set_defaults({"evaluation.enabled": False, "schedule_search.enabled": False})

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``: the checkpoint decides what the network *is*, the config how it is trained and sampled.

        LightningCLI (2.3+) replaces *every* model argument by the hyperparameters saved in the checkpoint, which
        silently drops explicit overrides such as ``validate --ckpt_path X --model.schedule Y
        --model.schedule_source=config``. Here only the backbone's structure (``arch``, ``arch_overrides``) comes from
        the checkpoint, and only where the config leaves them at their defaults; a config or command line that asks for
        another structure than the weights have is an error naming both. Every other argument keeps the config's and
        command line's value, and the differences are reported.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or (str(ckpt_path) in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file()):
            return
        if is_remote(ckpt_path) or str(ckpt_path).startswith("registry"):  # Lightning resolves these itself
            return
        # mmap: only the small hyper_parameters entry is read, not the weights; a damaged file is named here
        saved = read_checkpoint(ckpt_path, mmap=True).get("hyper_parameters")
        model = self.config[subcommand].get("model")
        if not saved or model is None:
            return
        current = model.as_dict() if hasattr(model, "as_dict") else dict(model)
        structure = {k: saved[k] for k in STRUCTURE_ARGS if k in saved}
        check_structure(ckpt_path, structure, current)
        differ = [f"{k}: {_plain(saved[k])!r} -> {_plain(current[k])!r}" for k in sorted(saved)
                  if k in current and k not in structure and k not in SCHEDULE_ARGS
                  and _plain(saved[k]) != _plain(current[k])]  # fmt: skip
        if structure:
            self.config = self.parser.parse_object({subcommand: {"model": structure}}, self.config)
        if differ:
            rank_zero_info(f"{ckpt_path}: model arguments that differ from the checkpoint's (the config's are used): "
                           + "; ".join(differ))  # fmt: skip


def check_structure(ckpt_path: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A config that sets ``arch``/``arch_overrides`` (not the defaults) must agree with the checkpoint's backbone.

    Agreeing means: every key the config's ``arch_overrides`` names has the checkpoint's value, and a config ``arch``
    other than the checkpoint's resolves to the same structure. (An imported official checkpoint records the widths
    read from its tensors; its config may name only what tensors cannot tell, such as ``num_heads``.)
    """
    if "arch" not in saved:
        return
    defaults = {k: inspect.signature(NATModule).parameters[k].default for k in STRUCTURE_ARGS}
    arch, overrides = current.get("arch"), _plain(current.get("arch_overrides")) or {}
    if {"arch": arch, "arch_overrides": overrides or None} == {k: _plain(v) for k, v in defaults.items()}:
        return  # nothing asked: the checkpoint's structure is taken
    have = _plain(resolve_arch(saved["arch"], saved.get("arch_overrides")))
    conflicts = {k: (have.get(k), v) for k, v in overrides.items() if have.get(k) != v}
    if arch != saved["arch"]:
        want = _plain(resolve_arch(arch, overrides))
        conflicts.update({k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want))
                          if have.get(k) != want.get(k)})  # fmt: skip
    if conflicts:
        raise CheckpointError(
            f"{ckpt_path}: the checkpoint's backbone is {saved['arch']!r} {_plain(saved.get('arch_overrides')) or ''}"
            f" but the config asks for {arch!r} {overrides or ''} (checkpoint vs config: {conflicts}); set "
            "--model.arch/--model.arch_overrides to the checkpoint's, or leave them out"
        )


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, to compare saved hyperparameters with parsed config values."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _import_checkpoint(argv: list[str]) -> None:
    import_checkpoint(**vars(import_checkpoint_parser().parse_args(argv)))


def _reference_stats(argv: list[str]) -> None:
    from jsonargparse import CLI

    from lit_nat.metrics.reference import write_reference_stats

    CLI(write_reference_stats, args=argv, as_positional=False, exit_on_error=False)


def _autonat(argv: list[str]) -> None:
    from lit_nat.search.alternating import main as autonat_main

    autonat_main(argv)


def _flops(argv: list[str]) -> None:
    from lit_nat.models.flops import main as flops_main

    flops_main(argv)


def _tokenize(argv: list[str]) -> None:
    from lit_nat.data.tokenize import main as tokenize_main

    tokenize_main(argv)


def _tokenize_verify(argv: list[str]) -> None:
    from lit_nat.data.tokenize_verify import main as verify_main

    verify_main(argv)


@dataclass(frozen=True)
class Command:
    """One row of the command table: a one-line summary and, for a standalone command, its runner (``argv`` after the
    command name); Trainer commands (``run=None``) go through LightningCLI and :class:`NATTrainer`."""

    summary: str
    run: Callable[[list[str]], Any] | None = None


#: every command of ``python -m lit_nat``, in the order ``--help`` lists them
COMMANDS: dict[str, Command] = {
    "fit": Command("train a model from a config (--config; --model.*, --data.*, --trainer.* override it)"),
    "validate": Command("validation loss and FID (and CLIP score) of a checkpoint with its or the config's schedule"),
    "test": Command("loss on the config's test split"),
    "predict": Command("generate the data module's prediction plan of images"),
    "sample": Command("generate images from a checkpoint: samples.npz, grid.png (--ckpt_path alone is enough)"),
    "edit": Command("inpaint, outpaint or re-generate regions of images with a checkpoint"),
    "search": Command("search a checkpoint's generation strategy by FID (AutoNAT Sec. 4.2); resumable"),
    "import-checkpoint": Command("official AutoNAT/ENAT weights or an aMUSEd folder -> a lit_nat checkpoint",
                                 _import_checkpoint),  # fmt: skip
    "reference-stats": Command("FID reference statistics of real images or of token shards", _reference_stats),
    "flops": Command("compute per generated image of one or more configs", _flops),
    "autonat": Command("AutoNAT Algorithm 1: alternate the strategy search and the line search on (alpha, beta)",
                       _autonat),  # fmt: skip
    "tokenize": Command("image folders (ImageNet, COCO, img2dataset) -> token shards; resumable, SLURM arrays",
                        _tokenize),  # fmt: skip
    "tokenize-verify": Command("check a tokenised split and, with --finalize, publish it in meta.json",
                               _tokenize_verify),  # fmt: skip
}


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
        "Booleans take a value (--overwrite true). A user's mistake prints one line."
    )


def version() -> str:
    import lightning

    from lit_nat import __version__

    return f"lit_nat {__version__} (torch {torch.__version__}, lightning {lightning.__version__})"


#: Trainer subcommands that also run from a checkpoint alone: its hyper-parameters describe the whole model (token
#: space, tokenizer, text encoder), so an imported aMUSEd or official checkpoint needs no config and no data
CHECKPOINT_ONLY_COMMANDS = ("sample", "edit")


def is_checkpoint_only(argv: list[str]) -> bool:
    """``sample`` / ``edit`` with ``--ckpt_path`` and neither a config nor data or model options."""
    if not argv or argv[0] not in CHECKPOINT_ONLY_COMMANDS:
        return False
    rest = argv[1:]
    return any(a.startswith("--ckpt_path") for a in rest) and not any(
        a.startswith(("--config", "-c", "--data", "--model")) for a in rest)  # fmt: skip


def run_from_checkpoint(argv: list[str]) -> Any:
    """``python -m lit_nat sample|edit --ckpt_path K ...`` without ``--config``: the model is rebuilt from the
    checkpoint's hyper-parameters; ``--trainer.*`` options (accelerator, devices, precision) still apply (no logger
    by default: nothing is trained)."""

    command = argv[0]
    parser = LightningArgumentParser(prog=f"python -m lit_nat {command}", exit_on_error=False,
                                     description=f"{command} from a checkpoint alone (no --config)")  # fmt: skip
    parser.add_class_arguments(NATTrainer, "trainer", fail_untyped=False, sub_configs=True)
    parser.set_defaults({"trainer.logger": False})
    parser.add_method_arguments(NATTrainer, command, skip={"model", "datamodule"})
    config = parser.parse_args(argv[1:])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # (renamed in jsonargparse 4.49)
    trainer = instantiate(config).trainer
    args = {k: v for k, v in config.as_dict().items() if k != "trainer"}
    ckpt_path = str(args["ckpt_path"])
    # edit loads the checkpoint itself; sample's predict run restores the weights into this fresh module
    model = None
    if command != "edit":  # (built with the moved assets' new locations: a CLIP folder gives the backbone's width)
        assets = {k: args.get(k) for k in ("tokenizer_checkpoint", "text_encoder")}
        model = module_from_checkpoint(read_checkpoint(ckpt_path, mmap=True), ckpt_path, **assets)
    return getattr(trainer, command)(model, **args)


#: options that take several values after one flag (``--prompts "a red bus" "a cat"``), as users write them
LIST_OPTIONS = ("--prompts", "--labels", "--seeds")
INTEGER_LISTS = ("--labels", "--seeds")


def gather_list_options(argv: list[str]) -> list[str]:
    """``--prompts a b c`` -> ``--prompts=["a", "b", "c"]`` (jsonargparse reads a list from one JSON value)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in LIST_OPTIONS:
            values, j = [], i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                values.append(argv[j])
                j += 1
            if len(values) != 1 or not values[0].lstrip().startswith("["):  # a JSON list passes through as it is
                if argv[i] in INTEGER_LISTS:  # --labels 3 7
                    values = [int(v) if v.lstrip("-").isdigit() else v for v in values]
                out.append(f"{argv[i]}={json.dumps(values)}")
                i = j
                continue
        out.append(argv[i])
        i += 1
    return out


def main(args: ArgsType = None) -> None:
    """Entry point of ``python -m lit_nat`` and the ``lit-nat`` console script."""
    argv = gather_list_options(list(sys.argv[1:] if args is None else args))
    if args is None:  # LightningCLI reads sys.argv itself (and warns if given args too); DDP launchers re-run it
        sys.argv[1:] = argv
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return
    if argv[0] == "--debug":  # (entry() handles it for the console; here for main([...]) calls)
        os.environ["LIT_NAT_DEBUG"] = "1"
        return main(argv[1:])
    if argv[0] == "--version":
        print(version())
        return
    if argv[0] not in COMMANDS:
        raise UsageError(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} (see --help)")
    if COMMANDS[argv[0]].run is not None:
        with one_line_parse_errors():
            COMMANDS[argv[0]].run(argv[1:])
        return
    # The EMA backbone is in eval mode on purpose (it is only evaluated); Lightning would warn at every fit start.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # sample's writer takes each batch's sample indices from the batch itself, not from Lightning's batch_indices
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
    # Tensor cores on Ampere+ for the transformer; no effect on CPU.
    torch.set_float32_matmul_precision("high")
    with one_line_parse_errors(plain_argparse=False):
        run_trainer_command(argv, args is not None)


def run_trainer_command(argv: list[str], given: bool) -> None:
    """A Trainer command: from a checkpoint alone, or LightningCLI over the config (``given``: ``argv`` came as
    ``args``, else LightningCLI reads ``sys.argv`` itself)."""
    if is_checkpoint_only(argv):
        run_from_checkpoint(argv)
        return
    NATLightningCLI(
        NATModule,
        TokenShardDataModule,
        trainer_class=NATTrainer,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},  # a requeued SLURM job logs into the same run directory
        # the recipe (AdamW, warm-up, decay) is the module's (--model.lr, --model.weight_decay, ...): no --optimizer or
        # --lr_scheduler that would silently replace it
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},  # a mistake in a flag is one line (one_line_parse_errors), not a usage
        args=argv if given else None,
    )


#: built-in errors that lit_nat raises for a user's value or path (and that libraries raise for a bad file): printed
#: as one line by :func:`entry`, like :class:`~lit_nat.core.errors.LitNatError`
USER_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                     PermissionError)  # fmt: skip


def entry() -> None:
    """The console entry (``python -m lit_nat``, ``lit-nat``): :func:`main` with a user's errors as one line.

    A :class:`~lit_nat.core.errors.LitNatError` prints ``lit_nat: error: <message>`` and exits with its code; a bad value
    or path met as a built-in error (``ValueError``, ``FileNotFoundError``, ``FileExistsError``, ...) prints
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
