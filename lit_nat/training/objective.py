"""The masked-token training objective (AutoNAT Sec. 3.1 and 4.3): mask-ratio laws p(r), masking, the loss.

Pure functions and small dataclasses; nothing here knows about Lightning or a particular backbone.

Count rule (the official AutoNAT/ENAT code, not the paper's ceil): a sample with mask ratio r over N tokens gets
``n = round(r * N)`` masked tokens, clamped to ``[min_masked, N - min_visible]``. AutoNAT uses ``min_masked=1,
min_visible=0`` (a fully masked sample is possible); ENAT uses ``min_masked=1, min_visible=1`` and one ratio per
batch, because its encoder/decoder split needs equal counts within a batch.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------------------
# Mask-ratio laws p(r) on [0, 1]
# ----------------------------------------------------------------------------------------------------------------------


class MaskRatioLaw(ABC):
    """A distribution over mask ratios r in [0, 1]."""

    @abstractmethod
    def sample(self, num: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``num`` i.i.d. ratios, float32 ``(num,)``, from the global torch RNG (seeded by Lightning)."""

    @abstractmethod
    def mean(self) -> float:
        """E[r], used in logs and tests."""


@dataclass(frozen=True)
class BetaLaw(MaskRatioLaw):
    """AutoNAT's searched family p(r) = Beta(alpha, beta); (12, 3) is the paper's result (mean 0.8, std 0.1)."""

    alpha: float = 12.0
    beta: float = 3.0

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"BetaLaw: alpha and beta must be > 0, got alpha={self.alpha}, beta={self.beta}")

    def sample(self, num: int, device: torch.device | str | None = None) -> torch.Tensor:
        # Drawn on the target device; validate_args=False avoids a host-side check of the parameters every step.
        concentration = torch.tensor([float(self.alpha), float(self.beta)], device=device)
        law = torch.distributions.Beta(concentration[0], concentration[1], validate_args=False)
        return law.sample((num,)).float()

    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


@dataclass(frozen=True)
class ArccosLaw(MaskRatioLaw):
    """The heuristic law of Table 1, p(r) = 2 / (pi * sqrt(1 - r^2)): MaskGIT's r = cos(pi/2 * u), u ~ U(0, 1)."""

    def sample(self, num: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * torch.rand(num, device=device))

    def mean(self) -> float:
        return 2.0 / math.pi


@dataclass(frozen=True)
class FixedLaw(MaskRatioLaw):
    """A single ratio (Table 2 of the paper: r = 0.8 beats the arccos law)."""

    ratio: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"FixedLaw: ratio must be in [0, 1], got {self.ratio}")

    def sample(self, num: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.full((num,), float(self.ratio), device=device)

    def mean(self) -> float:
        return self.ratio


@dataclass(frozen=True)
class UniformLaw(MaskRatioLaw):
    """r ~ U(low, high)."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"UniformLaw: need 0 <= low <= high <= 1, got low={self.low}, high={self.high}")

    def sample(self, num: int, device: torch.device | str | None = None) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand(num, device=device)

    def mean(self) -> float:
        return 0.5 * (self.low + self.high)


MASK_RATIO_LAWS: dict[str, type[MaskRatioLaw]] = {
    "beta": BetaLaw,
    "arccos": ArccosLaw,
    "fixed": FixedLaw,
    "uniform": UniformLaw,
}


def build_mask_ratio_law(name: str, params: dict[str, Any] | None = None) -> MaskRatioLaw:
    """``build_mask_ratio_law("beta", {"alpha": 12, "beta": 3})``; errors name the law and the bad key."""
    if name not in MASK_RATIO_LAWS:
        raise ValueError(f"unknown mask_ratio_law {name!r}; expected one of {sorted(MASK_RATIO_LAWS)}")
    cls = MASK_RATIO_LAWS[name]
    params = dict(params or {})
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"mask_ratio_params {unknown} not accepted by law {name!r}; allowed: {sorted(allowed)}")
    return cls(**params)


# ----------------------------------------------------------------------------------------------------------------------
# Masking a batch
# ----------------------------------------------------------------------------------------------------------------------


def masked_counts(ratios: torch.Tensor, num_tokens: int, min_masked: int = 1, min_visible: int = 0) -> torch.Tensor:
    """Number of masked tokens per sample: ``clamp(round(r * N), min_masked, N - min_visible)`` as long ``(B,)``."""
    if not 0 <= min_masked <= num_tokens - min_visible:
        raise ValueError(
            f"need 0 <= min_masked ({min_masked}) <= num_tokens - min_visible ({num_tokens - min_visible})"
        )
    counts = torch.round(ratios * num_tokens).long()
    return counts.clamp(min_masked, num_tokens - min_visible)


def random_mask(counts: torch.Tensor, num_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random subset of exactly ``counts[i]`` positions per row: bool ``(B, N)``, True = masked.

    The rank of i.i.d. uniform noise is a uniform random permutation; masking ranks below the count picks a uniform
    subset of that size with no Python loop and no host synchronisation.
    """
    noise = torch.rand(counts.shape[0], num_tokens, device=counts.device, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N), a permutation of 0..N-1 per row
    return ranks < counts[:, None]


def sample_training_mask(
    law: MaskRatioLaw,
    batch_size: int,
    num_tokens: int,
    device: torch.device | str,
    per_sample: bool = True,
    min_masked: int = 1,
    min_visible: int = 0,
) -> torch.Tensor:
    """Draw r ~ p(r) (one per sample, or one for the whole batch as ENAT needs) and return the bool mask (B, N)."""
    ratios = law.sample(batch_size if per_sample else 1, device=device)
    counts = masked_counts(ratios, num_tokens, min_masked, min_visible).expand(batch_size)
    return random_mask(counts, num_tokens)


def apply_mask(ids: torch.Tensor, mask: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with [MASK] at masked positions, and targets with the true id there and IGNORE_INDEX elsewhere."""
    inputs = ids.masked_fill(mask, mask_id)
    targets = ids.masked_fill(~mask, IGNORE_INDEX)
    return inputs, targets


def previous_step_mask(mask: torch.Tensor, num_masked: int, fraction: float) -> tuple[torch.Tensor, int]:
    """ENAT reuse training: a plausible *previous* decoding step for the current mask.

    Re-masks ``k = round(fraction * V)`` of the ``V = N - num_masked`` visible tokens (uniformly per row), so the
    previous step had a superset of masked tokens and those k count as newly revealed now. ``fraction = 1`` gives a
    previous step with no visible token (identical to no reuse), ``0`` one with nothing newly revealed.

    Args:
        mask: ``(B, N)`` bool, True = masked now; every row has ``num_masked`` masked tokens.
        num_masked: the masked count of every row (a Python int, so no device read is needed).
        fraction: u in [0, 1] (ENAT draws it uniformly once per step).

    Returns:
        ``(previous_mask, previous_num_masked)``.
    """
    visible = mask.shape[1] - num_masked
    k = min(max(round(visible * fraction), 0), visible)
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(mask, float("inf"))
    newly_revealed = scores.argsort(dim=1)[:, :k]  # (B, k): k random currently-visible positions
    return mask.scatter(1, newly_revealed, True), num_masked + k


def seed_training_step(base_seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """Seed torch (every device), numpy and Python's ``random`` for one training batch, from its coordinates alone.

    Every random draw of a training step (masks, mask ratios, label dropout, reuse, dropout layers) then depends only
    on ``(base_seed, epoch, batch_idx, rank)``, never on how many draws came before. A run resumed from a checkpoint
    therefore draws exactly what the uninterrupted run drew, on every rank, with no RNG state to save (a checkpoint
    is written by rank 0 and could not hold the other ranks' states). Returns the step's seed.
    """
    seed = int(np.random.SeedSequence([base_seed % 2**63, epoch, batch_idx, rank]).generate_state(1, np.uint64)[0])
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return seed


# ----------------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------------


def masked_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on masked positions only, averaged over all masked tokens of the batch (as the official code).

    Args:
        logits: ``(B, N, K)``.
        targets: ``(B, N)`` with IGNORE_INDEX at visible positions.
        label_smoothing: AutoNAT/ENAT use 0.1.

    Returns:
        ``(loss, accuracy)``: the scalar loss and the top-1 accuracy on masked tokens (a detached scalar).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    with torch.no_grad():
        counted = flat_targets != IGNORE_INDEX
        correct = (flat_logits.argmax(-1) == flat_targets) & counted
        accuracy = correct.sum() / counted.sum().clamp_min(1)
    return loss, accuracy
