"""Layers shared by the NAT backbones (AutoNAT U-ViT, ENAT).

Everything here keeps the official tensor layouts (head-major fused projections, a word table that includes the mask
row, a head bias over ``K + 1`` columns), so official checkpoints map onto these modules by renaming keys only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lit_nat.conditioning.condition import Condition, TextCondition

__all__ = [
    "TokenEmbedding", "TextEmbedding", "Attention", "Mlp", "TiedMLMHead", "condition_tokens", "multihead_attention",
]  # fmt: skip


class TokenEmbedding(nn.Module):
    """Word lookup plus a learned absolute position table, then LayerNorm and dropout (a "BERT embedding").

    Used for the image tokens (vocabulary ``K + 1``, the last row being the mask token) and, with a single position,
    for AutoNAT's class token.

    Args:
        vocab_size: Rows of the word table (``K + 1`` for image tokens: codes plus the mask id).
        num_positions: Rows of the position table; inputs may be at most this long.
        dim: Embedding width D.
        dropout: Dropout probability applied after the LayerNorm (train mode only).
        eps: LayerNorm epsilon (the official embeddings use 1e-6).
    """

    def __init__(self, vocab_size: int, num_positions: int, dim: int, dropout: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.empty(num_positions, dim))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Both tables ~ N(0, 0.02), as in the official embedding constructor; LayerNorm to identity."""
        nn.init.normal_(self.word.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.norm.reset_parameters()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` integer ids -> ``(B, N, D)``; position ``i`` of the sequence gets position row ``i``."""
        n = ids.shape[-1]
        if n > self.position.shape[0]:
            raise ValueError(f"sequence of {n} ids is longer than the {self.position.shape[0]} learned positions")
        x = self.word(ids) + self.position[:n]  # (B, N, D)
        return self.dropout(self.norm(x))


class TextEmbedding(nn.Module):
    """A text encoder's token states ``(B, L, E)`` -> ``(B, L, D)`` tokens: ``Linear(E, D)`` plus a learned position
    table (U-ViT's ``context_embed``), and the pooled vector ``(B, E)`` -> ``(B, D)`` for models that modulate by it.

    Args:
        context_dim: E.
        max_length: rows of the position table (the most tokens a prompt has).
        dim: D.
    """

    def __init__(self, context_dim: int, max_length: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(context_dim, dim)
        self.pooled_proj = nn.Linear(context_dim, dim)
        self.position = nn.Parameter(torch.empty(max_length, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.position, std=0.02)
        for linear in (self.proj, self.pooled_proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, text: TextCondition) -> torch.Tensor:
        length = text.tokens.shape[1]
        if length > self.position.shape[0]:
            raise ValueError(f"{length} text tokens, but the model was built for at most {self.position.shape[0]}")
        return self.proj(text.tokens.to(self.proj.weight.dtype)) + self.position[:length]  # (B, L, D)

    def pooled(self, text: TextCondition) -> torch.Tensor:
        return self.pooled_proj(text.pooled.to(self.pooled_proj.weight.dtype))  # (B, D)


def condition_tokens(
    condition: Condition, batch: int, class_embed: nn.Module, text_embed: TextEmbedding | None
) -> torch.Tensor:
    """The in-context tokens of a condition: one class token ``(B, 1, D)`` or the text tokens ``(B, L, D)``."""
    if isinstance(condition, TextCondition):
        if text_embed is None:
            raise ValueError("this backbone was built for class labels (context_dim=None) but was given text")
        if len(condition) != batch:
            raise ValueError(f"text condition has {len(condition)} rows for a batch of {batch}")
        return text_embed(condition)
    return class_embed(class_ids(condition, batch).reshape(batch, 1))


def class_ids(condition: torch.Tensor, batch: int) -> torch.Tensor:
    """A class condition ``(B,)`` or ``(B, 1)`` as ``(B,)`` ids (one line naming a wrong shape)."""
    if condition.shape not in ((batch,), (batch, 1)):
        raise ValueError(f"condition must be ({batch},) or ({batch}, 1) class ids, got {tuple(condition.shape)}")
    return condition.reshape(batch)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Full (unmasked) softmax attention with scale ``Dh ** -0.5`` on head-major packed features.

    Args:
        q: Queries ``(B, Nq, D)``; feature ``h * Dh + d`` belongs to head ``h``.
        k: Keys ``(B, Nk, D)``, same layout.
        v: Values ``(B, Nk, D)``, same layout.
        num_heads: Number of heads H (``D % H == 0``).

    Returns:
        ``(B, Nq, D)`` attention output, heads concatenated in the same head-major layout.
    """
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=num_heads) for t in (q, k, v))
    # SDPA picks a fused kernel where one exists; with no mask and no dropout it is softmax(QK^T / sqrt(Dh)) V.
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Nq, Dh)
    return rearrange(out, "b h n d -> b n (h d)")


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The qkv output is laid out as ``(3, H, Dh)`` along features (Q rows first, then K, then V; head-major inside each),
    which is the layout of the official checkpoints.

    Args:
        dim: Model width D.
        num_heads: Number of heads H; must divide D.
        qkv_bias: Whether the fused qkv projection has a bias (AutoNAT: no).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, N, D)``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, D), each head-major
        return self.proj(multihead_attention(q, k, v, self.num_heads))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear.

    Args:
        dim: Input and output width D.
        hidden_dim: Hidden width (``mlp_ratio * D``).
        approximate: GELU flavour, ``"none"`` (exact erf; AutoNAT) or ``"tanh"`` (ENAT blocks).
    """

    def __init__(self, dim: int, hidden_dim: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(..., D)``."""
        return self.fc2(self.act(self.fc1(x)))


class TiedMLMHead(nn.Module):
    """Masked-token prediction head tied to the input word table: Linear -> exact GELU -> LayerNorm -> ``E^T`` + bias.

    ``E`` is the token word-embedding matrix ``(K + 1, D)`` passed in at call time and used **detached**, as in the
    official code: the table is trained only through the input lookup, never through the head. The bias has ``K + 1``
    entries to match the official checkpoint, but the mask column is dropped, so logits cover the ``K`` real codes only
    and the mask id can never be predicted.

    Args:
        dim: Model width D.
        vocab_size: ``K + 1`` (codes plus the mask id); the output has ``vocab_size - 1`` columns.
        eps: LayerNorm epsilon (1e-5 in both official heads).
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, word_weight: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` features and the ``(K + 1, D)`` word table -> ``(B, N, K)`` logits."""
        h = self.norm(self.act(self.fc(x)))  # (B, N, D)
        k = self.bias.shape[0] - 1
        # Multiplying by the first K rows only is the same as computing all K + 1 columns and dropping the mask column,
        # without materialising (and then copying out of) the extra column.
        return F.linear(h, word_weight[:k].detach(), self.bias[:k])  # (B, N, K)
