"""Reveal policies: which of the drawn tokens a decoding step keeps, one axis of the generation schedule.

Every step of the loop draws a token at every masked position; the schedule's counts say how many stay masked after
the step; a policy says *which*. Each policy turns the step's scores into a per-position priority ``(B, N)``, and
the loop re-masks the ``k`` lowest (:func:`~lit_nat.generation.decoding.remask_lowest`). Positions already visible,
including an edit's kept tokens, carry priority +inf under every policy, so no policy ever re-masks them, and the
counts, guidance, text conditions and ENAT's feature reuse are the loop's business, untouched by the choice.

- ``confidence`` (MaskGIT, AutoNAT, ENAT; the default): the draw's log-probability plus tau2-scaled Gumbel noise
  (Gumbel-top-k: a sample without replacement from softmax(confidence / tau2)). TiTok's "randomized temperature"
  is this policy under an annealed tau1 = tau2 (:meth:`GenerationSchedule.titok`).
- ``halton`` (Halton-MaskGIT): a fixed order of the grid, the first-visit order of the 2-D Halton sequence (bases 2
  and 3, from index 1) over the cells; each step reveals the next tokens of that order. No randomness.
- ``halton_roll`` (Halton-MaskGIT's ``randomize``): each image follows the Halton order rotated by its own random
  offset in ``[0, N)`` (``torch.roll`` of the order), drawn once per generation from the loop's generator, so images
  of one batch do not all reveal the same cells first.
- ``random``: a uniformly random order per image, the ablation baseline. One uniform per position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

#: the policies a schedule may name
POLICIES = ("confidence", "halton", "halton_roll", "random")


def radical_inverse(index: int, base: int) -> float:
    """The ``index``-th element of the van der Corput sequence in ``base``: its digits mirrored about the point."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


@lru_cache(maxsize=16)
def halton_order(side: int) -> tuple[int, ...]:
    """Raster positions ``row * side + col`` of a ``side x side`` grid in the order the 2-D Halton sequence (row from
    base 2, column from base 3, indices 1, 2, ...) first visits their cells: Halton-MaskGIT's token order."""
    seen: dict[int, None] = {}
    index = 1
    while len(seen) < side * side:
        row = math.floor(radical_inverse(index, 2) * side)
        col = math.floor(radical_inverse(index, 3) * side)
        seen.setdefault(row * side + col, None)
        index += 1
    return tuple(seen)


def halton_rank(num_tokens: int) -> torch.Tensor:
    """``(N,)`` float: each raster position's place in :func:`halton_order` (0 = revealed first)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"the halton reveal policy needs a square token grid; {num_tokens} tokens is not one")
    rank = torch.empty(num_tokens)
    rank[list(halton_order(side))] = torch.arange(num_tokens, dtype=torch.float32)
    return rank


@dataclass
class RevealPolicy:
    """A schedule's policy, prepared once per generation (the Halton ranks moved to the device before the loop)."""

    name: str
    rank: torch.Tensor | None = None  # (N,) halton places, on the loop's device
    offset: torch.Tensor | None = None  # (B, 1) halton_roll's rotation of each image's order, drawn at the first step

    @classmethod
    def of(cls, name: str, num_tokens: int, device: torch.device) -> RevealPolicy:
        if name not in POLICIES:
            raise ValueError(f"unknown reveal policy {name!r}; expected one of {list(POLICIES)}")
        return cls(name, halton_rank(num_tokens).to(device) if name.startswith("halton") else None)

    def priority(self, score: torch.Tensor, remask_temperature: float, generator: torch.Generator) -> torch.Tensor:
        """``(B, N)``: the lowest ``k`` are re-masked. ``score`` is the draw's confidence, +inf where visible."""
        if self.name == "confidence":
            return score + remask_temperature * gumbel_noise(score.shape, generator, score.device)
        visible = score == float("inf")
        if self.name.startswith("halton"):  # later in the order = lower priority = stays masked longer
            order = -self.rolled_rank(score, generator)
        else:
            order = torch.rand(score.shape, generator=generator, device=score.device)
        return order.masked_fill(visible, float("inf"))

    def rolled_rank(self, score: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, N)`` Halton places; for ``halton_roll`` each row's order rotated by the row's offset: the position
        at place ``i`` moves to place ``(i + offset) mod N``, as ``torch.roll(order, offset)`` does."""
        rank = self.rank.expand_as(score)
        if self.name != "halton_roll":
            return rank
        if self.offset is None:
            batch, n = score.shape
            self.offset = torch.randint(0, n, (batch, 1), generator=generator, device=score.device)
        return (rank + self.offset) % score.shape[1]


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise -log(E), E ~ Exp(1); E is floored so the noise stays finite."""
    exponential = torch.empty(shape, device=device).exponential_(generator=generator)
    return -exponential.clamp_min_(1e-30).log_()
