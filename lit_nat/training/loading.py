"""A trained model from its checkpoint alone: the :class:`~lit_nat.training.module.NATModule` its ``hyper_parameters``
describe (token space, tokenizer, text encoder included), with its weights, ready to sample.

The checkpoint carries its generation schedule by value and its assets by reference (:mod:`lit_nat.core.assets`), so it
samples from any working directory; ``tokenizer_checkpoint`` and ``text_encoder`` point moved assets elsewhere
(checked against the recorded digests)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from lit_nat.conditioning.text import relocate as relocate_text_encoder
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError, UsageError
from lit_nat.tokenizers import relocate as relocate_tokenizer
from lit_nat.training.module import NATModule


@dataclass(frozen=True)
class AssetLocations:
    """Where the assets a checkpoint records are now, for a checkpoint made elsewhere (each checked against the
    recorded sha256).

    Args:
        tokenizer_checkpoint: where the tokenizer's weights recorded in the checkpoint are now (a moved file or
            folder, a URL#sha256=<hex>, a hub location).
        text_encoder: where the recorded text encoder is now (a moved folder or a hub id such as
            openai/clip-vit-large-patch14).
        lora_base: where the base checkpoint of a LoRA model is now (its checkpoints hold only adapters and name the
            base by path and sha256), for a model built from its checkpoint alone; with --config, --model.init_from.
    """

    tokenizer_checkpoint: str | None = None
    text_encoder: str | None = None
    lora_base: str | None = None

    def when_built(self) -> dict[str, str | None]:
        """The keyword arguments of :func:`load_model` / :func:`module_from_checkpoint` for a model built here."""
        return {"tokenizer_checkpoint": self.tokenizer_checkpoint, "text_encoder": self.text_encoder,
                "lora_base": self.lora_base}  # fmt: skip

    def apply(self, model: Any) -> None:
        """Point ``model``'s recorded assets to these locations (nothing when neither is given); ``lora_base`` is
        used where the model is built (:func:`module_from_hparams`), since a LoRA model loads its base then."""
        if self.tokenizer_checkpoint is None and self.text_encoder is None:
            return
        if not hasattr(model, "relocate_assets"):
            raise UsageError("--tokenizer_checkpoint / --text_encoder need a lit_nat NATModule")
        model.relocate_assets(self.tokenizer_checkpoint, self.text_encoder)


def module_from_hparams(
    hparams: Any,
    source: str,
    schedule: dict[str, Any] | None = None,
    tokenizer_checkpoint: str | None = None,
    text_encoder: str | None = None,
    lora_base: str | None = None,
) -> NATModule:
    """A NATModule with fresh weights built from a checkpoint's ``hyper_parameters`` (the token space, tokenizer and
    text encoder included), so a checkpoint alone describes its model; ``source`` names the file in errors.
    ``schedule`` (the checkpoint's ``generation_schedule``) replaces the recorded one: checkpoints written before
    hparams held it by value may name a schedule file relative to where they were made. ``lora_base``: where a LoRA
    model's base checkpoint is now (the adapters' restore checks its sha256 against the recorded one)."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{source}: not a lit_nat checkpoint (no hyper_parameters)")
    known = inspect.signature(NATModule).parameters  # (LightningCLI adds private keys such as _instantiator)
    args = {k: v for k, v in hparams.items() if k in known}
    if isinstance(schedule, dict):
        args.update(schedule=schedule, schedule_params=None)
    args["tokenizer"] = relocate_tokenizer(args.get("tokenizer"), tokenizer_checkpoint)
    args["text_encoder"] = relocate_text_encoder(args.get("text_encoder"), text_encoder)
    if lora_base is not None:
        if not args.get("lora"):
            raise UsageError(f"--lora_base {lora_base}: {source} is not a LoRA model (it holds all its weights)")
        args["init_from"] = str(lora_base)
    try:
        return NATModule(**args)
    except CheckpointError as err:  # a LoRA model's base, missing or changed: say which checkpoint needed it
        raise CheckpointError(f"{source}: {err}") from None
    except TypeError as err:
        raise CheckpointError(f"{source}: does not fit lit_nat's NATModule ({str(err).splitlines()[0]})") from None


def module_from_checkpoint(checkpoint: dict[str, Any], source: str, **overrides: Any) -> NATModule:
    """:func:`module_from_hparams` of a read checkpoint, with its own schedule; ``overrides``: ``tokenizer_checkpoint``,
    ``text_encoder`` and ``lora_base``."""
    return module_from_hparams(checkpoint.get("hyper_parameters"), source, checkpoint.get("generation_schedule"),
                               **overrides)  # fmt: skip


def load_model(ckpt_path: str, map_location: str | torch.device = "cpu", tokenizer_checkpoint: str | None = None,
               text_encoder: str | None = None, lora_base: str | None = None) -> NATModule:  # fmt: skip
    """Load a lit_nat checkpoint for sampling: eval mode, with ``backbone`` holding the EMA weights.
    ``tokenizer_checkpoint`` / ``text_encoder``: where the recorded assets are now (a moved file or folder, a hub id);
    ``lora_base``: where a LoRA checkpoint's base is now.

    A missing, damaged or foreign file, or one with non-finite weights, is a :class:`CheckpointError` naming it.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location=map_location, require_finite=True)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{ckpt_path}: not a lit_nat checkpoint (no state_dict)")
    model = module_from_checkpoint(checkpoint, str(ckpt_path), tokenizer_checkpoint=tokenizer_checkpoint,
                                   text_encoder=text_encoder, lora_base=lora_base)  # fmt: skip
    try:
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{ckpt_path}: does not fit lit_nat's NATModule ({str(err).splitlines()[0]})") from None
    model.backbone.load_state_dict(model.ema_backbone.state_dict())
    return model.to(map_location).eval()
