"""``python -m lit_nat sample``: generate N images on every device of the Trainer and write them for evaluators.

Output under ``--out`` (a folder; or ``--out x.npz``: that file, with ``x.png``, ``x.json`` and ``x.parts/`` beside
it):

- ``samples.npz``: the ADM / DiT layout read by the ADM evaluation suite and torch-fidelity wrappers: ``arr_0`` uint8
  (N, H, W, 3) and ``arr_1`` int64 (N,) labels, in sample order (grey images are repeated to RGB);
- ``grid.png``: the first ``grid_samples`` images (class-balanced labels: column c shows class c when the row length
  equals the class count);
- ``samples.json``: what was generated (checkpoint, schedule and the masked counts it gives, seed, batch size, N, labels
  rule, world size);
- ``images/NNNNNN.png`` with ``--save_png true``.

Which images: the plan of :mod:`lit_nat.data.labels` (batch b = samples [bB, (b+1)B), seeded ``seed + b B``), so the
file is the same for any number of devices. Every generated batch is written at once to ``parts/batch_NNNNNN.npz``
(atomically, by the rank that made it); a run that is killed or stopped (SIGTERM stops it after the current batch)
keeps them, and the same command resumes with the batches still missing (``parts/plan.json`` records what the parts
depend on, the sampled weights by content included, and a resume with anything else is refused). At the end rank 0
merges the parts by sample index through a memory map (never more than one batch in memory) and removes them.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torchvision.utils import make_grid

from lit_nat.callbacks.reliability import raise_if_stopped
from lit_nat.core.checkpointing import weights_digest
from lit_nat.data.datamodule import generation_loader
from lit_nat.core.diskspace import allocate, ensure_space
from lit_nat.core.errors import UsageError
from lit_nat.core.io import DirectoryLock, atomic_write, atomic_write_json, changed_entries, remove_stale_temps
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.generation.visuals import label_rows, upscale_nearest, write_png

NPZ_FILE, GRID_FILE, INFO_FILE, PARTS_DIR, IMAGES_DIR = "samples.npz", "grid.png", "samples.json", "parts", "images"
PLAN_FILE = "plan.json"


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Images (B, 1 or 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded to the nearest level."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().cpu().numpy()


@dataclass(frozen=True)
class SampleFiles:
    """Where a run writes: ``--out`` a folder (``samples.npz``, ``grid.png``, ``samples.json``, ``parts/`` and
    ``images/`` inside it), or ``--out x.npz``: that file, with ``x.png``, ``x.json``, ``x.parts/`` and ``x.images/``
    beside it."""

    npz: Path
    grid: Path
    info: Path
    parts: Path
    images: Path
    folder: Path  # the folder the run locks

    @classmethod
    def at(cls, out: str | Path | SampleFiles) -> SampleFiles:
        if isinstance(out, SampleFiles):
            return out
        out = Path(out)
        if out.suffix == ".npz":
            stem = out.with_suffix("")
            return cls(out, stem.with_suffix(".png"), stem.with_suffix(".json"), Path(f"{stem}.parts"),
                       Path(f"{stem}.images"), out.parent)  # fmt: skip
        return cls(out / NPZ_FILE, out / GRID_FILE, out / INFO_FILE, out / PARTS_DIR, out / IMAGES_DIR, out)


def part_path(out: str | Path | SampleFiles, batch: int) -> Path:
    return SampleFiles.at(out).parts / f"batch_{batch:06d}.npz"


def write_part(out: str | Path | SampleFiles, batch: int, images: np.ndarray, labels: np.ndarray,
               index: np.ndarray) -> Path:  # fmt: skip
    """One generated batch, atomically: a part file is whole or absent, so a resumed run can trust it."""
    return atomic_write(part_path(out, batch), lambda f: np.savez(f, images=images, labels=labels, index=index))


def done_batches(out: str | Path | SampleFiles) -> set[int]:
    """The batch numbers whose part file is complete."""
    return {int(p.stem.split("_")[1]) for p in SampleFiles.at(out).parts.glob("batch_*.npz")}


@dataclass(frozen=True)
class MergedSamples:
    """What :func:`merge_parts` wrote: the ``.npz``, the shape of ``arr_0`` and its first images (for the grid)."""

    path: Path
    shape: tuple[int, ...]
    first: np.ndarray


def merge_parts(out: str | Path | SampleFiles, num_samples: int, keep_first: int = 0) -> MergedSamples:
    """Merge every ``parts/batch_*.npz`` into ``samples.npz`` in sample order, each index exactly once; each part is
    read once, into a memory map, so never more than one batch is in memory (plus the ``keep_first`` images)."""
    files = SampleFiles.at(out)
    parts = sorted(files.parts.glob("batch_*.npz"))
    seen = np.zeros(num_samples, dtype=np.int64)
    tmp, images, labels = files.parts / "arr_0.npy", None, np.zeros(num_samples, dtype=np.int64)
    for part in parts:
        with np.load(part) as data:
            index = data["index"]
            if index.size and (index.min() < 0 or index.max() >= num_samples):
                raise ValueError(f"{part}: sample indices outside [0, {num_samples})")
            np.add.at(seen, index, 1)
            if not index.size:
                continue
            batch = data["images"]
            if images is None:
                images = merge_buffer(tmp, (num_samples, *batch.shape[1:]), files.npz)
            images[index], labels[index] = batch, data["labels"]
    if images is None or not (seen == 1).all():
        bad = np.flatnonzero(seen != 1)[:10].tolist()
        raise RuntimeError(f"parts in {files.parts} do not cover each sample exactly once (e.g. {bad})")
    images.flush()
    try:  # numpy streams the memory map into the zip in chunks
        path = atomic_write(files.npz, lambda f: np.savez(f, arr_0=images, arr_1=labels),
                            reserve=images.nbytes + labels.nbytes)  # fmt: skip
    except BaseException:
        tmp.unlink(missing_ok=True)  # (a full disk: give its space back; the rerun merges the parts again)
        raise
    merged = MergedSamples(path, tuple(images.shape), np.array(images[:keep_first]))
    shutil.rmtree(files.parts)  # (the memory map's file may vanish while mapped: POSIX keeps it until unmapped)
    return merged


def merge_buffer(path: Path, shape: tuple[int, ...], npz: Path) -> np.ndarray:
    """The uint8 memory map the parts are merged into, its blocks allocated first: a write into a memory map that meets
    a full disk is a SIGBUS that kills the process. Space for the ``.npz`` that follows is checked now too, so a disk
    that cannot hold both is one line before any work."""
    nbytes = math.prod(shape)
    ensure_space(path.parent, 2 * nbytes, npz)
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        allocate(path, images.offset + nbytes, named=npz)
    except BaseException:
        del images
        path.unlink(missing_ok=True)
        raise
    return images


def save_grid(images: np.ndarray, path: Path, min_cell: int = 64, prompts: list[str] | None = None) -> None:
    """uint8 (n, H, W, 3) -> a square-ish PNG grid; tiny images are upscaled (nearest) to at least ``min_cell``.

    With ``prompts`` (sample i made from prompt i mod P), one row per prompt, labelled with it: row p shows the
    samples p, p + P, p + 2P, ... of the first ``n``."""
    x = upscale_nearest(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255, min_cell)
    if not prompts:
        grid = make_grid(x, nrow=math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)
    else:
        rows = min(len(prompts), len(x))
        cols = max(1, len(x) // rows)
        order = [p + k * len(prompts) for p in range(rows) for k in range(cols) if p + k * len(prompts) < len(x)]
        grid = label_rows(make_grid(x[order], nrow=cols, padding=2, pad_value=1.0), prompts, rows)
    write_png(grid, path)


class SampleWriter(BasePredictionWriter):
    """Writes every generated batch as a part file, checks a resumed run's parts, and merges them at the end.

    Args:
        out: output folder, or the ``.npz`` to write (see :class:`SampleFiles`).
        num_samples: total number of samples over all ranks (for the merge's completeness check).
        batch_size: images per generation batch (batch b starts at sample b * batch_size).
        settings: what the parts depend on besides the weights and the schedule (N, batch size, seed, labels).
        schedule: schedule to install at predict start, after the checkpoint (which carries its own) is restored.
        save_png: also write every image to ``images/NNNNNN.png``.
        grid_samples: images in ``grid.png``.
        info: extra facts for ``samples.json``.
    """

    def __init__(
        self,
        out: str | Path | SampleFiles,
        num_samples: int,
        batch_size: int,
        settings: dict[str, Any],
        schedule: GenerationSchedule | None = None,
        save_png: bool = False,
        grid_samples: int = 100,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.files = SampleFiles.at(out)
        self.num_samples, self.batch_size, self.settings = num_samples, batch_size, dict(settings)
        self.schedule = schedule
        self.save_png = save_png
        self.grid_samples = grid_samples
        self.info = dict(info or {})

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule is not None:
            pl_module.set_schedule(self.schedule)  # validated against the model's token count
        plan = {**self.settings, "schedule": pl_module.schedule.to_dict(),
                "weights": weights_digest(pl_module.ema_backbone.state_dict())}  # fmt: skip
        path = self.files.parts / PLAN_FILE
        trainer.strategy.barrier("lit_nat-sample-check")
        if path.exists():  # every rank reads the same file and raises together
            check_parts_plan(path, plan)
        trainer.strategy.barrier("lit_nat-sample-start")
        if trainer.is_global_zero and not path.exists():
            atomic_write_json(path, plan)
        if self.save_png:
            self.files.images.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.files.images, "*.png")  # one listing here, not one per image written

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
        labels = prediction["label"].cpu().numpy().astype(np.int64)
        if self.save_png:
            for i, image in zip(index, images):
                atomic_write(self.files.images / f"{i:06d}.png", lambda f, im=image: Image.fromarray(im).save(
                    f, format="PNG"), sweep=False)  # fmt: skip
        write_part(self.files, int(index[0]) // self.batch_size, images, labels, index)
        # SIGTERM: stop after this batch, whose part is on disk (per rank: ranks may hold one batch more than others)
        raise_if_stopped(trainer, synced=False)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("lit_nat-sample-parts")  # every part is on disk before rank 0 merges
        if not trainer.is_global_zero:
            return
        merged = merge_parts(self.files, self.num_samples, keep_first=self.grid_samples)
        prompts, path, shape = self.settings.get("prompts"), merged.path, list(merged.shape)
        save_grid(merged.first, self.files.grid, prompts=prompts)
        schedule: GenerationSchedule = pl_module.schedule
        info = {
            **self.info,
            "schedule": schedule.to_dict(),
            "masked_counts": schedule.masked_counts(pl_module.num_tokens),  # what the loop did with the ratios
            "arr_0_shape": shape,
            "world_size": trainer.world_size,
        }
        if prompts:
            info["image_prompts"] = [prompts[i % len(prompts)] for i in range(self.num_samples)]
        atomic_write_json(self.files.info, info)
        rank_zero_info(f"sample: wrote {path} (arr_0 {shape} uint8, arr_1 labels) and {self.files.grid}")


def read_prompts(prompts: list[str] | None, prompts_file: str | None, model: Any, labels: Any) -> list[str] | None:
    """The prompts of a ``sample`` run (``--prompts`` or ``--prompts_file``), checked against the model's condition."""
    if prompts is not None and prompts_file is not None:
        raise UsageError("give --prompts or --prompts_file, not both")
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UsageError(f"{path}: no such prompts file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:  # (its own message names no file)
            raise UsageError(f"{path}: the prompts file is not UTF-8 text (byte {err.start}: {err.reason}); save it "
                             "as UTF-8, one prompt per line") from None  # fmt: skip
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UsageError(f"{path}: the prompts file holds no prompt (one per line)")
    is_text = model.conditioner.is_text
    if prompts is not None and not is_text:
        raise UsageError("this model is class-conditional (no text encoder): pass --labels, not --prompts")
    if is_text and prompts is None:
        raise UsageError("this model is text-conditioned: pass --prompts \"a red bus\" ... or --prompts_file FILE")
    if is_text and labels is not None:
        raise UsageError("this model is text-conditioned: --labels do not apply, pass --prompts")
    if prompts is not None and not prompts:
        raise UsageError("--prompts is empty")
    return None if prompts is None else [str(p) for p in prompts]


def check_parts_plan(path: Path, plan: dict[str, Any]) -> None:
    """The parts of an interrupted run may be resumed only by the same generation (settings, schedule, weights)."""
    changed = sorted(changed_entries(json.loads(path.read_text()), plan))
    if changed:
        raise UsageError(
            f"{path.parent}: parts of an interrupted run with other {', '.join(changed)}; rerun it as it was to "
            "resume, or pass --overwrite true (or another --out) to start again"
        )


@dataclass(frozen=True)
class SampleRequest:
    """What a ``sample`` run is asked for (the options of :meth:`NATTrainer.sample
    <lit_nat.training.trainer.NATTrainer.sample>`, which documents each)."""

    num_samples: int = 50_000
    batch_size: int = 100
    labels: list[int] | None = None
    schedule: str | None = None
    seed: int = 0
    out: str = "samples"
    save_png: bool = False
    grid_samples: int = 100
    overwrite: bool = False
    prompts: list[str] | None = None
    prompts_file: str | None = None


def run_sample(trainer: L.Trainer, model: L.LightningModule, ckpt_path: str | None, request: SampleRequest) -> Path:
    """The body of :meth:`NATTrainer.sample <lit_nat.training.trainer.NATTrainer.sample>` (see its documentation)."""
    files, labels = SampleFiles.at(request.out), request.labels
    if files.npz.exists() and not request.overwrite:
        raise FileExistsError(f"{files.npz} exists; pass --overwrite true or another --out")
    parsed = GenerationSchedule.preset(request.schedule) if request.schedule else None  # bad files fail before work
    num_classes = int(model.hparams.num_classes)
    if labels is not None:
        bad = [v for v in labels if not 0 <= int(v) <= num_classes]
        if bad or not labels:
            raise ValueError(f"labels must be non-empty and in [0, {num_classes}] ({num_classes} = null), got {bad}")
    prompts = read_prompts(request.prompts, request.prompts_file, model, labels)
    if ckpt_path is None:
        rank_zero_warn("sample: no --ckpt_path; sampling from the model's initial (untrained) weights")
    settings = {"num_samples": request.num_samples, "batch_size": request.batch_size, "seed": request.seed,
                "labels": labels if labels is not None else f"class-balanced: i mod {num_classes}"}  # fmt: skip
    if prompts is not None:
        settings = {**settings, "labels": None, "prompts": prompts}
    info = {"checkpoint": ckpt_path, **settings, "schedule_source": request.schedule or "checkpoint"}
    # one live sample per output folder (rank 0 writes it); released at the end or when the process dies
    lock = DirectoryLock(files.folder, "lit_nat sample").acquire() if trainer.is_global_zero else None
    try:
        if request.overwrite and trainer.is_global_zero:  # (before predict starts, so before any rank writes a part)
            shutil.rmtree(files.parts, ignore_errors=True)
        done = set() if request.overwrite else done_batches(files)
        if done:
            rank_zero_info(f"sample: resuming: {len(done)} batches already in {files.parts}")
        loader = generation_loader(request.num_samples, request.batch_size, request.seed, num_classes=num_classes,
                                   labels=labels, skip=done, prompts=prompts)  # fmt: skip
        writer = SampleWriter(files, request.num_samples, request.batch_size, settings, parsed, request.save_png,
                              request.grid_samples, info)  # fmt: skip
        trainer.callbacks.append(writer)
        try:
            trainer.predict(model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)
        finally:
            trainer.callbacks.remove(writer)
    finally:
        if lock is not None:
            lock.release()
    return files.npz
