"""ENAT's pieces: the per-row reuse state, context attention, the adaLN-Zero block and the previous-step projection.

See :mod:`lit_nat.models.enat` for how the model puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lit_nat.models.layers import Mlp, multihead_attention

__all__ = [
    "ENATBlock",
    "ENATCondition",
    "ENATState",
    "ContextAttention",
    "PrevProjection",
    "gather_tokens",
    "modulate",
]


@dataclass
class ENATState:
    """What one ENAT call hands to the next decoding step (one entry per batch row).

    Attributes:
        features: ``(B, N, D)`` restored features in raster order, *before* the final norm (detached).
        visible_positions: ``(B, V)`` long, the positions that were visible, ascending, ``V = N - num_masked``.
        num_masked: Number of masked positions in every row (a Python int, so the next step never reads the device).
    """

    features: torch.Tensor
    visible_positions: torch.Tensor
    num_masked: int


@dataclass
class ENATCondition:
    """The part of a condition that no decoding step changes, computed once per call of the decoding loop
    (:meth:`ENAT.prepare_condition`) instead of once per step.

    Every block's adaLN modulation depends on the condition alone; at ENAT-L's width it is 8 x 1024 x 1024 weights
    per block (a third of the model's parameters) applied to a handful of rows, a memory-bound product that cost
    about a tenth of a bf16 step on CPU when it was recomputed at every step.

    Attributes:
        modulations: One ``(B, 8D)`` tensor per block, in :attr:`ENAT.blocks` order.
        text: Projected text tokens ``(B, L, D)`` (the read-only context of every block), or None for classes.
    """

    modulations: list[torch.Tensor]
    text: torch.Tensor | None

    @property
    def batch_size(self) -> int:
        return self.modulations[0].shape[0]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; ``x`` ``(B, S, D)``, ``shift``/``scale`` ``(B, 1, D)``."""
    return x * (1 + scale) + shift


def gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` features at ``(B, S)`` positions -> ``(B, S, D)``."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ContextAttention(nn.Module):
    """Multi-head attention whose keys/values come from read-only context tokens and from the queries' own tokens.

    The two token groups get separate K/V projections (official ``kv.A`` = context, ``kv.B`` = self); each projection
    outputs ``2D`` features, K first then V, head-major inside each.

    Args:
        dim: Model width D.
        num_heads: Number of heads H; must divide D.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv_context = nn.Linear(dim, 2 * dim)
        self.kv_self = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised self tokens ``(B, S, D)`` and normalised context ``(B, S_c, D)`` or None -> ``(B, S, D)``."""
        kv = self.kv_self(x)  # (B, S, 2D)
        if context is not None:
            kv = torch.cat([self.kv_context(context), kv], dim=1)  # (B, S_c + S, 2D), context first
        k, v = kv.chunk(2, dim=-1)
        return self.proj(multihead_attention(self.q(x), k, v, self.num_heads))


class ENATBlock(nn.Module):
    """DiT block with adaLN-Zero and 8 modulation chunks; updates the self tokens, reads the context tokens.

    The modulation chunks, in the official order: shift/scale for the self tokens' pre-attention norm, shift/scale
    for the context tokens' pre-attention norm, attention gate, shift/scale before the MLP, MLP gate.

    Args:
        dim: Model width D.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        # Non-affine, eps 1e-6 (DiT): the adaLN shifts and scales take the place of the affine parameters.
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.norm1_context = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = ContextAttention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")
        # Applied to SiLU(class embedding) by the model (ENAT.prepare_condition), once per decoding call.
        self.modulation = nn.Linear(dim, 8 * dim)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Update the self tokens.

        Args:
            x: Self tokens ``(B, S, D)``.
            modulation: This block's ``self.modulation(SiLU(condition))`` ``(B, 8D)``.
            context: Read-only context tokens ``(B, S_c, D)``; None or ``S_c == 0`` means pure self-attention.

        Returns:
            Updated self tokens ``(B, S, D)``.
        """
        chunks = modulation.unsqueeze(1).chunk(8, dim=-1)  # 8 x (B, 1, D)
        shift_sa, scale_sa, shift_ctx, scale_ctx, gate_sa, shift_mlp, scale_mlp, gate_mlp = chunks
        h = modulate(self.norm1(x), shift_sa, scale_sa)  # (B, S, D): queries and self keys/values
        if context is not None and context.shape[1] > 0:
            context = modulate(self.norm1_context(context), shift_ctx, scale_ctx)  # (B, S_c, D)
        else:
            context = None  # an empty context contributes nothing; the official code then routes all K/V via "B" too
        x = x + gate_sa * self.attn(h, context)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class PrevProjection(nn.Module):
    """Maps the previous step's features into the current step: ``x + MLP(LN(x))`` (official ``PrevProj``).

    Args:
        dim: Model width D.
        mlp_ratio: MLP hidden width as a multiple of D.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, D)`` -> ``(B, S, D)``."""
        return x + self.mlp(self.norm(x))
