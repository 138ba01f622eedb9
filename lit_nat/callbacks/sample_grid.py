"""A callback that shows what the model generates: a grid (a row per class, or per prompt for text models, labelled)
in TensorBoard and as a PNG, a strip of tokens being revealed step by step, and the generation schedule's curves
(figure + scalars)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchvision.utils import make_grid

from lit_nat.core.io import atomic_write
from lit_nat.generation.visuals import label_rows, reveal_strip, schedule_figure, schedule_scalars, write_png

#: folder under the run directory for the pictures of loggers that cannot show images (all but TensorBoard)
PICTURES_DIR = "pictures"


class SampleGrid(L.Callback):
    """Generates ``samples_per_class`` images for each of the first ``max_classes`` classes with the module's current
    generation schedule and EMA weights: after validation (TensorBoard ``samples/grid``) and at the end of fit
    (``<log_dir>/<filename>``). Rows are classes, columns samples; the seed is fixed so grids are comparable.

    After each validation it also logs, with the schedule in use at that moment (a schedule search may change it):
    ``samples/reveal`` (one row per sample: the canvas before step 1 and after each step, masked tokens painted
    ``mask_color``), the figure ``schedule/curves`` (r(t), tau1(t), tau2(t), s(t)), the scalars
    ``schedule/<field>/step_<t>`` (t = 1..T) and the schedule as YAML text (``schedule/yaml``). With loggers that
    cannot show images (CSV, MLflow, W&B, ...) the same pictures are written as PNG files under
    ``<log_dir>/pictures/`` (said once in the log) and the schedule scalars go through ``log_metrics``; without any
    logger nothing is logged.

    Args:
        samples_per_class: images per class (grid columns).
        max_classes: classes shown (grid rows), the first ones by id.
        seed: generator seed; the same seed gives the same grid for the same weights and schedule.
        every_n_epochs: log to TensorBoard after every n-th validation.
        filename: PNG written into the run directory when fit ends.
        upscale: integer nearest-neighbour upscaling for tiny images (8x8 digits are unreadable otherwise).
        reveal_samples: rows of the reveal strip (one sample of each of the first classes); 0 turns it off.
        mask_color: RGB in [0, 1] of masked tokens in the reveal strip.
        schedule_curves: log the schedule's figure, scalars and YAML.
        prompts: for text-conditioned models, the grid's rows (each row labelled with its prompt; the first
            ``reveal_samples`` also make the reveal strip). None: the first ``max_classes`` distinct captions of
            the data's validation split (so one config serves class and captioned data). Ignored for class models.
    """

    def __init__(
        self,
        samples_per_class: int = 8,
        max_classes: int = 10,
        seed: int = 0,
        every_n_epochs: int = 1,
        filename: str = "samples.png",
        upscale: int = 1,
        reveal_samples: int = 2,
        mask_color: tuple[float, float, float] = (0.3, 0.45, 0.85),
        schedule_curves: bool = True,
        prompts: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.samples_per_class = samples_per_class
        self.max_classes = max_classes
        self.seed = seed
        self.every_n_epochs = max(1, every_n_epochs)
        self.filename = filename
        self.upscale = max(1, upscale)
        self.reveal_samples = max(0, reveal_samples)
        self.mask_color = tuple(float(c) for c in mask_color)
        self.schedule_curves = schedule_curves
        self.prompts = list(prompts) if prompts else None
        self._told = False  # the one line saying where pictures go when no logger shows images

    def grid(self, pl_module: L.LightningModule) -> torch.Tensor:
        """The image grid (C, H', W') in [0, 1]: a row per class, or per prompt (labelled) for a text model."""
        if pl_module.conditioner.is_text:
            rows = self.prompts
            ids = pl_module.generate(prompts=[p for p in rows for _ in range(self.samples_per_class)], seed=self.seed)
        else:
            rows = None
            classes = min(self.max_classes, pl_module.hparams.num_classes)
            ids = pl_module.generate(torch.arange(classes).repeat_interleave(self.samples_per_class), seed=self.seed)
        images = pl_module.decode(ids.ids).float().cpu()
        if self.upscale > 1:
            images = torch.nn.functional.interpolate(images, scale_factor=self.upscale, mode="nearest")
        grid = make_grid(images, nrow=self.samples_per_class, padding=2, pad_value=1.0)
        return grid if rows is None else label_rows(grid, rows, len(rows))

    def reveal(self, pl_module: L.LightningModule) -> torch.Tensor:
        """The reveal strip (3, H', W'): rows are samples of classes 0, 1, ... (or of the first prompts), columns the
        steps."""
        if pl_module.conditioner.is_text:
            prompts = self.prompts[: self.reveal_samples]
            return reveal_strip(pl_module, None, self.seed, mask_color=self.mask_color, upscale=self.upscale,
                                prompts=prompts)  # fmt: skip
        labels = torch.arange(self.reveal_samples) % pl_module.hparams.num_classes
        return reveal_strip(pl_module, labels, self.seed, mask_color=self.mask_color, upscale=self.upscale)

    def _usable(self, pl_module: L.LightningModule) -> bool:
        try:
            tokenizer = pl_module.tokenizer
        except (ValueError, OSError) as err:  # e.g. a tokenizer whose weights are not on this machine
            rank_zero_warn(f"SampleGrid: cannot build the tokenizer ({err}); skipping the sample grid")
            return False
        if tokenizer is None:
            rank_zero_warn("SampleGrid: the model has no tokenizer config, so samples cannot be decoded; skipping")
            return False
        if pl_module.conditioner.is_text and not self.prompts:
            rank_zero_warn("SampleGrid: a text-conditioned model needs prompts (SampleGrid(prompts=[...]) or a data "
                           "module with validation captions); skipping the grid")  # fmt: skip
            return False
        return True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.prompts or not pl_module.conditioner.is_text:
            return
        captions = getattr(trainer.datamodule, "captions", None)  # (the data module is set up before callbacks)
        try:
            found = captions() if captions is not None else []
        except ValueError as err:  # no validation split, or one without captions (MetadataError)
            rank_zero_warn(f"SampleGrid: no prompts given and none in the data ({err})")
            return
        self.prompts = list(dict.fromkeys(found))[: self.max_classes] or None  # distinct, in the data's order

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not trainer.loggers:
            return
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:  # CSV, MLflow, W&B, ...: pictures as files beside the run, scalars through the logger
            folder = Path(trainer.log_dir or trainer.default_root_dir) / PICTURES_DIR  # every rank: a collective
            if trainer.is_global_zero:
                self._write_pictures(trainer, pl_module, folder)
            return
        if not trainer.is_global_zero:
            return
        writer, step = tensorboard.experiment, trainer.global_step
        if self.schedule_curves:  # needs no decoding
            schedule = pl_module.schedule
            for tag, value in schedule_scalars(schedule).items():
                writer.add_scalar(tag, value, global_step=step)
            writer.add_figure("schedule/curves", schedule_figure(schedule, pl_module.num_tokens), global_step=step)
            writer.add_text("schedule/yaml", _as_markdown_code(schedule.to_dict()), global_step=step)
        if not self._usable(pl_module):
            return
        writer.add_image("samples/grid", self.grid(pl_module), global_step=step)
        if self.reveal_samples:
            writer.add_image("samples/reveal", self.reveal(pl_module), global_step=step)

    def _write_pictures(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        """For loggers that cannot show images: ``<log_dir>/pictures/{schedule,grid,reveal}_step<N>.png`` (said once)
        and the schedule's scalars through every logger's ``log_metrics``."""
        step = trainer.global_step
        if not self._told:
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers)
            rank_zero_info(f"SampleGrid: {names} cannot show images; the pictures are written to {folder}")
            self._told = True
        folder.mkdir(parents=True, exist_ok=True)
        if self.schedule_curves:
            schedule = pl_module.schedule
            for logger in trainer.loggers:
                logger.log_metrics(schedule_scalars(schedule), step=step)
            figure = schedule_figure(schedule, pl_module.num_tokens)
            atomic_write(folder / f"schedule_step{step}.png", lambda f: figure.savefig(f, format="png"))
        if not self._usable(pl_module):
            return
        write_png(self.grid(pl_module), folder / f"grid_step{step}.png")
        if self.reveal_samples:
            write_png(self.reveal(pl_module), folder / f"reveal_step{step}.png")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: log_dir is a collective
        if not trainer.is_global_zero or not self._usable(pl_module):
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = write_png(self.grid(pl_module), out_dir / self.filename)
        print(f"SampleGrid: wrote {path}")


def _as_markdown_code(data: dict) -> str:
    # TensorBoard renders text as markdown; indenting by 4 spaces keeps the YAML verbatim
    return "\n".join("    " + line for line in yaml.safe_dump(data, sort_keys=False).splitlines())
