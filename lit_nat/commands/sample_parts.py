"""The files of a ``sample`` run: where it writes (:class:`SampleFiles`), the part file of each generated batch, and
the merge of the parts into ``samples.npz`` through a memory map whose blocks are allocated first (never more than one
batch in memory; a full disk is one line, not a SIGBUS)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from lit_nat.core.diskspace import allocate, ensure_space
from lit_nat.core.io import atomic_write
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
