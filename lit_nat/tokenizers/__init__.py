"""Tokenizers behind one interface (:class:`Tokenizer`), built by name with :func:`load_tokenizer`."""

from __future__ import annotations

from typing import Any

from lit_nat.tokenizers.amused_vq import AmusedVQTokenizer
from lit_nat.tokenizers.base import Tokenizer
from lit_nat.tokenizers.pixel import PixelTokenizer
from lit_nat.tokenizers.vqgan import VQGANTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "pixel": PixelTokenizer, "vqgan": VQGANTokenizer, "amused_vq": AmusedVQTokenizer,
}  # fmt: skip


def load_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Build a tokenizer by registry name, e.g. ``load_tokenizer('pixel', levels=17, image_size=8)`` or
    ``load_tokenizer('vqgan', checkpoint='assets/vqgan_jax_strongaug.ckpt', image_size=512)``."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**kwargs).eval()


def token_space(config: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """``(codebook_size, grid_size)`` of the tokenizer a config describes, without building it or reading weights
    (so a data root's ``meta.json`` can be checked against its tokenizer cheaply, on every rank)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer config: unknown tokenizer {name!r}; expected one of {sorted(TOKENIZERS)}")
    try:
        return TOKENIZERS[name].space_of(**config)
    except TypeError as err:
        raise ValueError(f"tokenizer config {config!r} of {name!r}: {err}") from None


def tokenizer_from_config(config: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its :meth:`Tokenizer.config` (as stored in shard metadata)."""
    config = dict(config)
    name = config.pop("name", None)
    if name is None:
        raise ValueError(f"tokenizer config {config!r} has no 'name' key")
    return load_tokenizer(name, **config)


__all__ = [
    "Tokenizer", "AmusedVQTokenizer", "PixelTokenizer", "VQGANTokenizer", "TOKENIZERS", "load_tokenizer", "token_space",
    "tokenizer_from_config",
]  # fmt: skip
