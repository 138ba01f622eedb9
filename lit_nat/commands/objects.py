"""The objects a command runs on: a model, its data and a Trainer, built from a config or from a checkpoint alone.

- **From a config** (:class:`ConfiguredRun`, Lightning's ``LightningCLI`` with ``run=False``): the sections
  ``model``, ``data``, ``trainer``, ``evaluation`` and ``schedule_search`` of a fit config, with the token space of
  the model (codebook size, grid, classes, tokenizer, text encoder) *linked* from the data's ``meta.json`` at
  instantiation, so a model can never be built for other shards than the ones it reads; the command's own options
  sit beside them at the top level. ``fit``, ``validate``, ``test``, ``predict``, ``search``, and ``sample``/``edit``
  with a config build their objects here.
- **From a checkpoint alone** (:func:`checkpoint_run`): ``sample``/``edit --ckpt_path K`` without a config: the
  checkpoint's hyper-parameters describe the whole model, ``--trainer.*`` still applies (no logger by default).

With ``--ckpt_path`` the checkpoint decides what the network *is* (``arch``, ``arch_overrides``), the config how it
is trained and sampled (:func:`adopt_checkpoint_structure`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.callbacks.run_health import RunHealth
from lit_nat.callbacks.schedule_search import ScheduleSearch
from lit_nat.commands.parsing import add_function_options, description, function_kwargs, parse
from lit_nat.core.checkpointing import is_remote, read_checkpoint
from lit_nat.core.errors import CheckpointError
from lit_nat.data import TokenShardDataModule
from lit_nat.models import resolve_arch
from lit_nat.training.loading import module_from_checkpoint
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer

#: data attribute -> model argument, resolved after the DataModule has read meta.json
DATA_TO_MODEL_LINKS = {
    "codebook_size": "codebook_size",
    "grid_size": "grid_size",
    "num_classes": "num_classes",
    "tokenizer_config": "tokenizer",
    "text_encoder_config": "text_encoder",
}
#: model arguments taken from the checkpoint's hyperparameters when --ckpt_path is given
STRUCTURE_ARGS = ("arch", "arch_overrides")
#: saved by value (NATModule records the resolved schedule); on_load_checkpoint reports which schedule wins
SCHEDULE_ARGS = ("schedule", "schedule_params")
#: --ckpt_path values Lightning resolves itself
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class ConfiguredRun(LightningCLI):
    """A config's model, data and Trainer (``self.model``, ``self.datamodule``, ``self.trainer``) and the command's
    own arguments (:meth:`command_kwargs`), parsed from ``argv`` by one parser with ``--config``/``--print_config``.

    Args:
        command: the command function; its options join the parser's top level.
        argv: the command line after the command's name.
        prog: the program name in ``--help``.
    """

    def __init__(self, command: Callable, argv: list[str], prog: str,
                 trainer_defaults: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.command = command
        super().__init__(
            NATModule,
            TokenShardDataModule,
            trainer_class=NATTrainer,
            trainer_defaults=dict(trainer_defaults or {}),
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},  # a requeued SLURM job logs into the same run directory
            save_config_callback=SaveConfigCallback,  # the resolved config.yaml in the run's log directory
            # the recipe (AdamW, warm-up, decay) is the module's (--model.lr, ...): no --optimizer or --lr_scheduler
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "prog": prog, "description": description(command)},
            args=argv,
            run=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")
        # A config's top-level `evaluation:` (FID in validation) and `schedule_search:` (the schedule's gradient steps
        # between epochs) sections: both callbacks join the Trainer's. Off unless a config says `enabled: true` (the
        # paper configs do); `--evaluation.enabled false` / `--schedule_search.enabled false` turn them off for a run.
        parser.add_lightning_class_args(GenerativeEvaluation, "evaluation")
        parser.add_lightning_class_args(ScheduleSearch, "schedule_search")
        parser.set_defaults({"evaluation.enabled": False, "schedule_search.enabled": False})
        # `run_health:` (loss and accuracy per mask-ratio bucket, codebook usage, a collapse warning), on by default
        parser.add_lightning_class_args(RunHealth, "run_health")
        add_function_options(parser, self.command)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """``argv`` is always given (the command's name is not part of it); a mistake is one line."""
        self.config = parse(parser, list(args))

    def before_instantiate_classes(self) -> None:
        ckpt_path = self.config.get("ckpt_path")
        structure = adopt_checkpoint_structure(ckpt_path, self.config.get("model"))
        if structure:
            self.config = self.parser.parse_object({"model": structure}, self.config)

    def command_kwargs(self) -> dict[str, Any]:
        return function_kwargs(self.config, self.command)


def adopt_checkpoint_structure(ckpt_path: Any, model: Any) -> dict[str, Any]:
    """The backbone structure of ``ckpt_path`` (``arch``, ``arch_overrides``) for the config's model section.

    Only the structure comes from the checkpoint, and only where the config leaves it at its defaults; a config that
    asks for another structure than the weights have is an error naming both (:func:`check_structure`). Every other
    model argument keeps the config's value, and the differences are reported.
    """
    if not ckpt_path or model is None or (str(ckpt_path) in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file()):
        return {}
    if is_remote(ckpt_path) or str(ckpt_path).startswith("registry"):  # Lightning resolves these itself
        return {}
    # mmap: only the small hyper_parameters entry is read, not the weights; a damaged file is named here
    saved = read_checkpoint(ckpt_path, mmap=True).get("hyper_parameters")
    if not saved:
        return {}
    current = model.as_dict() if hasattr(model, "as_dict") else dict(model)
    structure = {k: saved[k] for k in STRUCTURE_ARGS if k in saved}
    check_structure(ckpt_path, structure, current)
    differ = [f"{k}: {_plain(saved[k])!r} -> {_plain(current[k])!r}" for k in sorted(saved)
              if k in current and k not in structure and k not in SCHEDULE_ARGS
              and _plain(saved[k]) != _plain(current[k])]  # fmt: skip
    if differ:
        rank_zero_info(f"{ckpt_path}: model arguments that differ from the checkpoint's (the config's are used): "
                       + "; ".join(differ))  # fmt: skip
    return structure


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


def checkpoint_run(command: Callable, argv: list[str], prog: str, build_model: bool,
                   trainer_defaults: dict[str, Any] | None = None) -> tuple[Any, Any, dict]:  # fmt: skip
    """``(trainer, model, kwargs)`` of a command run from ``--ckpt_path`` alone: the model rebuilt from the checkpoint's
    hyper-parameters (``build_model``; else None: the command loads it itself), a Trainer from ``--trainer.*``."""
    parser = LightningArgumentParser(prog=prog, exit_on_error=False, description=description(command))
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options (--print_config "
                        "writes one)")  # fmt: skip
    parser.add_class_arguments(NATTrainer, "trainer", fail_untyped=False, sub_configs=True)
    defaults = {f"trainer.{key}": value for key, value in (trainer_defaults or {}).items()}
    parser.set_defaults({"trainer.logger": False, **defaults})  # nothing is trained: no logger
    add_function_options(parser, command)
    config = parse(parser, argv)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # (renamed in jsonargparse 4.49)
    trainer = instantiate(config).trainer
    kwargs = function_kwargs(config, command)
    model = None
    if build_model:  # (with the moved assets' new locations: a CLIP folder gives the backbone's width)
        ckpt_path, assets = str(kwargs["ckpt_path"]), kwargs["assets"]
        model = module_from_checkpoint(read_checkpoint(ckpt_path, mmap=True), ckpt_path, **assets.when_built())
    return trainer, model, kwargs
