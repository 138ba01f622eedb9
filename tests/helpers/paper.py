"""The shipped configs at tiny size on CPU: command-line overrides, shards in a config's token space, and random-weight
stand-ins for the paper configs' assets at their real shapes (FID Inception, reference statistics, VQGAN, CLIP).

Only sizes change: the token grid, codebook, resolution and text-encoder shape are the config's; the networks are
narrower (``tiny_overrides``, a VQGAN of width 32 with one residual block per level, a one-layer CLIP text tower of
CLIP-L's width and length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from tests.conftest import write_random_shards
from tests.helpers.tiny import tiny_overrides

#: CLIP ViT-L/14's text states, the shape of every text config's conditioning: 77 tokens x 768
CLIP_L_TEXT = {"hidden": 768, "max_length": 77}
#: the narrow random VQGAN of the paper configs' tests (the real one: ch 128, 2 residual blocks per level)
NARROW_VQGAN = {"ch": 32, "num_res_blocks": 1}


def cpu_overrides(tmp_path: Path, steps: int = 2, arch: str = "autonat-s") -> list[str]:
    """A shipped config on one CPU at float32 for ``steps`` steps, with a tiny backbone of its family."""
    return [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
        f"--model.arch_overrides={tiny_overrides(arch)}",
        "--data.num_workers=0",
        "--data.batch_size=4",
    ]


def is_text(config: Path) -> bool:
    """A text-to-image config (its SampleGrid lists prompts)."""
    return "prompts:" in config.read_text()


def grid_of(config: Path) -> int:
    return 32 if "512" in config.name else 16


def random_inception(path: Path) -> Path:
    """Random weights in the FID Inception layout the extractor reads (torchvision's Inception v3 keys, 1008 classes),
    He-initialised so activations stay O(1)."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def random_reference(path: Path, dim: int = 2048, nonzero: int = 8) -> Path:
    """Reference statistics of the Inception's 2048 features: random ``mu``, a random diagonal ``sigma`` with a few
    non-zero entries (a valid covariance whose FID, an eigen-decomposition of a 2048 x 2048 product, takes 0.5 s on
    two cores instead of 10 s for a dense one)."""
    rng = np.random.default_rng(0)
    sigma = np.zeros((dim, dim))
    sigma[np.arange(nonzero), np.arange(nonzero)] = rng.uniform(0.1, 1.0, nonzero)
    np.savez(path, mu=rng.normal(0, 0.1, dim), sigma=sigma)
    return path


def random_vqgan(path: Path, image_size: int) -> dict:
    """A random VQGAN checkpoint of the real f16 layout at reduced width, and the tokenizer config meta.json records
    (1024 codes, ``image_size / 16`` tokens a side)."""
    from lit_nat.tokenizers.vqgan import VQGANTokenizer, save_random_checkpoint

    if not path.exists():
        save_random_checkpoint(path, **NARROW_VQGAN)
    return VQGANTokenizer(checkpoint=path, image_size=image_size, **NARROW_VQGAN).config()


def shards_for(config: Path, tmp_path: Path, tokenizer: dict | None = None, text_shape: dict | None = None) -> Path:
    """Tiny shards in the config's token space (ImageNet: 1024 codes, 16x16 or 32x32, 1000 classes; captioned data: one
    class, captions and a random CLIP text tower of ``text_shape``) or, for the digits demos, the real digits."""
    from lit_nat.conditioning import save_random_clip
    from lit_nat.demos.digits import prepare_digits

    data = yaml.safe_load(config.read_text())["data"]
    if data.get("prepare") in ("digits", "digits_text"):
        root = tmp_path / data["prepare"]
        return prepare_digits(root, captions=data["prepare"] == "digits_text") and root
    text = None
    if is_text(config):
        shape = text_shape or {"hidden": 32, "max_length": 64}
        clip = save_random_clip(tmp_path / "clip", layers=1 if text_shape else 2, heads=2, **shape)
        text = {"name": "clip", "path": str(clip), "max_length": shape["max_length"]}
    return write_random_shards(tmp_path / "shards", codebook_size=1024, grid=grid_of(config),
                               num_classes=1 if text else 1000, sizes={"train": 16, "val": 4}, text_encoder=text,
                               tokenizer=tokenizer)  # fmt: skip
