"""AutoNAT's U-ViT: a bidirectional transformer over VQ token ids with prepended condition tokens and long skips.

Architecture (AutoNAT, CVPR 2024; U-ViT, Bao et al. 2023):

    ids (B, N)   -> word + position + LN -> (B, N, D) --+
    class (B,)   -> class + position + LN -> (B, 1, D) -+-> concat (B, 1 + N, D)
      or text (B, L, E) -> Linear(E, D) + position -> (B, L, D)   (concat (B, L + N, D))
    -> in-blocks -> mid-block -> out-blocks (each merging a long skip) -> LN -> drop condition tokens -> tied head
    -> logits (B, N, K)

Text-to-image follows U-ViT's MS-COCO model, which AutoNAT's authors say they kept for COCO ("the condition embedding
is longer"): the text encoder's token states, projected to the width, are in-context tokens in front of the image
tokens, attended to and updated like them (all L padded positions, as U-ViT trained on CLIP's 77).

The in-blocks' outputs are pushed on a stack; each out-block pops one and merges it with a Linear(2D -> D) before its
attention, so the first out-block sees the last in-block and the last out-block sees the first.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_nat.conditioning.condition import Condition
from lit_nat.models.base import TokenSpaceBackbone
from lit_nat.models.layers import Attention, Mlp, TextEmbedding, TiedMLMHead, TokenEmbedding, condition_tokens

__all__ = ["UViT", "UViTBlock"]


class UViTBlock(nn.Module):
    """Pre-norm ViT block (attention then MLP, both residual), optionally preceded by a long-skip merge.

    Args:
        dim: Model width D.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: Bias on the fused qkv projection.
        skip: Whether the block takes a long-skip input (out-blocks only).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False):
        super().__init__()
        self.skip_proj = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5, the PyTorch default, as in the official blocks
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S, D)`` (and a ``(B, S, D)`` skip for out-blocks) -> ``(B, S, D)``."""
        if self.skip_proj is not None:
            if skip is None:
                raise ValueError("this block merges a long skip; pass the matching in-block output")
            # The merge replaces x (no residual around it): U-ViT lets the projection decide how to mix both streams.
            x = self.skip_proj(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(TokenSpaceBackbone):
    """AutoNAT's U-ViT non-autoregressive transformer over a grid of VQ token ids.

    Called as ``logits, state = model(ids, condition)``: ``ids`` ``(B, N)`` long in ``[0, K]`` (``K`` = mask id),
    ``condition`` ``(B,)`` or ``(B, 1)`` class ids in ``[0, num_classes]`` (``num_classes`` = null / unconditional);
    returns float logits ``(B, N, K)`` over the real codes and ``state = None`` (no feature reuse).

    Args:
        codebook_size: Number of VQ codes K; the mask id is K, so the word table has K + 1 rows.
        grid_size: Token grid ``(h, w)`` (or one int for a square grid); N = h * w tokens in raster order.
        num_classes: Number of real classes C; class id C is the learned null class used for guidance.
        width: Model width D.
        num_layers: Total transformer blocks, odd: (num_layers - 1) // 2 in-blocks, 1 mid-block, as many out-blocks.
        num_heads: Attention heads (must divide width).
        mlp_ratio: MLP hidden width as a multiple of the model width.
        qkv_bias: Bias on the fused qkv projections (AutoNAT: off).
        embed_dropout: Dropout after the token embedding (train mode only).
        context_dim: Width E of a text encoder's states to condition on (None: class conditions only).
        context_length: Most text tokens L (the text position table's rows).
    """

    def __init__(
        self,
        *,
        codebook_size: int,
        grid_size: tuple[int, int] | int,
        num_classes: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        embed_dropout: float = 0.1,
        context_dim: int | None = None,
        context_length: int = 77,
    ) -> None:
        super().__init__(codebook_size, grid_size, num_classes)
        if num_layers < 1 or num_layers % 2 == 0:
            raise ValueError(f"num_layers must be odd (in-blocks + 1 mid-block + out-blocks), got {num_layers}")

        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads

        # +1 rows: the mask token (id K) and the null class (id C) are learned embeddings like any other.
        self.token_embed = TokenEmbedding(codebook_size + 1, self.num_tokens, width, dropout=embed_dropout)
        # The class token is one extra sequence element with its own single position row; no dropout on it.
        self.class_embed = TokenEmbedding(num_classes + 1, 1, width, dropout=0.0)
        self.context_embed = TextEmbedding(context_dim, context_length, width) if context_dim else None

        depth = (num_layers - 1) // 2
        block_args = dict(dim=width, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        self.in_blocks = nn.ModuleList([UViTBlock(**block_args) for _ in range(depth)])
        self.mid_block = UViTBlock(**block_args)
        self.out_blocks = nn.ModuleList([UViTBlock(**block_args, skip=True) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width)
        self.head = TiedMLMHead(width, codebook_size + 1)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Official from-scratch init: Linear ~ trunc-normal(0.02), zero biases; LayerNorm identity; tables N(0, 0.02).

        The embedding tables are initialised by :class:`TokenEmbedding` itself; the head bias starts at zero.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # Cut at +-2 in absolute value like timm 0.3.2, i.e. effectively untruncated at std 0.02.
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, (TokenEmbedding, TextEmbedding)):
                m.reset_parameters()
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self, ids: torch.Tensor, condition: Condition, state: None = None, num_masked: int | None = None
    ) -> tuple[torch.Tensor, None]:
        """Predict logits over the K real codes at every position.

        Args:
            ids: ``(B, N)`` long token ids in ``[0, K]``, ``K`` marking masked positions.
            condition: ``(B,)`` or ``(B, 1)`` long class ids in ``[0, C]``, ``C`` being the null class, or a
                :class:`~lit_nat.conditioning.TextCondition` of B prompts (with ``context_dim`` set).
            state: Ignored; U-ViT recomputes everything each step. Accepted for the shared backbone contract.
            num_masked: Ignored (U-ViT treats every position alike). Accepted for the shared backbone contract.

        Returns:
            ``(logits, None)`` with logits ``(B, N, K)`` in the floating dtype of the computation.
        """
        if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(
                f"ids must be (B, {self.num_tokens}) for a {self.grid_size[0]}x{self.grid_size[1]} grid, "
                f"got {tuple(ids.shape)}"
            )
        b = ids.shape[0]
        x = self.token_embed(ids)  # (B, N, D)
        c = condition_tokens(condition, b, self.class_embed, self.context_embed)  # (B, 1 or L, D)
        x = torch.cat([c, x], dim=1)  # (B, S + N, D); condition tokens attend and are attended to like any token
        s = c.shape[1]

        skips = []
        for block in self.in_blocks:
            x = block(x)  # (B, 1 + N, D)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())  # mirror pairing: out_blocks[i] <- in_blocks[depth - 1 - i]
        x = self.final_norm(x)

        # The head is per-token, so dropping the condition tokens before it equals the official drop-after.
        logits = self.head(x[:, s:], self.token_embed.word.weight)  # (B, N, K)
        return logits, None

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, grid_size={self.grid_size}, num_classes={self.num_classes}, "
            f"width={self.width}, num_layers={self.num_layers}, num_heads={self.num_heads}"
        )
