"""``python -m lit_nat sample``: generate N images on every device of the Trainer and write them for evaluators.

Output under ``--out``:

- ``samples.npz``: the ADM / DiT layout read by the ADM evaluation suite and torch-fidelity wrappers: ``arr_0`` uint8
  (N, H, W, 3) and ``arr_1`` int64 (N,) labels, in sample order (grey images are repeated to RGB);
- ``grid.png``: the first ``grid_samples`` images (class-balanced labels: column c shows class c when the row length
  equals the class count);
- ``samples.json``: what was generated (checkpoint, schedule, seed, batch size, N, labels rule, world size);
- ``images/NNNNNN.png`` with ``--save_png true``.

Which images: the plan of :mod:`lit_nat.data.labels` (batch b = samples [bB, (b+1)B), seeded ``seed + b B``, dealt to
rank ``b mod W``), so the file is the same for any number of devices. Under DDP each rank writes its part
(``parts/rank*.npy``), all ranks meet at a barrier, and rank 0 merges the parts by sample index through a memory map
(so rank 0 never holds more than one part in memory) and removes them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torchvision.utils import make_grid, save_image

from lit_nat.data.datamodule import generation_loader
from lit_nat.schedule import GenerationSchedule

NPZ_FILE, GRID_FILE, INFO_FILE, PARTS_DIR, IMAGES_DIR = "samples.npz", "grid.png", "samples.json", "parts", "images"


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Images (B, 1 or 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded to the nearest level."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def write_part(out_dir: Path, rank: int, images: list[np.ndarray], labels: list[np.ndarray], index: list[np.ndarray]):
    """One rank's samples as three ``.npy`` files (memory-mappable for the merge)."""
    parts = out_dir / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    stem = parts / f"rank{rank:05d}"
    empty = np.zeros((0, 0, 0, 3), np.uint8)
    np.save(f"{stem}.images.npy", np.concatenate(images) if images else empty)
    np.save(f"{stem}.labels.npy", np.concatenate(labels) if labels else np.zeros(0, np.int64))
    np.save(f"{stem}.index.npy", np.concatenate(index) if index else np.zeros(0, np.int64))


def merge_parts(out_dir: Path, num_samples: int) -> Path:
    """Merge every ``parts/rank*`` into ``samples.npz`` in sample order; checks each index appears exactly once."""
    stems = sorted(p.name.removesuffix(".index.npy") for p in (out_dir / PARTS_DIR).glob("rank*.index.npy"))
    seen = np.zeros(num_samples, dtype=np.int64)
    shape = None
    for stem in stems:
        index = np.load(out_dir / PARTS_DIR / f"{stem}.index.npy")
        if index.size and (index.min() < 0 or index.max() >= num_samples):
            raise ValueError(f"{stem}: sample indices outside [0, {num_samples})")
        np.add.at(seen, index, 1)
        if index.size:
            shape = np.load(out_dir / PARTS_DIR / f"{stem}.images.npy", mmap_mode="r").shape[1:]
    if shape is None or not (seen == 1).all():
        bad = np.flatnonzero(seen != 1)[:10].tolist()
        raise RuntimeError(f"parts in {out_dir / PARTS_DIR} do not cover each sample exactly once (e.g. {bad})")
    tmp = out_dir / "arr_0.tmp.npy"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(num_samples, *shape))
    labels = np.zeros(num_samples, dtype=np.int64)
    for stem in stems:
        index = np.load(out_dir / PARTS_DIR / f"{stem}.index.npy")
        if not index.size:  # a rank without batches (more ranks than batches)
            continue
        images[index] = np.load(out_dir / PARTS_DIR / f"{stem}.images.npy", mmap_mode="r")
        labels[index] = np.load(out_dir / PARTS_DIR / f"{stem}.labels.npy")
    images.flush()
    path = out_dir / NPZ_FILE
    partial = out_dir / (NPZ_FILE + ".partial.npz")
    np.savez(partial, arr_0=images, arr_1=labels)  # numpy streams the memory map into the zip in chunks
    partial.replace(path)
    del images
    tmp.unlink()
    shutil.rmtree(out_dir / PARTS_DIR)
    return path


def save_grid(images: np.ndarray, path: Path, min_cell: int = 64) -> None:
    """uint8 (n, H, W, 3) -> a square-ish PNG grid; tiny images are upscaled (nearest) to at least ``min_cell``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    scale = max(1, min_cell // x.shape[-1])
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    save_image(make_grid(x, nrow=math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0), path)


class SampleWriter(BasePredictionWriter):
    """Collects ``predict_step`` images per rank, installs the requested schedule, and writes the outputs.

    Args:
        out_dir: output folder.
        num_samples: total number of samples over all ranks (for the merge's completeness check).
        schedule: schedule to install at predict start, after the checkpoint (which carries its own) is restored.
        save_png: also write every image to ``images/NNNNNN.png``.
        grid_samples: images in ``grid.png``.
        info: extra facts for ``samples.json``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        num_samples: int,
        schedule: GenerationSchedule | None = None,
        save_png: bool = False,
        grid_samples: int = 100,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.num_samples = num_samples
        self.schedule = schedule
        self.save_png = save_png
        self.grid_samples = grid_samples
        self.info = dict(info or {})
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._index: list[np.ndarray] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule is not None:
            pl_module.set_schedule(self.schedule)  # validated against the model's token count
        self._images, self._labels, self._index = [], [], []
        if trainer.is_global_zero:
            shutil.rmtree(self.out_dir / PARTS_DIR, ignore_errors=True)  # leftovers of an interrupted run
            self.out_dir.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("lit_nat-sample-start")
        if self.save_png:
            (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "images" not in prediction:
            raise RuntimeError("the model has no tokenizer config, so samples cannot be decoded into images")
        images = to_uint8_hwc(prediction["images"])
        index = batch["index"].cpu().numpy().astype(np.int64)
        self._images.append(images)
        self._labels.append(prediction["label"].cpu().numpy().astype(np.int64))
        self._index.append(index)
        if self.save_png:
            for i, image in zip(index, images):
                Image.fromarray(image).save(self.out_dir / IMAGES_DIR / f"{i:06d}.png")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        write_part(self.out_dir, trainer.global_rank, self._images, self._labels, self._index)
        self._images, self._labels, self._index = [], [], []
        trainer.strategy.barrier("lit_nat-sample-parts")  # every part is on disk before rank 0 merges
        if not trainer.is_global_zero:
            return
        path = merge_parts(self.out_dir, self.num_samples)
        with np.load(path) as data:
            save_grid(data["arr_0"][: self.grid_samples], self.out_dir / GRID_FILE)
            shape = list(data["arr_0"].shape)
        info = {
            **self.info,
            "schedule": pl_module.schedule.to_dict(),
            "arr_0_shape": shape,
            "world_size": trainer.world_size,
        }
        (self.out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        rank_zero_info(f"sample: wrote {path} (arr_0 {shape} uint8, arr_1 labels) and {self.out_dir / GRID_FILE}")


class NATTrainer(L.Trainer):
    """The Lightning Trainer plus ``sample`` and ``search`` (the CLI subcommands of the same names)."""

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
                preset name (heuristic, enat); default: the checkpoint's schedule.
            seed: base seed: batch b is generated with seed + b * batch_size.
            out: output folder.
            save_png: also write each image as out/images/NNNNNN.png.
            grid_samples: number of images in grid.png.
            overwrite: replace an existing out/samples.npz.
        """
        out_dir = Path(out)
        if (out_dir / NPZ_FILE).exists() and not overwrite:
            raise FileExistsError(f"{out_dir / NPZ_FILE} exists; pass --overwrite true or another --out")
        parsed = GenerationSchedule.preset(schedule) if schedule else None  # bad files fail before any work
        num_classes = int(model.hparams.num_classes)
        if labels is not None:
            bad = [v for v in labels if not 0 <= int(v) <= num_classes]
            if bad or not labels:
                raise ValueError(
                    f"labels must be non-empty and in [0, {num_classes}] ({num_classes} = null), got {bad}"
                )
        if ckpt_path is None:
            rank_zero_warn("sample: no --ckpt_path; sampling from the model's initial (untrained) weights")
        loader = generation_loader(num_samples, batch_size, seed, num_classes=num_classes, labels=labels)
        info = {
            "checkpoint": ckpt_path,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "seed": seed,
            "labels": labels if labels is not None else f"class-balanced: i mod {num_classes}",
            "schedule_source": schedule or "checkpoint",
        }
        writer = SampleWriter(out_dir, num_samples, parsed, save_png, grid_samples, info)
        self.callbacks.append(writer)
        try:
            self.predict(model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)
        finally:
            self.callbacks.remove(writer)
        return out_dir / NPZ_FILE

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
    ) -> dict[str, Any]:
        """Generation-strategy search (AutoNAT Sec. 4.2, the official ``--mode search``) on a trained checkpoint.

        Projected momentum SGD on the schedule with forward-difference gradients of the FID of the config's
        GenerativeEvaluation callback (common random numbers). Writes out/search_{k}.yaml, out/stp_{k}.yaml
        (official format), out/best.yaml and out/state.json after every update; running the same command again
        resumes from out/state.json. See :mod:`lit_nat.search.standalone`.

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
        """
        from lit_nat.search.standalone import run_search

        return run_search(self, model, datamodule, ckpt_path, updates, schedule, num_samples, momentum, ratio_step,
                          ratio_lr, other_step, other_lr, out)  # fmt: skip
