"""The tiny model configurations of the tests, in one place, and the quiet CPU Trainer and builders that use them.

Three levels, from the smallest part up:

* registry ``arch_overrides`` (``UVIT_ARCH``, ``ENAT_ARCH``, ...): shrink a registry backbone so that any config runs
  a few CPU steps in about a second; ``tiny_overrides`` gives them as YAML for ``--model.arch_overrides``;
* ``NATModule`` keyword arguments (``UVIT_MODULE``, ``EVAL_MODULE``, ``ENAT_MODULE``) in the token space of the
  ``tiny_shards`` fixture (``SHARDS_SPACE``);
* backbone keyword arguments (``UVIT_BACKBONE``, ``ENAT_BACKBONE``) in the token space of the official-layout
  parity tests (``K, N, C, D, H``; see ``tests/helpers/official.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L

    from lit_nat.data import TokenShardDataModule
    from lit_nat.training.module import NATModule

# --------------------------------------------------------------------------------------- registry arch_overrides
#: U-ViT with one skip pair (in-block, mid-block, out-block)
UVIT_ARCH = {"width": 32, "num_layers": 3, "num_heads": 2}
#: U-ViT of the mid-block alone: the cheapest model that trains, samples and is evaluated
UVIT_ONE_BLOCK_ARCH = {"width": 32, "num_layers": 1, "num_heads": 2}
#: ENAT with one encoder and one decoder block
ENAT_ARCH = {"width": 32, "encoder_layers": 1, "decoder_layers": 1, "num_heads": 2}
#: ENAT with two encoder blocks, so that reuse training passes the previous step through more than one block
ENAT_TWO_ENCODER_ARCH = {"width": 32, "encoder_layers": 2, "decoder_layers": 1, "num_heads": 2}
#: what an ENAT NATModule needs besides its backbone: the same number of masked tokens in every row, one visible
ENAT_OPTIONS = {"mask_ratio_per_sample": False, "min_visible_tokens": 1}


def tiny_overrides(arch: str) -> str:
    """arch_overrides (YAML) that shrink a registry backbone of either family, e.g. ``{width: 32, num_layers: 3,
    num_heads: 2}``."""
    overrides = ENAT_ARCH if arch.startswith("enat") else UVIT_ARCH
    return "{" + ", ".join(f"{key}: {value}" for key, value in overrides.items()) + "}"


# ---------------------------------------------------------------------------------------------- NATModule kwargs
#: the token space of the ``tiny_shards`` fixture: 12 codes on a 4x4 grid, 3 classes, a pixel tokenizer
SHARDS_SPACE = dict(
    codebook_size=12,
    grid_size=4,
    num_classes=3,
    tokenizer={"name": "pixel", "levels": 12, "image_size": 4, "channels": 1},
)
#: the U-ViT module of tests/training/test_module.py
UVIT_MODULE = dict(arch="autonat-tiny", arch_overrides=UVIT_ARCH, **SHARDS_SPACE)
#: the one-block U-ViT with a 4-step schedule that tests/callbacks/test_evaluation.py and tests/search/test_search.py
#: evaluate
EVAL_MODULE = dict(arch="autonat-tiny", arch_overrides=UVIT_ONE_BLOCK_ARCH, **SHARDS_SPACE,
                   schedule_params={"steps": 4})  # fmt: skip
#: the ENAT module of tests/training/test_enat_training.py
ENAT_MODULE = dict(arch="enat-tiny", arch_overrides=ENAT_TWO_ENCODER_ARCH, **SHARDS_SPACE, **ENAT_OPTIONS)

# ------------------------------------------------------------------------------------ backbones, official layout
#: K codes on a 4x4 grid (N tokens), C classes, width D, H heads; ENAT: ENC encoder + DEC decoder blocks
K, N, C, D, H, ENC, DEC = 16, 16, 10, 32, 4, 2, 2
#: U-ViT: 2 in-blocks + mid + 2 out-blocks, so a wrong skip pairing shows
UVIT_BACKBONE = dict(codebook_size=K, grid_size=4, num_classes=C, width=D, num_layers=5, num_heads=H)
#: ENAT: 2 encoder + 2 decoder blocks, so the split and the shared decoder context both matter
ENAT_BACKBONE = dict(codebook_size=K, grid_size=4, num_classes=C, width=D, encoder_layers=ENC, decoder_layers=DEC,
                     num_heads=H)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ builders
def tiny_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """A quiet one-CPU Trainer for tests (no logger, checkpoints, progress bar or sanity check); kwargs override."""
    import lightning as L

    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=1,
                    num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def eval_module(seed: int = 0) -> NATModule:
    """A freshly seeded ``EVAL_MODULE``."""
    import torch

    from lit_nat.training.module import NATModule

    torch.manual_seed(seed)
    return NATModule(**EVAL_MODULE)


def eval_trainer(tmp_path: Path, callbacks: list, **kwargs) -> L.Trainer:
    """``tiny_trainer`` with these callbacks."""
    return tiny_trainer(tmp_path, callbacks=callbacks, **kwargs)


def shards_datamodule(root: Path) -> TokenShardDataModule:
    """The data module of tiny shards: batches of 4, no worker processes."""
    from lit_nat.data import TokenShardDataModule

    return TokenShardDataModule(root, batch_size=4, num_workers=0)
