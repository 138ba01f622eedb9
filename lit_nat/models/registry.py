"""Named backbone sizes, kept as data: each name points at a class and its default keyword arguments.

The data-dependent arguments (``codebook_size``, ``grid_size``, ``num_classes``) come from the tokenizer and the data
set, never from the registry, so one name (``autonat-l``) serves 256-px and 512-px grids alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from lit_nat.models.amused import AmusedBackbone
from lit_nat.models.enat import ENAT
from lit_nat.models.uvit import UViT

__all__ = [
    "ArchSpec", "ARCHITECTURES", "DATA_ARGS", "build_backbone", "count_parameters", "resolve_arch", "valid_overrides",
]  # fmt: skip

#: Constructor arguments that every backbone takes and that ``build_backbone`` fills from the data, not the registry.
DATA_ARGS: tuple[str, ...] = ("codebook_size", "grid_size", "num_classes", "context_dim", "context_length")


@dataclass(frozen=True)
class ArchSpec:
    """One named size: the backbone class and the keyword arguments that define it.

    Args:
        cls: Backbone class; its constructor must accept ``codebook_size``, ``grid_size`` and ``num_classes``.
        defaults: Keyword arguments of the size (width, depth, heads, ...), overridable per run.
        description: One line for listings and ``--help``.
    """

    cls: type[nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


# Read-only on purpose: sizes are edited here, in code review, not registered at run time.
ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType(
    {
        # Paper sizes. AutoNAT-S heads/qkv_bias are not in the official repo; 8 heads follows the U-ViT convention.
        "autonat-s": ArchSpec(UViT, dict(width=512, num_layers=13, num_heads=8), "AutoNAT-S: 13 blocks, width 512"),
        "autonat-l": ArchSpec(UViT, dict(width=768, num_layers=25, num_heads=8), "AutoNAT-L: 25 blocks, width 768"),
        # Small enough for the digits demo and CPU smoke runs.
        "autonat-tiny": ArchSpec(UViT, dict(width=128, num_layers=5, num_heads=4), "U-ViT for demos: 5 blocks, 128"),
        # ENAT-L is the released model (22 encoder + 2 decoder blocks, width 1024, 16 heads). ENAT-S/B configs are not
        # in the official repo: ENAT-B reproduces the paper's 219M parameters (219,646,721 counting the dead
        # prev_embedder the official model carries; 214,924,289 here), ENAT-S is a plausible smaller size.
        "enat-s": ArchSpec(
            ENAT,
            dict(width=512, encoder_layers=10, decoder_layers=2, num_heads=8),
            "ENAT-S (UNVERIFIED guess): 10+2 blocks, width 512",
        ),
        "enat-b": ArchSpec(
            ENAT,
            dict(width=768, encoder_layers=14, decoder_layers=2, num_heads=12),
            "ENAT-B (UNVERIFIED guess matching the paper's 219M): 14+2 blocks, width 768",
        ),
        "enat-l": ArchSpec(
            ENAT, dict(width=1024, encoder_layers=22, decoder_layers=2, num_heads=16), "ENAT-L: 22+2 blocks, width 1024"
        ),
        "enat-tiny": ArchSpec(
            ENAT, dict(width=128, encoder_layers=3, decoder_layers=1, num_heads=4), "ENAT for demos: 3+1 blocks, 128"
        ),
        # Pre-trained text-to-image (Muse family): the transformer's size is its diffusers config, given as the
        # ``transformer`` override by ``import-checkpoint --format amused`` (needs the ``amused`` extra: diffusers).
        "amused": ArchSpec(AmusedBackbone, {}, "aMUSEd (diffusers UVit2DModel); sizes from its config.json"),
    }
)


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(sorted(ARCHITECTURES))}") from None


def valid_overrides(arch: str) -> list[str]:
    """Keyword arguments of ``arch``'s class that ``overrides`` may set (everything but the data arguments)."""
    params = inspect.signature(_spec(arch).cls.__init__).parameters
    return sorted(
        name
        for name, p in params.items()
        if name != "self" and name not in DATA_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def resolve_arch(arch: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a backbone *is*: its class name and the size arguments after overrides (to compare two structures)."""
    spec = _spec(arch)
    return {"class": spec.cls.__name__, **spec.defaults, **dict(overrides or {})}


def build_backbone(
    arch: str,
    *,
    codebook_size: int,
    grid_size: tuple[int, int] | int,
    num_classes: int,
    overrides: Mapping[str, Any] | None = None,
    context: tuple[int, int] | None = None,
) -> nn.Module:
    """Instantiate a named backbone for a given tokenizer and label set.

    Args:
        arch: Registry name, e.g. ``"autonat-l"``.
        codebook_size: Number of VQ codes K (the mask id is K).
        grid_size: Token grid ``(h, w)`` or a side length.
        num_classes: Number of real classes (the null class id equals it).
        overrides: Replacements for the size's defaults (e.g. ``{"embed_dropout": 0.0}``).
        context: ``(width, tokens)`` of the text encoder to condition on (None: class conditions only).

    Returns:
        The backbone module, on the current default device.

    Raises:
        ValueError: Unknown ``arch`` or an override that the class does not accept.
    """
    spec = _spec(arch)
    overrides = dict(overrides or {})
    data_keys = sorted(set(overrides) & set(DATA_ARGS))
    if data_keys:
        raise ValueError(f"override(s) {', '.join(map(repr, data_keys))} come from the data; pass them as arguments")
    allowed = valid_overrides(arch)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, unknown))} for {arch!r}; valid keys: {', '.join(allowed)}"
        )
    kwargs = {**spec.defaults, **overrides}
    if context is not None:
        kwargs.update(context_dim=int(context[0]), context_length=int(context[1]))
    return spec.cls(codebook_size=codebook_size, grid_size=grid_size, num_classes=num_classes, **kwargs)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once); works on the meta device."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
