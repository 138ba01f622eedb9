"""Command line: ``python -m lit_nat <command>``.

Trainer subcommands (LightningCLI over :class:`~lit_nat.module.NATModule` and
:class:`~lit_nat.data.TokenShardDataModule`): ``fit``, ``validate``, ``test``, ``predict``, and ``sample`` and
``search``, which are methods of :class:`~lit_nat.sample.NATTrainer` (their signatures and docstrings are the
subcommands' options and help). The token space of the model (codebook size, grid, classes, tokenizer) is *linked*
from the data's ``meta.json`` at instantiation, so a model can never be built for other shards than the ones it reads.
Standalone commands without a model or Trainer: ``import-checkpoint``, ``reference-stats``, ``flops``, ``autonat``,
and ``tokenize`` / ``tokenize-verify`` (image folder -> token shards, :mod:`lit_nat.data.tokenize`).
"""

from __future__ import annotations

import sys
import warnings

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_nat.data import TokenShardDataModule
from lit_nat.importer import import_checkpoint, import_checkpoint_parser
from lit_nat.module import NATModule
from lit_nat.sample import NATTrainer

#: data attribute -> model argument, resolved after the DataModule has read meta.json
DATA_TO_MODEL_LINKS = {
    "codebook_size": "codebook_size",
    "grid_size": "grid_size",
    "num_classes": "num_classes",
    "tokenizer_config": "tokenizer",
}


class NATLightningCLI(LightningCLI):
    """LightningCLI with the data -> model links of the token space and the ``sample`` subcommand."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # the Trainer method's arguments that come from the instantiated classes, not from the command line
        return {**LightningCLI.subcommands(), "sample": {"model", "datamodule"}, "search": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")


def _import_checkpoint(argv: list[str]) -> None:
    import_checkpoint(**vars(import_checkpoint_parser().parse_args(argv)))


def _reference_stats(argv: list[str]) -> None:
    from jsonargparse import CLI

    from lit_nat.metrics.reference import write_reference_stats

    CLI(write_reference_stats, args=argv, as_positional=False)


def _autonat(argv: list[str]) -> None:
    from lit_nat.search.alternating import main as autonat_main

    autonat_main(argv)


def _flops(argv: list[str]) -> None:
    from lit_nat.flops import main as flops_main

    flops_main(argv)


def _tokenize(argv: list[str]) -> None:
    from lit_nat.data.tokenize import main as tokenize_main

    tokenize_main(argv)


def _tokenize_verify(argv: list[str]) -> None:
    from lit_nat.data.tokenize_verify import main as verify_main

    verify_main(argv)


#: commands that need no Trainer (LightningCLI subcommands always build a model and a datamodule)
STANDALONE_COMMANDS = {
    "import-checkpoint": _import_checkpoint,
    "reference-stats": _reference_stats,
    "flops": _flops,
    "autonat": _autonat,
    "tokenize": _tokenize,
    "tokenize-verify": _tokenize_verify,
}


def main(args: ArgsType = None) -> None:
    """Entry point of ``python -m lit_nat`` and the ``lit-nat`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in STANDALONE_COMMANDS:
        STANDALONE_COMMANDS[argv[0]](argv[1:])
        return
    # The EMA backbone is in eval mode on purpose (it is only evaluated); Lightning would warn at every fit start.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Tensor cores on Ampere+ for the transformer; no effect on CPU.
    torch.set_float32_matmul_precision("high")
    NATLightningCLI(
        NATModule,
        TokenShardDataModule,
        trainer_class=NATTrainer,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},  # a requeued SLURM job logs into the same run directory
        args=args,  # None: LightningCLI reads sys.argv itself (passing both would warn)
    )
