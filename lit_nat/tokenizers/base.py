"""The tokenizer interface: images in [0, 1] <-> integer token grids.

Every tokenizer (the pixel tokenizer of the digits demo, the VQGAN of ImageNet) answers the same questions, so data
preparation, sampling and evaluation never ask which one they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class Tokenizer(nn.Module, ABC):
    """Maps images ``(B, C, H, W)`` in [0, 1] to token ids ``(B, h * w)`` in raster order, and back."""

    #: registry name, written into shard metadata so a mismatch can be detected
    name: str = "abstract"
    #: the kinds of ``checkpoint`` location it accepts (:func:`lit_nat.core.assets.resolve`); none: it reads no weights
    checkpoint_kinds: tuple[str, ...] = ()

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes K; ids are in ``[0, K)``. The NAT's mask id is K."""

    @property
    @abstractmethod
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(h, w)`` for the tokenizer's native image size."""

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]:
        """Pixel size ``(H, W)`` of the images it encodes and decodes."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Image channels C (1 for grey digits, 3 for RGB)."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float in [0, 1] -> ``(B, h * w)`` long ids."""

    @abstractmethod
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h * w)`` long ids -> ``(B, C, H, W)`` float in [0, 1]."""

    @classmethod
    def space_of(cls, **config: Any) -> tuple[int, tuple[int, int]]:
        """``(codebook_size, grid_size)`` of the tokenizer that ``cls(**config)`` would build, from the config alone.

        The default builds it on the meta device (no memory); a tokenizer that reads weights at construction (the
        VQGAN) overrides this to compute the answer without reading them.
        """
        with torch.device("meta"):
            tokenizer = cls(**config)
        return tokenizer.codebook_size, tuple(tokenizer.grid_size)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description, stored in shard metadata and checkpoints."""
        return {"name": self.name}

    @property
    def num_tokens(self) -> int:
        h, w = self.grid_size
        return h * w


class SquareConvTokenizer(Tokenizer):
    """A fully convolutional tokenizer of square images: ``image_size`` px <-> a grid ``image_size / factor`` a side.
    Subclasses call :meth:`set_size` once they know their downsampling factor."""

    factor: int = 1
    _side: int = 0

    def set_size(self, image_size: int, factor: int) -> None:
        if not isinstance(image_size, int) or image_size <= 0 or image_size % factor:
            raise ValueError(f"{self.name}: image_size must be a positive multiple of {factor}, got {image_size!r}")
        self.factor, self._side = int(factor), image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self._side // self.factor, self._side // self.factor)

    def check_ids(self, ids: Tensor) -> None:
        """``decode``'s input: integer ids ``(B, h * w)`` in ``[0, K)`` (one line naming the shape, dtype or range)."""
        h, w, who = *self.grid_size, type(self).__name__
        if ids.ndim != 2 or ids.shape[1] != h * w or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"{who}.decode expects integer ids (B, {h * w}), got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and bool(((ids < 0) | (ids >= self.codebook_size)).any()):
            lo, hi = ids.aminmax()
            raise ValueError(f"{who}.decode: ids must be in [0, {self.codebook_size}), got range [{lo}, {hi}]")

    @property
    def image_size(self) -> tuple[int, int]:
        return (self._side, self._side)
