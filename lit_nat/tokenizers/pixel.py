"""A lossless tokenizer for tiny grey images: every grey level is a code and every pixel a token."""

from __future__ import annotations

from typing import Any

import torch

from lit_nat.tokenizers.base import Tokenizer


class PixelTokenizer(Tokenizer):
    """Quantises each pixel to one of ``levels`` grey levels; token grid = pixel grid.

    scikit-learn's digits are 8x8 with 17 grey levels (0..16), so ``PixelTokenizer(levels=17, image_size=8)`` is
    exactly lossless on them.

    Args:
        levels: number of grey levels, i.e. the codebook size.
        image_size: side of the square image (= side of the token grid).
        channels: channels of the decoded image (the grey value is repeated; encoding reads channel 0).
    """

    name = "pixel"

    def __init__(self, levels: int = 17, image_size: int = 8, channels: int = 1) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"PixelTokenizer: levels must be >= 2, got {levels}")
        if image_size < 1 or channels < 1:
            raise ValueError(f"PixelTokenizer: image_size and channels must be >= 1, got {image_size}, {channels}")
        self.levels = levels
        self._side = image_size
        self._channels = channels

    @classmethod
    def space_of(cls, levels: int = 17, image_size: int = 8, channels: int = 1) -> tuple[int, tuple[int, int]]:
        return levels, (image_size, image_size)

    @property
    def codebook_size(self) -> int:
        return self.levels

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self._side, self._side)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self._side, self._side)

    @property
    def channels(self) -> int:
        return self._channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"PixelTokenizer.encode expects (B, C, {self._side}, {self._side}) images in [0, 1], "
                f"got shape {tuple(images.shape)}"
            )
        grey = images[:, 0].clamp(0, 1)  # (B, H, W)
        ids = torch.round(grey * (self.levels - 1)).long()
        return ids.flatten(1)  # (B, H*W), raster order

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(f"PixelTokenizer.decode expects (B, {self.num_tokens}) ids, got {tuple(ids.shape)}")
        grey = ids.clamp(0, self.levels - 1).float() / (self.levels - 1)
        images = grey.view(-1, 1, self._side, self._side)
        return images.expand(-1, self._channels, -1, -1).contiguous()  # (B, C, H, W)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "levels": self.levels, "image_size": self._side, "channels": self._channels}
