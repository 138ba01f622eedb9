"""The command line's table: every command of ``python -m lit_nat``, each a typed function whose signature is its
options and whose docstring is its ``--help`` (read by :mod:`lit_nat.commands.parsing`; run by
:mod:`lit_nat.commands.cli`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# (modules, not their functions: ``lit_nat.commands.sample`` stays the module, for imports and monkeypatching)
from lit_nat.commands import adapters, autonat, edit, sample, search
from lit_nat.commands.benchmark import benchmark
from lit_nat.commands.train import fit, predict, test, validate
from lit_nat.data.tokenize import tokenize
from lit_nat.data.tokenize_verify import tokenize_verify
from lit_nat.metrics.evaluate import evaluate
from lit_nat.metrics.reference import write_reference_stats
from lit_nat.models.flops import flops
from lit_nat.training.importer import import_checkpoint


@dataclass(frozen=True)
class Command:
    """One row of the table.

    Args:
        function: what the command runs; its parameters ``trainer``, ``model`` and ``datamodule`` (if it has them)
            are built by the command layer, the others are its options.
        summary: the line of the command in ``python -m lit_nat --help``.
        objects: what the command runs on: nothing (``none``), a config's model, data and Trainer (``config``), or
            those or a checkpoint alone when no config names a model or data: the model rebuilt from the checkpoint
            (``config_or_checkpoint_module``) or loaded by the command (``config_or_checkpoint_path``).
        trainer_defaults: the command's own defaults of ``--trainer.*`` options (a config or the command line still
            overrides them).
    """

    function: Callable[..., Any]
    summary: str
    objects: Literal["none", "config", "config_or_checkpoint_module", "config_or_checkpoint_path"] = "none"
    trainer_defaults: dict[str, Any] = field(default_factory=dict)


#: generation commands predict under ``torch.no_grad``, not Lightning's inference mode: under autocast
#: (``--trainer.precision bf16-mixed``) inference mode re-casts every weight at every decoding step
#: (:mod:`lit_nat.generation.precision`); the tokens are the same
GENERATION_TRAINER = {"inference_mode": False}


#: every command of ``python -m lit_nat``, in the order ``--help`` lists them
COMMANDS: dict[str, Command] = {
    "fit": Command(fit, "train a model from a config (--config; --model.*, --data.*, --trainer.* override it)",
                   "config"),  # fmt: skip
    "validate": Command(validate, "validation loss and FID (and CLIP score) of a checkpoint with its or the config's "
                        "schedule", "config"),  # fmt: skip
    "test": Command(test, "loss on the config's test split", "config"),
    "predict": Command(predict, "generate the data module's prediction plan of images", "config", GENERATION_TRAINER),
    "sample": Command(sample.sample, "generate images from a checkpoint: samples.npz, grid.png (--ckpt_path alone is "
                      "enough)", "config_or_checkpoint_module", GENERATION_TRAINER),  # fmt: skip
    "edit": Command(edit.edit, "inpaint, outpaint or re-generate regions of images with a checkpoint",
                    "config_or_checkpoint_path"),  # fmt: skip
    "search": Command(search.search, "search a checkpoint's generation strategy by FID (AutoNAT Sec. 4.2); resumable",
                      "config"),  # fmt: skip
    "merge-adapter": Command(adapters.merge_adapter, "LoRA adapters merged into a checkpoint's weights -> a plain "
                             "checkpoint"),  # fmt: skip
    "import-checkpoint": Command(import_checkpoint, "official AutoNAT/ENAT weights or an aMUSEd folder -> a lit_nat "
                                 "checkpoint"),  # fmt: skip
    "reference-stats": Command(write_reference_stats, "FID reference statistics of real images or of token shards"),
    "evaluate": Command(evaluate, "FID, IS, precision/recall of an ADM-layout .npz or image folder, with a protocol "
                        "report that warns where it departs from the paper's"),  # fmt: skip
    "flops": Command(flops, "compute per generated image of one or more configs"),
    "benchmark": Command(benchmark, "images/s of sampling, a training step, VQ decode and the token draw, with "
                         "GFLOPs per image and the fraction of the device's peak"),  # fmt: skip
    "autonat": Command(autonat.autonat, "AutoNAT Algorithm 1: alternate the strategy search and the line search on "
                       "(alpha, beta)"),  # fmt: skip
    "tokenize": Command(tokenize, "image folders (ImageNet, COCO, img2dataset) -> token shards; resumable, SLURM "
                        "arrays"),  # fmt: skip
    "tokenize-verify": Command(tokenize_verify, "check a tokenised split and, with --finalize, publish it in "
                               "meta.json"),  # fmt: skip
}
