"""aMUSEd (the open Muse): diffusers' ``UVit2DModel`` behind lit_nat's backbone contract.

Why diffusers' class and not our own copy: ``UVit2DModel`` and ``VQModel`` are maintained model classes of diffusers
(only the aMUSEd *pipelines* are deprecated: ``AmusedPipeline`` is frozen at its 0.33.1 behaviour and moved to
``diffusers.pipelines.deprecated``, which means no fixes or new features for the pipeline, while the model classes and
``AmusedScheduler`` stay). lit_nat uses the model classes only, never the pipeline (its loop is lit_nat's own), and
pins diffusers in ``constraints/ci.txt``; the ``amused`` extra installs it (``pip install -e .[amused]``).

:class:`AmusedBackbone` adapts the call contract: lit_nat's ids ``(B, N)`` with [MASK] = K (the codebook size) become
aMUSEd's ``(B, h, w)`` with its own mask id (``vocab_size - 1``, 8255); the text condition's token states go in as
``encoder_hidden_states`` (CLIP-L's penultimate layer) and its pooled vector as ``pooled_text_emb`` (the projected
``text_embeds``), with the micro-conditions ``[width, height, crop top, crop left, aesthetic score]`` fixed per model;
the logits ``(B, K, h, w)`` come back as ``(B, N, K)``. The folder layout is read by
:mod:`lit_nat.models.amused_folder`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from lit_nat.conditioning.condition import Condition, TextCondition
from lit_nat.core.checkpointing import load_strict, read_diffusers_weights
from lit_nat.core.errors import UsageError
from lit_nat.models.amused_folder import default_micro_conds
from lit_nat.models.base import TokenSpaceBackbone

#: aMUSEd-256's transformer as its ``transformer/config.json`` gives it (diffusers ``UVit2DModel`` arguments, 603.5M
#: parameters over CLIP-L's 768-wide states, 8,192 codes on 16 x 16 tokens): random-weight runs of the real shape
#: without the hub files (``benchmark --arch amused-256``, scripts/benchmark_amused.py, scripts/benchmark_lora.py)
AMUSED_256_TRANSFORMER = dict(hidden_size=1024, use_bias=False, cond_embed_dim=768, micro_cond_encode_dim=256,
                              micro_cond_embed_dim=1280, encoder_hidden_size=768, vocab_size=8256, codebook_size=8192,
                              in_channels=768, block_out_channels=768, num_res_blocks=3, downsample=False,
                              upsample=False, block_num_heads=12, num_hidden_layers=22, num_attention_heads=16,
                              intermediate_size=2816)  # fmt: skip
#: the same layout reduced for a quick look (4 layers of width 256)
AMUSED_REDUCED_TRANSFORMER = {**AMUSED_256_TRANSFORMER, **dict(hidden_size=256, in_channels=256, block_out_channels=256,
                              block_num_heads=4, num_res_blocks=1, num_hidden_layers=4, num_attention_heads=4,
                              intermediate_size=704)}  # fmt: skip


class AmusedBackbone(TokenSpaceBackbone):
    """diffusers' ``UVit2DModel`` as a lit_nat backbone (text conditions only; no feature reuse).

    Args:
        codebook_size: K (must equal the transformer's ``codebook_size``).
        grid_size: the token grid (e.g. 16 for amused-256).
        num_classes: unused by aMUSEd (text only); kept for the shared token space.
        transformer: the ``UVit2DModel`` config (its ``config.json``; defaults: diffusers' own).
        micro_conds: the five micro-conditions (default ``[256, 256, 0, 0, 6]``).
        mask_token_id: aMUSEd's mask id (default ``vocab_size - 1``, its scheduler's).
        context_dim: the text encoder's width (must equal ``encoder_hidden_size``; given by lit_nat's conditioner).
        context_length: unused (aMUSEd takes any number of text tokens).
    """

    def __init__(
        self,
        *,
        codebook_size: int,
        grid_size: tuple[int, int] | int,
        num_classes: int,
        transformer: dict[str, Any] | None = None,
        micro_conds: list[float] | None = None,
        mask_token_id: int | None = None,
        context_dim: int | None = None,
        context_length: int = 77,
    ) -> None:
        super().__init__(codebook_size, grid_size, num_classes)
        from diffusers import UVit2DModel

        config = {k: v for k, v in (transformer or {}).items() if not k.startswith("_")}
        unknown = sorted(set(config) - set(inspect.signature(UVit2DModel.__init__).parameters))
        if unknown:
            raise UsageError(f"aMUSEd transformer config: keys {unknown} are not UVit2DModel arguments of this "
                             "diffusers version (see the amused extra's pin)")  # fmt: skip
        self.model = UVit2DModel(**config)
        model_codebook = int(self.model.config.codebook_size)
        if model_codebook != codebook_size:
            raise ValueError(f"aMUSEd transformer has {model_codebook} codes, the token space {codebook_size}")
        if context_dim is not None and int(context_dim) != int(self.model.config.encoder_hidden_size):
            raise ValueError(f"aMUSEd transformer takes text states of width {self.model.config.encoder_hidden_size}, "
                             f"the text encoder gives {context_dim}")  # fmt: skip
        self.amused_mask_id = int(self.model.config.vocab_size - 1 if mask_token_id is None else mask_token_id)
        micro = micro_conds if micro_conds is not None else default_micro_conds(16 * self.grid_size[0])
        self.register_buffer("micro_conds", torch.tensor(micro, dtype=torch.float32), persistent=False)

    def forward(
        self, ids: torch.Tensor, condition: Condition, state: None = None, num_masked: int | None = None
    ) -> tuple[torch.Tensor, None]:
        """``ids`` ``(B, N)`` in ``[0, K]`` and a text condition of B prompts -> ``(logits (B, N, K), None)``."""
        if not isinstance(condition, TextCondition):
            raise UsageError("aMUSEd is text-conditioned: give prompts, not class labels")
        b, n = ids.shape
        if n != self.num_tokens or len(condition) != b:
            raise ValueError(f"ids must be (B, {self.num_tokens}) with B prompts, got {tuple(ids.shape)} and "
                             f"{len(condition)} prompts")  # fmt: skip
        h, w = self.grid_size
        tokens = ids.masked_fill(ids == self.mask_id, self.amused_mask_id).view(b, h, w)
        dtype = next(self.model.parameters()).dtype
        logits = self.model(
            tokens,
            encoder_hidden_states=condition.tokens.to(dtype),
            pooled_text_emb=condition.pooled.to(dtype),
            micro_conds=self.micro_conds.to(dtype).expand(b, -1),
        )  # (B, K, h, w)
        return logits.flatten(2).transpose(1, 2), None  # (B, N, K)


def load_amused_transformer(backbone: AmusedBackbone, folder: str | Path) -> None:
    """The ``transformer/`` weights of an aMUSEd folder into ``backbone``, strictly (every key with its shape)."""
    path = Path(folder) / "transformer"
    load_strict(backbone.model, read_diffusers_weights(path), str(path))
