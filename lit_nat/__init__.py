"""lit_nat: non-autoregressive Transformer image generators (AutoNAT, ENAT) in PyTorch Lightning.

The public Python API, importable from the top (each loaded on first use, so ``import lit_nat`` stays light):
``load_model``, ``load_tokenizer``, ``load_amused``; ``generate`` (the decoding loop), ``GenerationSchedule`` (a
decoding run's per-step schedule), ``edit`` with ``EditRequest`` (what ``python -m lit_nat edit`` runs on a loaded
model) and ``sample`` with ``SampleRequest``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: name -> (module, attribute) of the public API re-exported here
PUBLIC = {
    "generate": ("lit_nat.generation.decoding", "generate"),
    "GenerationSchedule": ("lit_nat.generation.schedule", "GenerationSchedule"),
    "edit": ("lit_nat.commands.edit", "run_edit"),
    "EditRequest": ("lit_nat.commands.edit", "EditRequest"),
    "sample": ("lit_nat.commands.sample", "run_sample"),
    "SampleRequest": ("lit_nat.commands.sample", "SampleRequest"),
}

__all__ = ["__version__", "load_amused", "load_model", "load_tokenizer", *PUBLIC]


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        module, attribute = PUBLIC[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'lit_nat' has no attribute {name!r}")


def load_model(ckpt_path: str, map_location: str = "cpu", **moved: str):
    """Load a lit_nat checkpoint in eval mode; its ``backbone`` holds the EMA weights. ``moved``: where recorded
    files are now (``tokenizer_checkpoint``, ``text_encoder``, a LoRA model's ``lora_base``), each checked against
    its recorded sha256. See ``lit_nat.training.loading``."""
    from lit_nat.training.loading import load_model as _load_model

    return _load_model(ckpt_path, map_location=map_location, **moved)


def load_tokenizer(name: str, **kwargs):
    """Build a tokenizer by name, e.g. ``load_tokenizer("pixel", levels=17)``; see ``lit_nat.tokenizers``."""
    from lit_nat.tokenizers import load_tokenizer as _load_tokenizer

    return _load_tokenizer(name, **kwargs)


def load_amused(folder: str, **model_args):
    """aMUSEd from a local diffusers folder (``amused/amused-256`` or ``-512`` downloaded beforehand) as a lit_nat
    model in eval mode, with aMUSEd's own schedule (preset ``amused``); needs the ``amused`` extra. See
    ``lit_nat.training.importer.amused_module``."""
    from lit_nat.training.importer import amused_module

    return amused_module(folder, **model_args)
