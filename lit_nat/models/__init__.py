"""Backbones: the networks that map a partly masked token grid to logits over the codebook.

Every backbone obeys one call contract, which is all the sampler and the objective rely on::

    logits, state = backbone(ids, condition, state=None, num_masked=None)

- ``ids``: ``(B, N)`` long, values in ``[0, K]``; ``K == backbone.codebook_size == backbone.mask_id`` marks masked
  positions, and ``N == backbone.num_tokens`` (the token grid ``backbone.grid_size`` in raster order).
- ``condition``: ``(B,)`` or ``(B, 1)`` long class ids in ``[0, C]``; ``C == backbone.num_classes ==
  backbone.null_class`` is the unconditional label used for classifier-free guidance.
- ``state``: whatever the previous call returned, for backbones that reuse features across decoding steps (ENAT's
  :class:`ENATState`; such backbones set ``supports_reuse = True``); ``None`` on the first step. Backbones without
  reuse (U-ViT) ignore it and return ``None``.
- ``num_masked``: optional Python int, the number of masked positions in every row, when the caller knows it (the
  sampler does, from the schedule). Backbones that gather masked and visible tokens separately (ENAT) use it to
  avoid reading a count from the device; others ignore it. Every row must then have exactly that many masked ids.
- ``logits``: ``(B, N, K)`` float over the real codes only, so the mask id can never be sampled.

Backbones know nothing of schedules, mask laws or Lightning. Sizes live in :mod:`lit_nat.models.registry`; official
checkpoints are converted by :mod:`lit_nat.models.convert`.
"""

from lit_nat.models.base import TokenSpaceBackbone
from lit_nat.models.convert import (
    CONVERTERS,
    ConversionReport,
    convert_autonat_state_dict,
    convert_enat_state_dict,
    infer_autonat_dims,
    infer_enat_dims,
    load_official,
    load_official_autonat,
    load_official_enat,
)
from lit_nat.models.enat import ENAT, ENATBlock, ENATCondition, ENATState
from lit_nat.models.layers import Attention, Mlp, TiedMLMHead, TokenEmbedding, multihead_attention
from lit_nat.models.registry import ARCHITECTURES, ArchSpec, build_backbone, count_parameters, resolve_arch
from lit_nat.models.uvit import UViT, UViTBlock

__all__ = [
    "TokenSpaceBackbone",
    "ARCHITECTURES",
    "ArchSpec",
    "Attention",
    "CONVERTERS",
    "ConversionReport",
    "ENAT",
    "ENATBlock",
    "ENATCondition",
    "ENATState",
    "Mlp",
    "TiedMLMHead",
    "TokenEmbedding",
    "UViT",
    "UViTBlock",
    "build_backbone",
    "resolve_arch",
    "convert_autonat_state_dict",
    "convert_enat_state_dict",
    "count_parameters",
    "infer_autonat_dims",
    "infer_enat_dims",
    "load_official",
    "load_official_autonat",
    "load_official_enat",
    "multihead_attention",
]
