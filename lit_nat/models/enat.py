"""ENAT: an encoder over visible tokens, a decoder over masked tokens, and feature reuse across decoding steps.

Architecture (ENAT, NeurIPS 2024), DiT blocks with adaLN-Zero conditioned on the class embedding (or, for text, on
the prompt's pooled vector, with its tokens as read-only context of every block: see :class:`ENAT`):

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

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from lit_nat.conditioning.condition import Condition, TextCondition, batch_size
from lit_nat.models.base import TokenSpaceBackbone
from lit_nat.models.enat_blocks import (
    ContextAttention,
    ENATBlock,
    ENATCondition,
    ENATState,
    PrevProjection,
    gather_tokens,
)
from lit_nat.models.layers import TextEmbedding, TiedMLMHead, TokenEmbedding, class_ids, condition_tokens

__all__ = ["ENAT", "ENATBlock", "ENATCondition", "ENATState", "ContextAttention", "PrevProjection"]


def to_raster_order(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Tokens ``(B, N, D)`` given in the order of ``positions`` ``(B, N)`` (a permutation of each row) back in raster
    order: one scatter writes every row of every sample."""
    return torch.empty_like(tokens).scatter(1, positions.unsqueeze(-1).expand_as(tokens), tokens)


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
        class_dropout: In-model label dropout: in train mode each label becomes the null class with this probability
            (class conditions only; for text the module drops prompts to the empty prompt).
        context_dim: Width E of a text encoder's states to condition on (None: class conditions only).
        context_length: Most text tokens L (the text position table's rows).

    Text conditions (lit_nat's design; the ENAT paper is class-conditional): the prompt's pooled vector, projected to
    the width, takes the class embedding's place in every block's adaLN, and its token states, projected, are
    read-only context tokens of *every* block: the encoder's visible tokens and the decoder's [MASK] tokens attend to
    them beside their usual keys. The text tokens are never updated and never part of the reuse state, so feature
    reuse works unchanged (no text is re-encoded between steps) and a step costs only L more keys per attention.
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
        context_dim: int | None = None,
        context_length: int = 77,
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
        self.context_embed = TextEmbedding(context_dim, context_length, width) if context_dim else None
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
            elif isinstance(m, (TokenEmbedding, TextEmbedding)):
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
        condition: Condition | ENATCondition,
        state: ENATState | None = None,
        num_masked: int | None = None,
    ) -> tuple[torch.Tensor, ENATState]:
        """Predict logits over the K real codes at every position, optionally reusing the previous step's features.

        Args:
            ids: ``(B, N)`` long token ids in ``[0, K]``, ``K`` marking masked positions; every row must have the same
                number of masked positions.
            condition: ``(B,)`` or ``(B, 1)`` long class ids in ``[0, C]``, ``C`` being the null class, or a
                :class:`~lit_nat.conditioning.TextCondition` of B prompts (with ``context_dim`` set), or the
                :class:`ENATCondition` that :meth:`prepare_condition` made of one (the decoding loop's, once per call).
            state: The state returned for the same rows by the previous decoding step (whose masked set must contain
                the current one), or None for no reuse.
            num_masked: Masked count of every row, if the caller knows it; otherwise it is read from ``ids`` once.

        Returns:
            ``(logits, state)``: logits ``(B, N, K)`` and the :class:`ENATState` for the next step.

        Raises:
            ValueError: Wrong shapes, unequal masked counts per row, or a state that does not belong to this input.
        """
        self._check_ids(ids)
        b, n = ids.shape
        prepared = self._prepared(condition, b)  # every block's adaLN modulation; text context (B, L, D) or None
        is_masked = ids == self.mask_id  # (B, N)
        m = self._masked_count(is_masked, num_masked)
        v = n - m
        if state is not None:
            self._check_state(state, b, m)
            if state.num_masked == n:
                state = None  # the previous step saw no token: reuse would change nothing

        x = self.token_embed(ids)  # (B, N, D)
        # Stable sort of 0/1 keys: visible positions first, then masked, each ascending (raster order).
        order = torch.argsort(is_masked.to(torch.int8), dim=1, stable=True)  # (B, N)
        visible_pos, masked_pos = order[:, :v], order[:, v:]  # (B, V), (B, M)

        if state is None:
            visible, context_pos = self._encode(x, prepared, visible_pos), visible_pos  # (B, V, D), (B, V)
        else:
            visible, context_pos = self._encode_with_reuse(x, prepared, visible_pos, state)  # (B, V, D), (B, V)
        masked = self._decode(gather_tokens(x, masked_pos), prepared, visible)  # (B, M, D)

        features = to_raster_order(torch.cat([visible, masked], dim=1), torch.cat([context_pos, masked_pos], dim=1))
        logits = self.head(self.final_norm(features), self.token_embed.word.weight)  # (B, N, K)
        return logits, ENATState(features=features.detach(), visible_positions=visible_pos, num_masked=m)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(
                f"ids must be (B, {self.num_tokens}) for a {self.grid_size[0]}x{self.grid_size[1]} grid, "
                f"got {tuple(ids.shape)}"
            )

    def _encode(self, x: torch.Tensor, prepared: ENATCondition, visible_pos: torch.Tensor) -> torch.Tensor:
        """Encode the visible tokens from scratch (no reuse): the encoder blocks' self-attention among the visible
        tokens ``visible_pos`` ``(B, V)`` of ``x`` ``(B, N, D)`` (and the text tokens) -> ``(B, V, D)``."""
        visible = gather_tokens(x, visible_pos)  # (B, V, D)
        if visible_pos.shape[1] > 0:  # with nothing visible the encoder has nothing to do
            for block, modulation in zip(self.encoder, prepared.modulations):
                visible = block(visible, modulation, context=prepared.text)  # self-attention among visible (+ text)
        return visible

    def _decode(self, masked: torch.Tensor, prepared: ENATCondition, visible: torch.Tensor) -> torch.Tensor:
        """The decoder blocks over the [MASK] tokens ``masked`` ``(B, M, D)``, with the encoded visible tokens
        ``(B, V, D)`` (and the text tokens) as the same read-only context of every block -> ``(B, M, D)``."""
        if masked.shape[1] > 0:
            text = prepared.text
            context = visible if text is None else torch.cat([text, visible], dim=1)  # (B, [L +] V, D)
            for block, modulation in zip(self.decoder, prepared.modulations[self.encoder_layers :]):
                masked = block(masked, modulation, context=context)
        return masked

    def prepare_condition(self, condition: Condition) -> ENATCondition:
        """The step-invariant part of ``condition``: every block's adaLN modulation and the projected text tokens.

        The decoding loop calls this once and passes the result to every step, which then skips the per-block
        modulation products (memory-bound: a third of the weights read for a few rows); the logits are the same bit
        for bit. (In train mode the in-model label dropout is drawn here, so prepare once per forward there.)
        """
        cond, text = self._condition(condition, batch_size(condition))
        return ENATCondition(modulations=[block.modulation(cond) for block in self.blocks], text=text)

    def _prepared(self, condition: Condition | ENATCondition, b: int) -> ENATCondition:
        if not isinstance(condition, ENATCondition):
            condition = self.prepare_condition(condition)
        if condition.batch_size != b:
            raise ValueError(f"the condition has {condition.batch_size} rows but ids has {b}")
        return condition

    def _condition(self, condition: Condition, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(SiLU(adaLN input) (B, D), text tokens (B, L, D) or None)`` of a class or text condition."""
        if isinstance(condition, TextCondition):
            text = condition_tokens(condition, b, self.class_embed, self.context_embed)  # checks shapes
            return F.silu(self.context_embed.pooled(condition)), text
        labels = class_ids(condition, b)
        if self.training and self.class_dropout > 0:
            drop = torch.rand(b, device=labels.device) < self.class_dropout
            labels = labels.masked_fill(drop, self.null_class)
        return F.silu(self.class_embed(labels)), None  # the SiLU of every block's adaLN, applied once

    def _encode_with_reuse(
        self,
        x: torch.Tensor,
        prepared: ENATCondition,
        visible_pos: torch.Tensor,
        state: ENATState,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the newly revealed tokens against the projected previous features.

        Args:
            x: Embedded tokens ``(B, N, D)``.
            prepared: The condition's adaLN modulations and text context tokens.
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
            text = prepared.text
            context = previous if text is None else torch.cat([text, previous], dim=1)  # (B, [L +] V_prev, D)
            for block, modulation in zip(self.encoder, prepared.modulations):
                new = block(new, modulation, context=context)
        return torch.cat([previous, new], dim=1), ordered

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, grid_size={self.grid_size}, num_classes={self.num_classes}, "
            f"width={self.width}, encoder_layers={self.encoder_layers}, decoder_layers={self.decoder_layers}, "
            f"num_heads={self.num_heads}"
        )
