"""What every backbone shares: its token space (codebook, grid, classes) and the ids derived from it."""

from __future__ import annotations

from numbers import Integral

from torch import nn


class TokenSpaceBackbone(nn.Module):
    """Base class of the backbones: validates and holds the token space the sampler and the objective rely on.

    Ids ``0..K-1`` are codes, ``K`` (= ``mask_id``) is [MASK]; classes ``0..C-1`` are labels, ``C`` (= ``null_class``)
    is the unconditional label of classifier-free guidance.
    """

    #: whether ``forward`` uses a previous step's state (ENAT); the module's reuse training checks it
    supports_reuse: bool = False

    def __init__(self, codebook_size: int, grid_size: tuple[int, int] | int, num_classes: int) -> None:
        super().__init__()
        if isinstance(grid_size, Integral):
            grid_size = (grid_size, grid_size)
        grid_size = tuple(int(s) for s in grid_size)
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be a positive int or an (h, w) pair, got {grid_size}")
        if codebook_size < 1 or num_classes < 1:
            raise ValueError(f"codebook_size and num_classes must be positive, got {codebook_size}, {num_classes}")
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        self.grid_size: tuple[int, int] = grid_size  # type: ignore[assignment]

    @property
    def mask_id(self) -> int:
        """Id of the mask token, K (one past the last real code)."""
        return self.codebook_size

    @property
    def null_class(self) -> int:
        """Class id of the unconditional ("null") label, C."""
        return self.num_classes

    @property
    def num_tokens(self) -> int:
        """Number of image tokens N = h * w."""
        return self.grid_size[0] * self.grid_size[1]
