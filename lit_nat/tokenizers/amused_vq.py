"""aMUSEd's VQ-GAN (8,192 codes, f16) behind the :class:`Tokenizer` interface, through diffusers' ``VQModel``.

    images (B, 3, H, W) in [0, 1] -> VQModel.encode -> latents (B, C, H/16, W/16) -> nearest code -> ids (B, h * w)
    ids -> codebook rows -> post_quant_conv -> decoder -> images (B, 3, H, W), clamped to [0, 1]

The images are in [0, 1] on both sides, not [-1, 1] (aMUSEd's pipelines build their image processor with
``do_normalize=False`` and clip the decoded images to [0, 1]); encoding and decoding follow ``AmusedImg2ImgPipeline``
and ``AmusedPipeline`` (``quantize(latents)[2][2]``; ``decode(ids, force_not_quantize=True, shape=...)``).

Precision: the VQ-GAN runs in float32 (default) or bfloat16, never float16: in float16 it overflows to NaN (why the
diffusers config sets ``force_upcast``), so ``dtype="fp16"`` is refused with that reason. Folders holding only the
``fp16`` variant of the weights are read and upcast to float32. The weights are loaded strictly (every key with its
shape, nothing else) into a ``VQModel`` built from the folder's ``config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_nat.core.assets import resolve
from lit_nat.core.checkpointing import load_strict, read_diffusers_weights
from lit_nat.core.errors import UsageError
from lit_nat.tokenizers.base import SquareConvTokenizer

VQ_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_vq_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a diffusers ``VQModel`` folder, checked to be one."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UsageError(f"{Path(folder)}: no VQModel folder here (config.json is missing)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    if config.get("_class_name") != "VQModel":
        raise UsageError(f"{path}: config of a {config.get('_class_name')}, expected VQModel (aMUSEd's vqvae/)")
    return config


def downsampling_factor(config: dict[str, Any]) -> int:
    """Pixels per token side of a diffusers ``VQModel`` config (one halving per extra resolution level)."""
    return 2 ** (len(config.get("block_out_channels", [64])) - 1)


class AmusedVQTokenizer(SquareConvTokenizer):
    """aMUSEd's VQ-GAN, frozen, from a local diffusers ``vqvae/`` folder.

    Args:
        checkpoint: the ``vqvae/`` folder of an aMUSEd download (``config.json`` + weights; through
            :func:`lit_nat.tokenizers.load_tokenizer` also ``hf://amused/amused-256/vqvae``). ``None`` builds random
            weights from ``vq_config`` and ``seed`` (tests, benchmarks).
        image_size: side of the square images (fully convolutional: 256 px gives 16x16 tokens, 512 px 32x32).
        dtype: ``fp32`` or ``bf16`` (``fp16`` gives NaNs and is refused).
        vq_config: the ``VQModel`` arguments for random weights (ignored with ``checkpoint``).
        seed: seed of the random weights.
        batch_invariant: encode one image at a time, so an image gets the same ids alone or in any batch.
    """

    name = "amused_vq"
    checkpoint_kinds = ("path", "hub")  # a folder: a local path, or hf://amused/amused-256/vqvae

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        image_size: int = 256,
        dtype: str = "fp32",
        vq_config: dict[str, Any] | None = None,
        seed: int = 0,
        batch_invariant: bool = True,
    ) -> None:
        super().__init__()
        from diffusers import VQModel

        if dtype == "fp16":
            raise UsageError("amused_vq: dtype fp16 is refused: aMUSEd's VQ-GAN overflows to NaN in float16; "
                             "use fp32 or bf16")  # fmt: skip
        if dtype not in VQ_DTYPES:
            raise UsageError(f"amused_vq: dtype must be one of {sorted(VQ_DTYPES)}, got {dtype!r}")
        self.checkpoint = None if checkpoint is None else os.path.abspath(os.fspath(checkpoint))
        self.dtype_name, self.seed, self.batch_invariant = dtype, int(seed), bool(batch_invariant)
        config = read_vq_config(self.checkpoint) if self.checkpoint is not None else dict(vq_config or {})
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                self.model = VQModel(**config)
            except TypeError as err:
                raise UsageError(f"amused_vq: {self.checkpoint or 'vq_config'}: not a VQModel config ({err})") from None
        if self.checkpoint is not None:
            load_strict(self.model, read_diffusers_weights(self.checkpoint), self.checkpoint)
        config = dict(self.model.config)
        self.vq_config = None if self.checkpoint else {k: v for k, v in config.items() if not k.startswith("_")}
        if not config.get("lookup_from_codebook", False):
            raise UsageError(f"amused_vq: {self.checkpoint or 'vq_config'}: lookup_from_codebook is false; aMUSEd's "
                             "VQ-GAN decodes ids through its codebook (lookup_from_codebook: true)")  # fmt: skip
        self.set_size(image_size, downsampling_factor(config))
        if dtype != "fp32":
            self.model.to(VQ_DTYPES[dtype])
        self.model.requires_grad_(False).eval()

    # ------------------------------------------------------------------------------------------ Tokenizer interface
    @classmethod
    def space_of(cls, checkpoint: Any = None, image_size: int = 256, vq_config: dict | None = None, **_: Any):
        if checkpoint is not None:  # (a hub location: its config.json from huggingface_hub's cache)
            checkpoint = resolve(checkpoint, "aMUSEd's VQ-GAN", "--tokenizer_checkpoint", kinds=cls.checkpoint_kinds)
        config = read_vq_config(checkpoint) if checkpoint is not None else dict(vq_config or {})
        side = int(image_size) // downsampling_factor(config)
        return int(config.get("num_vq_embeddings", 256)), (side, side)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def channels(self) -> int:
        return int(self.model.config.in_channels)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [0, 1] -> ``(B, h * w)`` long ids in raster order."""
        expected = (self.channels, self._side, self._side)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            raise ValueError(f"amused_vq.encode expects float images (B, {', '.join(map(str, expected))}) in [0, 1], "
                             f"got {images.dtype} {tuple(images.shape)}")  # fmt: skip
        weight = next(self.model.parameters())
        images = images.to(device=weight.device, dtype=weight.dtype)
        with torch.autocast(device_type=images.device.type, enabled=False):
            latents = torch.cat([self.model.encode(x).latents for x in (images.split(1) if self.batch_invariant
                                                                          else [images])])  # fmt: skip
            ids = self.model.quantize(latents)[2][2]  # (B * h * w,) nearest codes, raster order
        return ids.view(images.shape[0], -1).long()

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """``(B, h * w)`` ids in ``[0, K)`` -> ``(B, 3, H, W)`` float32 in [0, 1]."""
        self.check_ids(ids)
        h, w = self.grid_size
        b = ids.shape[0]
        grid = ids.to(next(self.model.parameters()).device).long().view(b, h, w)
        with torch.autocast(device_type=grid.device.type, enabled=False):
            images = self.model.decode(grid, force_not_quantize=True,
                                       shape=(b, h, w, self.model.config.latent_channels)).sample  # fmt: skip
        return images.float().clamp(0, 1)  # (B, 3, H, W)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, "checkpoint": self.checkpoint, "image_size": self._side}
        if self.checkpoint is None:
            config.update(vq_config=self.vq_config, seed=self.seed)
        if self.dtype_name != "fp32":
            config["dtype"] = self.dtype_name
        if not self.batch_invariant:
            config["batch_invariant"] = False
        return config

