"""ENAT: an encoder over visible tokens, a decoder over masked tokens, and feature reuse across decoding steps.

Architecture (ENAT, NeurIPS 2024), DiT blocks with adaLN-Zero conditioned on the class embedding only:

    ids (B, N) -> word + position + LN -> split by the mask into visible (B, V, D) and masked (B, M, D), V + M = N
    visible -> encoder blocks (self-attention among visible tokens)                      -> encoded (B, V, D)
    masked  -> decoder blocks (queries: masked; keys/values: [encoded ; masked])         -> decoded (B, M, D)
    restore raster order -> features (B, N, D) -> LN -> tied head -> logits (B, N, K)

Every block has two key/value projections: ``kv_context`` for read-only context tokens (the encoded visible tokens
in the decoder, the projected previous features in a reusing encoder) and ``kv_self`` for the tokens being updated.
The split is passed explicitly (the official code stores it as mutable module state).

Feature reuse: the features of step t - 1 come back as :class:`ENATState`. At step t only the *newly revealed*
tokens (visible now, masked before) go through the encoder, with ``prev_proj(previous features)`` at the previously
visible positions as context; those projected features also stand in for the previously visible tokens in the
decoder's context and in the returned features, so a token revealed early is projected once per later step (the
official behaviour).

Efficiency: tokens are split by index (one stable argsort of the mask) into dense blocks whose sizes are Python ints,
either given by the caller (``num_masked``) or read once; nothing in the normal path reads device values otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from lit_nat.models.base import TokenSpaceBackbone
from lit_nat.models.layers import Mlp, TiedMLMHead, TokenEmbedding, multihead_attention

__all__ = ["ENAT", "ENATBlock", "ENATState", "ContextAttention", "PrevProjection"]


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
        self.modulation = nn.Linear(dim, 8 * dim)  # applied to SiLU(class embedding), computed once by the model

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Update the self tokens.

        Args:
            x: Self tokens ``(B, S, D)``.
            cond: ``SiLU(class embedding)`` ``(B, D)``.
            context: Read-only context tokens ``(B, S_c, D)``; None or ``S_c == 0`` means pure self-attention.

        Returns:
            Updated self tokens ``(B, S, D)``.
        """
        chunks = self.modulation(cond).unsqueeze(1).chunk(8, dim=-1)  # 8 x (B, 1, D)
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


class ENAT(TokenSpaceBackbone):
    """ENAT non-autoregressive transformer with encoder/decoder split over visible/masked tokens and feature reuse.

    Called as ``logits, state = model(ids, condition, state=None, num_masked=None)``; see :meth:`forward`. Every row
    of a batch must have the same number of masked tokens (the tokens are gathered into dense blocks).

    Args:
        codebook_size: Number of VQ codes K; the mask id is K, so the word table has K + 1 rows.
        grid_size: Token grid ``(h, w)`` (or one int for a square grid); N = h * w tokens in raster order.
        num_classes: Number of real classes C; class id C is the learned null class used for guidance.
        width: Model width D.
        encoder_layers: Blocks run over the visible tokens.
        decoder_layers: Blocks run over the masked tokens (>= 1).
        num_heads: Attention heads (must divide width).
        mlp_ratio: MLP hidden width as a multiple of the model width.
        embed_dropout: Dropout after the token embedding (train mode only).
        class_dropout: In-model label dropout: in train mode each label becomes the null class with this probability.
    """

    supports_reuse = True
    #: Debug switch: verify in every call that ``num_masked`` matches ``ids`` and that the current masked set is a
    #: subset of the previous one. Off by default because each check reads a device value (a host-device sync).
    check_inputs: bool = False

    def __init__(
        self,
        *,
        codebook_size: int,
        grid_size: tuple[int, int] | int,
        num_classes: int,
        width: int,
        encoder_layers: int,
        decoder_layers: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        embed_dropout: float = 0.1,
        class_dropout: float = 0.1,
    ) -> None:
        super().__init__(codebook_size, grid_size, num_classes)
        if encoder_layers < 0 or decoder_layers < 1:
            raise ValueError(
                f"need encoder_layers >= 0 and decoder_layers >= 1, got {encoder_layers} and {decoder_layers}"
            )
        if not 0.0 <= class_dropout <= 1.0:
            raise ValueError(f"class_dropout must be in [0, 1], got {class_dropout}")

        self.width = width
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.num_heads = num_heads
        self.class_dropout = class_dropout

        self.token_embed = TokenEmbedding(codebook_size + 1, self.num_tokens, width, dropout=embed_dropout)
        self.class_embed = nn.Embedding(num_classes + 1, width)  # row C = null class
        self.prev_proj = PrevProjection(width, mlp_ratio)
        # One list, encoder first, like the official ``blocks``: checkpoint keys map by name, for any split.
        self.blocks = nn.ModuleList(
            [ENATBlock(width, num_heads, mlp_ratio) for _ in range(encoder_layers + decoder_layers)]
        )
        self.final_norm = nn.LayerNorm(width)  # affine, eps 1e-5 (unlike the blocks' norms)
        self.head = TiedMLMHead(width, codebook_size + 1)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def encoder(self) -> nn.ModuleList:
        """The blocks run over visible tokens (the first ``encoder_layers`` of :attr:`blocks`)."""
        return self.blocks[: self.encoder_layers]

    @property
    def decoder(self) -> nn.ModuleList:
        """The blocks run over masked tokens (the last ``decoder_layers`` of :attr:`blocks`)."""
        return self.blocks[self.encoder_layers :]

    # ------------------------------------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Official from-scratch init: Xavier-uniform Linear weights, zero biases, zero adaLN (adaLN-Zero).

        Tables ~ N(0, 0.02) (the token tables via :class:`TokenEmbedding`), affine LayerNorms identity, head bias 0.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, TokenEmbedding):
                m.reset_parameters()
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for block in self.blocks:
            # Every gate starts at 0, so each block starts as the identity.
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------------------------------------ checks
    def _masked_count(self, is_masked: torch.Tensor, num_masked: int | None) -> int:
        """The masked count of every row as a Python int: ``num_masked`` if given, else read once from the device."""
        n = is_masked.shape[1]
        if num_masked is not None:
            if not isinstance(num_masked, Integral) or not 0 <= num_masked <= n:
                raise ValueError(f"num_masked must be an int in [0, {n}], got {num_masked!r}")
            num_masked = int(num_masked)
            if self.check_inputs:
                lo, hi = self._count_range(is_masked)
                if lo != num_masked or hi != num_masked:
                    raise ValueError(f"num_masked={num_masked} but the rows of ids have {lo}..{hi} masked tokens")
            return num_masked
        lo, hi = self._count_range(is_masked)
        if lo != hi:
            raise ValueError(
                f"ENAT needs the same number of masked tokens in every row (it gathers them into a dense block); "
                f"got between {lo} and {hi} per row"
            )
        return lo

    @staticmethod
    def _count_range(is_masked: torch.Tensor) -> tuple[int, int]:
        counts = is_masked.sum(dim=1)  # (B,)
        lo, hi = torch.stack(torch.aminmax(counts)).tolist()  # one host read for both
        return int(lo), int(hi)

    def _check_state(self, state: ENATState, batch: int, num_masked: int) -> None:
        """Shape and step-order checks on a previous state; Python-side only (no device reads)."""
        if not isinstance(state, ENATState):
            raise TypeError(f"state must be the ENATState returned by the previous call, got {type(state).__name__}")
        want = (batch, self.num_tokens, self.width)
        if tuple(state.features.shape) != want:
            raise ValueError(
                f"state features have shape {tuple(state.features.shape)}, expected {want} (batch, tokens, width); "
                "a state can only be reused for the same rows"
            )
        prev_visible = self.num_tokens - state.num_masked
        if tuple(state.visible_positions.shape) != (batch, prev_visible):
            raise ValueError(
                f"state visible_positions have shape {tuple(state.visible_positions.shape)}, expected "
                f"{(batch, prev_visible)} for num_masked={state.num_masked}"
            )
        if state.num_masked < num_masked:
            raise ValueError(
                f"state comes from a later step: it had {state.num_masked} masked tokens per row, the input has "
                f"{num_masked}; decoding only ever reveals tokens"
            )

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        ids: torch.Tensor,
        condition: torch.Tensor,
        state: ENATState | None = None,
        num_masked: int | None = None,
    ) -> tuple[torch.Tensor, ENATState]:
        """Predict logits over the K real codes at every position, optionally reusing the previous step's features.

        Args:
            ids: ``(B, N)`` long token ids in ``[0, K]``, ``K`` marking masked positions; every row must have the same
                number of masked positions.
            condition: ``(B,)`` or ``(B, 1)`` long class ids in ``[0, C]``, ``C`` being the null class.
            state: The state returned for the same rows by the previous decoding step (whose masked set must contain
                the current one), or None for no reuse.
            num_masked: Masked count of every row, if the caller knows it; otherwise it is read from ``ids`` once.

        Returns:
            ``(logits, state)``: logits ``(B, N, K)`` and the :class:`ENATState` for the next step.

        Raises:
            ValueError: Wrong shapes, unequal masked counts per row, or a state that does not belong to this input.
        """
        if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(
                f"ids must be (B, {self.num_tokens}) for a {self.grid_size[0]}x{self.grid_size[1]} grid, "
                f"got {tuple(ids.shape)}"
            )
        b, n = ids.shape
        if condition.shape not in ((b,), (b, 1)):
            raise ValueError(f"condition must be ({b},) or ({b}, 1) class ids, got {tuple(condition.shape)}")
        is_masked = ids == self.mask_id  # (B, N)
        m = self._masked_count(is_masked, num_masked)
        v = n - m
        if state is not None:
            self._check_state(state, b, m)
            if state.num_masked == n:
                state = None  # the previous step saw no token: reuse would change nothing

        labels = condition.reshape(b)
        if self.training and self.class_dropout > 0:
            drop = torch.rand(b, device=labels.device) < self.class_dropout
            labels = labels.masked_fill(drop, self.null_class)
        cond = F.silu(self.class_embed(labels))  # (B, D); the SiLU of every block's adaLN, applied once

        x = self.token_embed(ids)  # (B, N, D)
        # Stable sort of 0/1 keys: visible positions first, then masked, each ascending (raster order).
        order = torch.argsort(is_masked.to(torch.int8), dim=1, stable=True)  # (B, N)
        visible_pos, masked_pos = order[:, :v], order[:, v:]  # (B, V), (B, M)

        if state is None:
            visible = gather_tokens(x, visible_pos)  # (B, V, D)
            if v > 0:  # with nothing visible the encoder has nothing to do
                for block in self.encoder:
                    visible = block(visible, cond)  # self-attention among visible tokens
            context_pos = visible_pos
        else:
            visible, context_pos = self._encode_with_reuse(x, cond, visible_pos, state)

        masked = gather_tokens(x, masked_pos)  # (B, M, D)
        if m > 0:
            for block in self.decoder:
                masked = block(masked, cond, context=visible)  # the same encoded context for every decoder block

        # Restore raster order: the positions form a permutation, so one scatter writes every row of every sample.
        positions = torch.cat([context_pos, masked_pos], dim=1)  # (B, N)
        tokens = torch.cat([visible, masked], dim=1)  # (B, N, D)
        features = torch.empty_like(tokens).scatter(1, positions.unsqueeze(-1).expand_as(tokens), tokens)
        logits = self.head(self.final_norm(features), self.token_embed.word.weight)  # (B, N, K)
        return logits, ENATState(features=features.detach(), visible_positions=visible_pos, num_masked=m)

    def _encode_with_reuse(
        self, x: torch.Tensor, cond: torch.Tensor, visible_pos: torch.Tensor, state: ENATState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the newly revealed tokens against the projected previous features.

        Args:
            x: Embedded tokens ``(B, N, D)``.
            cond: ``SiLU(class embedding)`` ``(B, D)``.
            visible_pos: Currently visible positions ``(B, V)``, ascending.
            state: Previous step's state (checked; at least one token was visible then).

        Returns:
            ``(visible, positions)``: features ``(B, V, D)`` of all visible tokens -- projected previous features
            first, then the freshly encoded newly revealed tokens -- and their positions ``(B, V)``.
        """
        b, n, _ = x.shape
        v = visible_pos.shape[1]
        kept = n - state.num_masked  # previously visible, still visible
        # Among the visible positions, previously visible ones sort first (key 0), newly revealed ones last (key 1).
        was_masked = torch.ones(b, n, dtype=torch.int8, device=x.device).scatter(1, state.visible_positions, 0)
        was_masked = was_masked.gather(1, visible_pos)  # (B, V)
        if self.check_inputs and bool(((was_masked == 0).sum(dim=1) != kept).any()):
            raise ValueError("a position visible in the previous step is masked now (the masked set must shrink)")
        local = torch.argsort(was_masked, dim=1, stable=True)  # (B, V)
        ordered = visible_pos.gather(1, local)  # (B, V): previously visible, then newly revealed, each ascending
        kept_pos, new_pos = ordered[:, :kept], ordered[:, kept:]  # (B, V_prev), (B, R)

        previous = gather_tokens(state.features.detach(), kept_pos).to(x.dtype)  # (B, V_prev, D)
        previous = self.prev_proj(previous)  # computed once, shared by every encoder block
        new = gather_tokens(x, new_pos)  # (B, R, D)
        if v > kept:  # with nothing newly revealed, every visible feature comes from the previous step
            for block in self.encoder:
                new = block(new, cond, context=previous)
        return torch.cat([previous, new], dim=1), ordered

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, grid_size={self.grid_size}, num_classes={self.num_classes}, "
            f"width={self.width}, encoder_layers={self.encoder_layers}, decoder_layers={self.decoder_layers}, "
            f"num_heads={self.num_heads}"
        )
