"""A trained model from its checkpoint alone: the :class:`~lit_nat.module.NATModule` its ``hyper_parameters``
describe (token space, tokenizer, text encoder included), with its weights, ready to sample."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lit_nat.checkpointing import read_checkpoint
from lit_nat.errors import CheckpointError
from lit_nat.module import NATModule


def module_from_hparams(hparams: Any, source: str) -> NATModule:
    """A NATModule with fresh weights built from a checkpoint's ``hyper_parameters`` (the token space, tokenizer and
    text encoder included), so a checkpoint alone describes its model; ``source`` names the file in errors."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{source}: not a lit_nat checkpoint (no hyper_parameters)")
    known = inspect.signature(NATModule).parameters  # (LightningCLI adds private keys such as _instantiator)
    try:
        return NATModule(**{k: v for k, v in hparams.items() if k in known})
    except TypeError as err:
        raise CheckpointError(f"{source}: does not fit lit_nat's NATModule ({str(err).splitlines()[0]})") from None


def load_model(ckpt_path: str, map_location: str | torch.device = "cpu") -> NATModule:
    """Load a lit_nat checkpoint for sampling: eval mode, with ``backbone`` holding the EMA weights.

    A missing, damaged or foreign file, or one with non-finite weights, is a :class:`CheckpointError` naming it.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location=map_location, require_finite=True)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{ckpt_path}: not a lit_nat checkpoint (no state_dict)")
    model = module_from_hparams(checkpoint.get("hyper_parameters"), str(ckpt_path))
    try:
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{ckpt_path}: does not fit lit_nat's NATModule ({str(err).splitlines()[0]})") from None
    model.backbone.load_state_dict(model.ema_backbone.state_dict())
    return model.to(map_location).eval()
