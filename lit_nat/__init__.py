"""lit_nat: non-autoregressive Transformer image generators (AutoNAT, ENAT) in PyTorch Lightning."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "load_tokenizer"]


def load_model(ckpt_path: str, map_location: str = "cpu"):
    """Load a lit_nat checkpoint in eval mode; its ``backbone`` holds the EMA weights. See ``lit_nat.module``."""
    from lit_nat.module import load_model as _load_model

    return _load_model(ckpt_path, map_location=map_location)


def load_tokenizer(name: str, **kwargs):
    """Build a tokenizer by name, e.g. ``load_tokenizer("pixel", levels=17)``; see ``lit_nat.tokenizers``."""
    from lit_nat.tokenizers import load_tokenizer as _load_tokenizer

    return _load_tokenizer(name, **kwargs)
