"""The module's side of conditioning: batches, labels and prompts in, backbone conditions out.

One :class:`Conditioner` per LightningModule decides what a model is conditioned on (class ids, or text through a
frozen encoder given by its config), owns that encoder (built on first use, never part of the module's state dict or
checkpoints), and implements classifier-free guidance's two needs: dropping conditions in training (labels to the
null class, prompts to the empty prompt's encoding) and the null condition of sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lit_nat.conditioning.condition import Condition, TextCondition
from lit_nat.conditioning.text import TextEncoder, text_encoder_from_config
from lit_nat.core.errors import DataError, UsageError


def drop_labels(labels: torch.Tensor, p_uncond: float, null_class: int) -> torch.Tensor:
    """Classifier-free-guidance label dropout: each label becomes the null class with probability ``p_uncond``."""
    if p_uncond <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p_uncond
    return labels.masked_fill(drop, null_class)

class Conditioner:
    """Class ids or text, for one model.

    Args:
        text_encoder: the text encoder's config (None: class-conditional).
        null_class: the null class id C of class conditions.
    """

    def __init__(self, text_encoder: dict[str, Any] | None, null_class: int) -> None:
        self.config = dict(text_encoder) if text_encoder else None
        self.null_class = int(null_class)
        self._encoder: TextEncoder | None = None
        self._encoder_device: torch.device | None = None
        self._null_text: TextCondition | None = None

    @property
    def is_text(self) -> bool:
        return self.config is not None

    def encoder(self, device: torch.device) -> TextEncoder:
        if self.config is None:
            raise UsageError("this model is class-conditional (it has no text encoder): give labels, not prompts")
        if self._encoder is None:
            self._encoder = text_encoder_from_config(self.config)
        if self._encoder_device != torch.device(device):  # moved once, not at every training step
            self._encoder, self._encoder_device = self._encoder.to(device), torch.device(device)
        return self._encoder

    def encode(self, prompts: Sequence[str], device: torch.device) -> TextCondition:
        return self.encoder(device).encode(list(prompts)).to(device)

    def null(self, batch: int, device: torch.device) -> Condition | int:
        """The unconditional condition of ``batch`` rows: the null class id, or the empty prompt's encoding."""
        if not self.is_text:
            return self.null_class
        if self._null_text is None or self._null_text.tokens.device != torch.device(device):
            self._null_text = self.encode([""], device)
        return self._null_text.expand(batch)

    def of_batch(self, batch: dict[str, Any], device: torch.device) -> Condition:
        """A training or validation batch's condition: cached text states, its captions encoded now, or its labels."""
        if not self.is_text:
            return batch["label"]
        if "text_emb" in batch:
            return TextCondition(batch["text_emb"].float(), batch["text_mask"].bool(), batch["text_pooled"].float())
        if "text" not in batch:
            raise DataError("this model is text-conditioned but the batch has no captions (class-labelled shards?)")
        return self.encode(batch["text"], device)

    def of(self, labels: Any = None, prompts: Sequence[str] | None = None, device: torch.device | str = "cpu"):
        """The condition for sampling: ``labels`` (class ids, the null class allowed) or ``prompts``, whichever this
        model takes; the other is a one-line error."""
        if (labels is None) == (prompts is None):
            raise UsageError("give either labels or prompts")
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            return self.encode(prompts, torch.device(device))
        if self.is_text:
            raise UsageError("this model is text-conditioned: give prompts, not labels")
        labels = torch.as_tensor(labels).to(device).long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() > self.null_class):
            raise UsageError(f"labels must be in [0, {self.null_class}] (null class {self.null_class})")
        return labels

    def drop(self, condition: Condition, p_uncond: float) -> Condition:
        """Classifier-free-guidance dropout: each row becomes unconditional with probability ``p_uncond``."""
        if p_uncond <= 0:
            return condition
        if isinstance(condition, TextCondition):
            device = condition.tokens.device
            drop = torch.rand(len(condition), device=device) < p_uncond
            return condition.where(drop, self.null(len(condition), device))
        return drop_labels(condition, p_uncond, self.null_class)
