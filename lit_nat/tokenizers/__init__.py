"""Tokenizers behind one interface (:class:`Tokenizer`), built by name with :func:`load_tokenizer`."""

from __future__ import annotations

import inspect
import os
from typing import Any

from lit_nat.core.assets import hub_uri, is_url, pin, resolve
from lit_nat.core.errors import UsageError
from lit_nat.tokenizers.amused_vq import AmusedVQTokenizer
from lit_nat.tokenizers.base import Tokenizer
from lit_nat.tokenizers.pixel import PixelTokenizer
from lit_nat.tokenizers.vqgan import VQGANTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "pixel": PixelTokenizer, "vqgan": VQGANTokenizer, "amused_vq": AmusedVQTokenizer,
}  # fmt: skip


#: the option of sample, edit, search and validate that points a recorded tokenizer elsewhere
OVERRIDE_FLAG = "--tokenizer_checkpoint"


def resolve_checkpoint(name: str, config: dict[str, Any], check: bool = True) -> dict[str, Any]:
    """``config`` with its ``checkpoint`` location (a path, a URL with ``#sha256=``, or for aMUSEd's VQ-GAN a hub
    location: :mod:`lit_nat.core.assets`) resolved to a local path, checked against the recorded ``sha256`` (unless not
    ``check``) and without that key, ready for the tokenizer's constructor."""
    config = dict(config)
    sha256 = config.pop("sha256", None)
    location = config.get("checkpoint")
    if location is None or name not in TOKENIZERS:
        return config
    path = resolve(location, f"the {name} tokenizer's weights", OVERRIDE_FLAG, sha256 if check else None,
                   kinds=TOKENIZERS[name].checkpoint_kinds)  # fmt: skip
    return {**config, "checkpoint": str(path)}


def relocate(config: dict[str, Any] | None, checkpoint: str | os.PathLike | None) -> dict[str, Any] | None:
    """A recorded tokenizer config pointed at ``checkpoint`` (``--tokenizer_checkpoint``); its recorded ``sha256``
    stays, so the new file is checked against it when the tokenizer is built."""
    if checkpoint is None:
        return config
    if config is None:
        raise UsageError(f"{OVERRIDE_FLAG} {checkpoint}: the model records no tokenizer")
    name = config.get("name")
    if name not in TOKENIZERS or "checkpoint" not in inspect.signature(TOKENIZERS[name]).parameters:
        raise UsageError(f"{OVERRIDE_FLAG} {checkpoint}: the tokenizer {config.get('name')!r} reads no weights")
    return {**config, "checkpoint": os.fspath(checkpoint)}


def pinned(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A tokenizer config as a checkpoint records it: a local ``checkpoint`` absolute and with its ``sha256``
    (:func:`lit_nat.core.assets.pin`), so another machine can point ``--tokenizer_checkpoint`` at a copy and have it
    checked; a URL or hub location as it is."""
    if not config or config.get("checkpoint") is None:
        return config
    location, sha256 = pin(config["checkpoint"], config.get("sha256"))
    return {**config, "checkpoint": location, **({"sha256": sha256} if sha256 else {})}


def load_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Build a tokenizer by registry name, e.g. ``load_tokenizer('pixel', levels=17, image_size=8)`` or
    ``load_tokenizer('vqgan', checkpoint='assets/vqgan_jax_strongaug.ckpt', image_size=512)``. ``checkpoint`` may be
    any location :mod:`lit_nat.core.assets` resolves; a URL or hub location stays the tokenizer's recorded one."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; expected one of {sorted(TOKENIZERS)}")
    location = kwargs.get("checkpoint")
    tokenizer = TOKENIZERS[name](**resolve_checkpoint(name, kwargs)).eval()
    if location is not None and (is_url(str(location)) or hub_uri(str(location)) is not None):
        tokenizer.checkpoint = str(location)  # its config() names where it comes from, not this machine's cache
    return tokenizer


def token_space(config: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """``(codebook_size, grid_size)`` of the tokenizer a config describes, without building it or reading weights
    (so a data root's ``meta.json`` can be checked against its tokenizer cheaply, on every rank)."""
    config = dict(config)
    name = config.pop("name", None)
    config.pop("sha256", None)  # (the space never depends on the bytes: the weights are not read here)
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
    "Tokenizer", "AmusedVQTokenizer", "PixelTokenizer", "VQGANTokenizer", "TOKENIZERS", "load_tokenizer", "pinned",
    "relocate", "resolve_checkpoint", "token_space", "tokenizer_from_config",
]  # fmt: skip
