"""What a backbone is conditioned on: class ids, or text (a text encoder's token states), behind one contract.

A *condition* is either a ``LongTensor`` of class ids ``(B,)`` (the null class ``C`` is the unconditional one) or a
:class:`TextCondition`. Everything downstream of the backbone (the decoding loop, guidance, the search, evaluation)
only ever needs three operations, which work on both: its batch size, concatenation along the batch (guidance runs
the conditional and unconditional rows as one batch) and moving to a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextCondition:
    """A batch of encoded prompts.

    Attributes:
        tokens: ``(B, L, E)`` hidden states of the text encoder, padded to ``L`` tokens.
        mask: ``(B, L)`` bool, True where a token is real (False on padding). Backbones that follow U-ViT attend to the
            padding states too (as U-ViT trained on CLIP's padded 77 tokens); the mask is there for pooling.
        pooled: ``(B, E)`` one vector per prompt (the encoder's pooled output, or the masked mean of ``tokens``).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self) -> None:
        b, length = self.tokens.shape[:2]
        if self.tokens.dim() != 3 or tuple(self.mask.shape) != (b, length) or self.pooled.shape[0] != b:
            raise ValueError(
                f"TextCondition needs tokens (B, L, E), mask (B, L) and pooled (B, E); got {tuple(self.tokens.shape)}, "
                f"{tuple(self.mask.shape)}, {tuple(self.pooled.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCondition:
        return TextCondition(self.tokens.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype))

    def expand(self, batch: int) -> TextCondition:
        """One prompt (a batch of 1) repeated ``batch`` times (e.g. the empty prompt as the null condition)."""
        if len(self) != 1:
            raise ValueError(f"only a single prompt can be expanded, this condition holds {len(self)}")
        return TextCondition(self.tokens.expand(batch, -1, -1), self.mask.expand(batch, -1),
                             self.pooled.expand(batch, -1))  # fmt: skip

    def where(self, replace: torch.Tensor, other: TextCondition) -> TextCondition:
        """Rows where ``replace`` (B,) is True taken from ``other`` (e.g. classifier-free-guidance dropout)."""
        r = replace.to(self.tokens.device)
        return TextCondition(
            torch.where(r[:, None, None], other.tokens.to(self.tokens.dtype), self.tokens),
            torch.where(r[:, None], other.mask, self.mask),
            torch.where(r[:, None], other.pooled.to(self.pooled.dtype), self.pooled),
        )


#: class ids ``(B,)`` or a :class:`TextCondition`
Condition = torch.Tensor | TextCondition


def batch_size(condition: Condition) -> int:
    return len(condition) if isinstance(condition, TextCondition) else int(condition.shape[0])


def concat(first: Condition, second: Condition) -> Condition:
    """Rows of ``first`` then rows of ``second`` (both of the same kind)."""
    if isinstance(first, TextCondition) != isinstance(second, TextCondition):
        raise TypeError("cannot concatenate a text condition with class ids")
    if isinstance(first, TextCondition):
        if first.tokens.shape[1:] != second.tokens.shape[1:]:
            raise ValueError(f"text conditions of shapes {tuple(first.tokens.shape)} and {tuple(second.tokens.shape)}")
        return TextCondition(torch.cat([first.tokens, second.tokens]), torch.cat([first.mask, second.mask]),
                             torch.cat([first.pooled, second.pooled]))  # fmt: skip
    return torch.cat([first, second])


def select(condition: Condition, rows: torch.Tensor) -> Condition:
    """The given rows (a LongTensor of indices) of a condition."""
    if isinstance(condition, TextCondition):
        return TextCondition(condition.tokens[rows], condition.mask[rows], condition.pooled[rows])
    return condition[rows]



def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, E)`` states averaged over the real tokens of each row -> ``(B, E)``."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
