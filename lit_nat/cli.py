"""Command line: ``python -m lit_nat {fit,validate,test,predict,import-checkpoint}``.

The Trainer subcommands come from LightningCLI over :class:`~lit_nat.module.NATModule` and
:class:`~lit_nat.data.TokenShardDataModule`. The token space of the model (codebook size, grid, classes, tokenizer)
is *linked* from the data's ``meta.json`` at instantiation, so a model can never be built for other shards than the
ones it reads. ``import-checkpoint`` has no Trainer and is a plain jsonargparse command.
"""

from __future__ import annotations

import sys
import warnings

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_nat.data import TokenShardDataModule
from lit_nat.importer import import_checkpoint, import_checkpoint_parser
from lit_nat.module import NATModule

#: data attribute -> model argument, resolved after the DataModule has read meta.json
DATA_TO_MODEL_LINKS = {
    "codebook_size": "codebook_size",
    "grid_size": "grid_size",
    "num_classes": "num_classes",
    "tokenizer_config": "tokenizer",
}


class NATLightningCLI(LightningCLI):
    """LightningCLI with the data -> model links of the token space."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")


def main(args: ArgsType = None) -> None:
    """Entry point of ``python -m lit_nat`` and the ``lit-nat`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "import-checkpoint":
        parsed = import_checkpoint_parser().parse_args(argv[1:])
        import_checkpoint(**vars(parsed))
        return
    # The EMA backbone is in eval mode on purpose (it is only evaluated); Lightning would warn at every fit start.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Tensor cores on Ampere+ for the transformer; no effect on CPU.
    torch.set_float32_matmul_precision("high")
    NATLightningCLI(
        NATModule,
        TokenShardDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},  # a requeued SLURM job logs into the same run directory
        args=argv,
    )
