"""``NATTrainer``: the Lightning Trainer of every lit_nat command, with durable checkpoints and preemption, and the
Trainer-bound subcommands ``sample``, ``edit`` and ``search`` (their signatures and docstrings are the commands'
options and help; the work is done in :mod:`lit_nat.commands.sample`, :mod:`lit_nat.commands.edit` and
:mod:`lit_nat.commands.search`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO

from lit_nat.callbacks.reliability import Preemption, RunDirectoryLock
from lit_nat.core.checkpointing import DurableCheckpointIO
from lit_nat.commands.edit import run_edit
from lit_nat.core.errors import UsageError
from lit_nat.training.loading import load_model
from lit_nat.commands.sample import SampleRequest, run_sample
from lit_nat.search.session import SearchSettings
from lit_nat.commands.search import run_search


def relocate_assets(model: Any, tokenizer_checkpoint: str | None = None, text_encoder: str | None = None) -> None:
    """``--tokenizer_checkpoint`` / ``--text_encoder`` of sample, edit, search and validate, applied to the model."""
    if tokenizer_checkpoint is not None or text_encoder is not None:
        if not hasattr(model, "relocate_assets"):
            raise UsageError("--tokenizer_checkpoint / --text_encoder need a lit_nat NATModule")
        model.relocate_assets(tokenizer_checkpoint, text_encoder)


class NATTrainer(L.Trainer):
    """The Lightning Trainer plus ``sample`` and ``search`` (the CLI subcommands of the same names).

    Every run also gets, unless the arguments already hold one of the same kind: durable checkpoint files
    (:class:`~lit_nat.core.checkpointing.DurableCheckpointIO`: atomic, never with non-finite weights, damaged files named on
    load), one live fit per run directory (:class:`~lit_nat.callbacks.RunDirectoryLock`) and a checkpoint of the
    current step on SIGTERM/SIGUSR1 (:class:`~lit_nat.callbacks.Preemption`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(DurableCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        # first, so the run directory is locked before any other callback writes into it (e.g. the saved config)
        defaults = [cb() for cb in (RunDirectoryLock, Preemption) if not any(isinstance(c, cb) for c in callbacks)]
        kwargs["callbacks"] = [*defaults, *callbacks]
        super().__init__(*args, **kwargs)

    def validate(
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: L.LightningDataModule | None = None,
        weights_only: bool | None = None,
        tokenizer_checkpoint: str | None = None,
        text_encoder: str | None = None,
    ) -> list[Any]:
        """Lightning's validate (loss, and the config's FID / CLIP score callbacks), with the assets recorded by the
        model pointed elsewhere.

        Args:
            model: the model to validate.
            dataloaders: validation dataloaders (default: the data module's).
            ckpt_path: checkpoint whose weights and schedule are validated.
            verbose: print the results.
            datamodule: the data module.
            weights_only: torch.load's weights_only for the checkpoint.
            tokenizer_checkpoint: where the tokenizer's weights recorded in the checkpoint are now (a moved file or
                folder, a URL#sha256=<hex>, a hub location); checked against the recorded sha256.
            text_encoder: where the recorded text encoder is now (a moved folder or a hub id such as
                openai/clip-vit-large-patch14); checked against the recorded sha256.
        """
        relocate_assets(model, tokenizer_checkpoint, text_encoder)
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def sample(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        num_samples: int = 50_000,
        batch_size: int = 100,
        labels: list[int] | None = None,
        schedule: str | None = None,
        seed: int = 0,
        out: str = "samples",
        save_png: bool = False,
        grid_samples: int = 100,
        overwrite: bool = False,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        tokenizer_checkpoint: str | None = None,
        text_encoder: str | None = None,
    ) -> Path:
        """Generate images on every device and write samples.npz (ADM layout), grid.png and samples.json.

        Args:
            model: the NATModule (built from --config; weights from ckpt_path).
            datamodule: unused for loading (the labels plan replaces it); kept for the config's token-space links.
            ckpt_path: checkpoint to sample from (lit_nat or imported official weights); the EMA weights are used.
            num_samples: number of images over all devices.
            batch_size: images per generation batch (fixed composition: the output does not depend on the devices).
            labels: class labels, cycled (sample i gets labels[i mod len]); default class-balanced, i mod num_classes.
                The null class (num_classes) gives unconditional samples.
            schedule: generation schedule for this run: a schedule YAML (ours or the official AutoNAT format) or a
                preset name (heuristic, enat, amused); default: the checkpoint's schedule.
            seed: base seed: batch b is generated with seed + b * batch_size.
            out: output folder, or an .npz file to write (grid, record and parts beside it: x.png, x.json, x.parts/).
            save_png: also write each image as out/images/NNNNNN.png.
            grid_samples: number of images in grid.png.
            overwrite: replace an existing out/samples.npz, and drop the parts of an interrupted run instead of
                resuming it.
            prompts: for a text-conditioned model, the prompts, cycled (sample i gets prompts[i mod P]).
            prompts_file: a UTF-8 file with one prompt per line (blank lines skipped), instead of --prompts.
            tokenizer_checkpoint: where the tokenizer's weights recorded in the checkpoint are now (a moved file or
                folder, a URL#sha256=<hex>, a hub location); checked against the recorded sha256.
            text_encoder: where the recorded text encoder is now (a moved folder or a hub id such as
                openai/clip-vit-large-patch14); checked against the recorded sha256.
        """
        relocate_assets(model, tokenizer_checkpoint, text_encoder)
        request = SampleRequest(num_samples=num_samples, batch_size=batch_size, labels=labels, schedule=schedule,
                                seed=seed, out=out, save_png=save_png, grid_samples=grid_samples, overwrite=overwrite,
                                prompts=prompts, prompts_file=prompts_file)  # fmt: skip
        return run_sample(self, model, ckpt_path, request)

    def edit(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        images: str = "",
        mask: str | None = None,
        out: str = "edits",
        labels: list[int] | None = None,
        prompts: list[str] | None = None,
        seeds: list[int] | None = None,
        dilate: int = 0,
        fraction: float | None = None,
        schedule: str | None = None,
        overwrite: bool = False,
        tokenizer_checkpoint: str | None = None,
        text_encoder: str | None = None,
    ) -> Path:
        """Inpaint, outpaint or re-generate regions of images: keep the tokens of the kept region and decode the rest.

        Args:
            model: the NATModule of --config (used when no --ckpt_path is given).
            datamodule: unused (the token space comes with the checkpoint).
            ckpt_path: checkpoint to edit with (its EMA weights and schedule).
            images: an image, a folder of images or an .npz of N x H x W [x C] stacks (as `sample` writes), at the
                tokenizer's size; any mode or dtype, by its true range (8-bit /255, 16-bit /65535, floats in [0, 1];
                alpha over black).
            mask: what to regenerate: half[:top|bottom|left|right] (keep that half; default top), border[:width]
                (outpaint: keep the centre), box:x0,y0,x1,y1 (pixels or fractions), or a mask PNG (white = regenerate).
            out: output folder (edited/*.png, grid.png, edits.json).
            labels: class labels, one for all images or one per image (class models; default: unconditional).
            prompts: prompts, one for all images or one per image (text models).
            seeds: one edit per seed (grid columns); default [0].
            dilate: grow the regenerated region by this many tokens (more context redrawn around a hole).
            fraction: img2img instead of --mask: regenerate this random share of all tokens.
            schedule: a schedule YAML or preset; default: the checkpoint's.
            overwrite: replace an existing out/edits.json.
            tokenizer_checkpoint: where the tokenizer's weights recorded in the checkpoint are now (a moved file or
                folder, a URL#sha256=<hex>, a hub location); checked against the recorded sha256.
            text_encoder: where the recorded text encoder is now (a moved folder or a hub id such as
                openai/clip-vit-large-patch14); checked against the recorded sha256.
        """
        assets = {"tokenizer_checkpoint": tokenizer_checkpoint, "text_encoder": text_encoder}
        editor = load_model(ckpt_path, **assets) if ckpt_path else model.eval()
        relocate_assets(editor, **assets)
        editor = editor.to(self.strategy.root_device)
        if labels is None and prompts is None and not editor.conditioner.is_text:
            labels = [editor.null_class]  # unconditional
        return run_edit(editor, images, mask, out, labels=labels, prompts=prompts, seeds=seeds, dilate=dilate,
                        fraction=fraction, schedule=schedule, overwrite=overwrite)  # fmt: skip

    def search(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        updates: int = 10,
        schedule: str | None = None,
        num_samples: int | None = None,
        momentum: float = 0.5,
        ratio_step: float = 0.01,
        ratio_lr: float = 1e-3,
        other_step: float = 0.1,
        other_lr: float = 0.1,
        out: str = "search",
        tokenizer_checkpoint: str | None = None,
        text_encoder: str | None = None,
    ) -> dict[str, Any]:
        """Generation-strategy search (AutoNAT Sec. 4.2, the official ``--mode search``) on a trained checkpoint.

        Projected momentum SGD on the schedule with forward-difference gradients of the FID of the config's
        GenerativeEvaluation callback (common random numbers). Writes out/search_{k}.yaml, out/stp_{k}.yaml
        (official format), out/best.yaml and out/state.json after every update; running the same command again
        resumes from out/state.json. See :mod:`lit_nat.commands.search`.

        Args:
            model: the NATModule (built from --config; weights from ckpt_path, EMA weights used for sampling).
            datamodule: the config's data (the checkpoint is loaded by a one-batch validate run).
            ckpt_path: checkpoint to search on (lit_nat or imported official weights).
            updates: total number of SGD updates (a resumed search continues up to this count).
            schedule: starting schedule: a schedule YAML (ours or official) or a preset name; default: the
                checkpoint's. When resuming it must have the saved search's number of steps.
            num_samples: images per FID evaluation (default: the evaluator's num_samples).
            momentum: SGD momentum (official 0.5).
            ratio_step: forward-difference step of the mask ratios (official 0.01).
            ratio_lr: learning rate of the mask ratios (official 1e-3).
            other_step: forward-difference step of temperatures and guidance (official 0.1).
            other_lr: learning rate of temperatures and guidance (official 0.1).
            out: output folder (state and strategy files).
            tokenizer_checkpoint: where the tokenizer's weights recorded in the checkpoint are now (a moved file or
                folder, a URL#sha256=<hex>, a hub location); checked against the recorded sha256.
            text_encoder: where the recorded text encoder is now (a moved folder or a hub id such as
                openai/clip-vit-large-patch14); checked against the recorded sha256.
        """
        relocate_assets(model, tokenizer_checkpoint, text_encoder)
        settings = SearchSettings(momentum, ratio_step, ratio_lr, other_step, other_lr, num_samples)
        return run_search(self, model, datamodule, ckpt_path, updates, schedule, settings, out)
