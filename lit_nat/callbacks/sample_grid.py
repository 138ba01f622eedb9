"""A callback that shows what the model generates: a class-conditional grid in TensorBoard and as a PNG."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid, save_image


class SampleGrid(L.Callback):
    """Generates ``samples_per_class`` images for each of the first ``max_classes`` classes with the module's current
    generation schedule and EMA weights: after validation (TensorBoard ``samples/grid``) and at the end of fit
    (``<log_dir>/<filename>``). Rows are classes, columns samples; the seed is fixed so grids are comparable.

    Args:
        samples_per_class: images per class (grid columns).
        max_classes: classes shown (grid rows), the first ones by id.
        seed: generator seed; the same seed gives the same grid for the same weights and schedule.
        every_n_epochs: log to TensorBoard after every n-th validation.
        filename: PNG written into the run directory when fit ends.
        upscale: integer nearest-neighbour upscaling for tiny images (8x8 digits are unreadable otherwise).
    """

    def __init__(
        self,
        samples_per_class: int = 8,
        max_classes: int = 10,
        seed: int = 0,
        every_n_epochs: int = 1,
        filename: str = "samples.png",
        upscale: int = 1,
    ) -> None:
        super().__init__()
        self.samples_per_class = samples_per_class
        self.max_classes = max_classes
        self.seed = seed
        self.every_n_epochs = max(1, every_n_epochs)
        self.filename = filename
        self.upscale = max(1, upscale)

    def grid(self, pl_module: L.LightningModule) -> torch.Tensor:
        """The image grid (C, H', W') in [0, 1]."""
        classes = min(self.max_classes, pl_module.hparams.num_classes)
        labels = torch.arange(classes).repeat_interleave(self.samples_per_class)
        ids = pl_module.generate(labels, seed=self.seed).ids
        images = pl_module.decode(ids).float().cpu()
        if self.upscale > 1:
            images = torch.nn.functional.interpolate(images, scale_factor=self.upscale, mode="nearest")
        return make_grid(images, nrow=self.samples_per_class, padding=2, pad_value=1.0)

    def _usable(self, pl_module: L.LightningModule) -> bool:
        try:
            tokenizer = pl_module.tokenizer
        except (ValueError, OSError) as err:  # e.g. a tokenizer whose weights are not on this machine
            rank_zero_warn(f"SampleGrid: cannot build the tokenizer ({err}); skipping the sample grid")
            return False
        if tokenizer is None:
            rank_zero_warn("SampleGrid: the model has no tokenizer config, so samples cannot be decoded; skipping")
            return False
        return True

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not self._usable(pl_module):
            return
        loggers[0].experiment.add_image("samples/grid", self.grid(pl_module), global_step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._usable(pl_module):
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / self.filename
        save_image(self.grid(pl_module), path)
        print(f"SampleGrid: wrote {path}")
