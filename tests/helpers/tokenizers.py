"""A tokenizer for tests of image-folder tokenisation: deterministic, tiny, RGB."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_nat.tokenizers import Tokenizer


class PatchMeanTokenizer(Tokenizer):
    """A deterministic test tokenizer: each 16x16 patch -> its mean colour, ``levels`` levels per channel."""

    name = "patchmean"

    def __init__(self, image_size: int = 32, levels: int = 4, patch: int = 16) -> None:
        super().__init__()
        self.side, self.levels, self.patch = image_size, levels, patch

    @property
    def codebook_size(self) -> int:
        return self.levels**3

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.side // self.patch, self.side // self.patch)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.side, self.side)

    @property
    def channels(self) -> int:
        return 3

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == (3, self.side, self.side) and images.dtype == torch.float32
        q = torch.round(F.avg_pool2d(images, self.patch) * (self.levels - 1)).long().clamp(0, self.levels - 1)
        return ((q[:, 0] * self.levels + q[:, 1]) * self.levels + q[:, 2]).flatten(1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        n, h = self.levels, self.grid_size[0]
        rgb = torch.stack([ids // (n * n), ids // n % n, ids % n], 1).float() / (n - 1)  # (B, 3, h * w)
        return rgb.view(-1, 3, h, h).repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)

    def config(self) -> dict:
        return {"name": self.name, "image_size": self.side, "levels": self.levels, "patch": self.patch}
