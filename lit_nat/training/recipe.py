"""The training recipe's settings beside the objective: the optimiser (AdamW with a linear warmup to a constant rate)
and the checks that a :class:`~lit_nat.training.module.NATModule`'s reuse settings fit its backbone, so that a config
that cannot train stops when the module is built, not at the first step.

Pure functions; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def check_reuse_settings(arch: str, supports_reuse: bool, reuse_prob: float, mask_ratio_per_sample: bool) -> None:
    """ENAT reuse training needs a backbone with feature reuse, and ENAT one mask ratio per batch."""
    if not 0.0 <= reuse_prob <= 1.0:
        raise ValueError(f"reuse_prob must be in [0, 1], got {reuse_prob}")
    if reuse_prob > 0 and not supports_reuse:
        raise ValueError(f"reuse_prob={reuse_prob} but backbone {arch!r} has no feature reuse (use 0)")
    if supports_reuse and mask_ratio_per_sample:
        # ENAT gathers visible and masked tokens as dense (B, count) blocks: counts must agree within a batch.
        raise ValueError(f"backbone {arch!r} needs mask_ratio_per_sample: false (one mask ratio per batch)")


def linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of optimiser step ``step``: linear to 1 over ``warmup_steps``, then constant (no
    decay; 1 from the start without warmup)."""
    warmup = max(int(warmup_steps), 0)
    return lambda step: min((step + 1) / warmup, 1.0) if warmup else 1.0


def adamw_with_warmup(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW with weight decay on every parameter (as in the official
    recipe) and :func:`linear_warmup`, stepped per optimiser update."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
