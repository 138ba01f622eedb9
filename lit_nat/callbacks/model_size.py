"""One line about the model at the start of a fit, in place of Lightning's per-layer table (whose FLOPs column reads
0 without an example input): the backbone, its parameters (trainable, and the EMA copy that is only evaluated) and the
token space. The compute per generated image is the evaluation's cost line (:mod:`lit_nat.callbacks.cost`)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


def count(module: object) -> tuple[int, int]:
    """(all, trainable) parameters of a module."""
    params = list(getattr(module, "parameters", lambda: [])())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


class ModelSize(L.Callback):
    """Prints ``model: <arch>: <N>M parameters (<T>M trainable, EMA copy <E>M); tokens <h>x<w> of <K> codes``."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total, trainable = count(pl_module)
        ema, _ = count(getattr(pl_module, "ema_backbone", None))
        hparams = getattr(pl_module, "hparams", {})
        arch = hparams.get("arch", type(pl_module).__name__)
        grid, codes = hparams.get("grid_size"), hparams.get("codebook_size")
        side = "x".join(map(str, grid)) if isinstance(grid, (list, tuple)) else f"{grid}x{grid}"
        tokens = f"; tokens {side} of {codes} codes" if grid and codes else ""
        rank_zero_info(f"model: {arch}: {(total - ema) / 1e6:.1f}M parameters ({trainable / 1e6:.1f}M trainable, "
                       f"EMA copy {ema / 1e6:.1f}M){tokens}")  # fmt: skip
