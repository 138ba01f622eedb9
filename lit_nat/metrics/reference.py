"""Reference statistics for FID: ``.npz`` files with ``mu`` (D,) and ``sigma`` (D, D), read, checked, computed, cached.

The format is that of the ADM / U-ViT / pytorch-fid reference files (``fid_stats_imagenet256_guided_diffusion.npz``,
``VIRTUAL_imagenet256_labeled.npz``: other keys such as ``arr_0``, ``mu_s``, ``sigma_s`` are ignored). Files written
here add provenance keys (``extractor``, ``num_samples``, ``source``) so that statistics of one extractor are never
compared with features of another: :func:`load_reference_stats` checks ``extractor`` when the file records it.

Computing statistics runs a :class:`~lit_nat.metrics.fid.FeatureStatistics` over the images of a real source, so under
DDP each rank reads its part of the data and the sums are all-gathered (every rank gets the same ``mu``, ``sigma``).
Sources: a token-shard split decoded with its tokenizer (:func:`shard_images`), or an image folder
(:func:`folder_images`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nat.core.io import atomic_write
from lit_nat.core.progress import progress
from lit_nat.data.dataset import TokenShardDataset
from lit_nat.data.imagefolder import center_crop_arr
from lit_nat.data.shards import read_metadata
from lit_nat.metrics.extractors import build_extractor, full_precision
from lit_nat.metrics.fid import FeatureStatistics
from lit_nat.tokenizers import tokenizer_from_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ReferenceStats:
    """Reference mean ``mu`` (D,) and covariance ``sigma`` (D, D) in float64, with where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.mu.shape[0])


def load_reference_stats(
    path: str | os.PathLike, num_features: int | None = None, extractor: str | None = None
) -> ReferenceStats:
    """Read and check an ``.npz`` of reference statistics.

    Args:
        path: the ``.npz`` file (keys ``mu`` and ``sigma``; extra keys are kept in ``meta`` or ignored).
        num_features: the feature size of the extractor that will be compared with it (checked if given).
        extractor: the extractor's name; if the file records one (``extractor`` key) they must agree.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an ``.npz``, a missing key, a wrong shape, non-finite values or another extractor; the message
            names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference statistics file {path} does not exist; expected an .npz with 'mu' (D,) and 'sigma' (D, D), "
            "e.g. the ADM/U-ViT fid_stats file, or one written by `python -m lit_nat reference-stats`"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an .npz with 'mu' and 'sigma'")
    with data:
        keys = set(data.files)
        missing = [k for k in ("mu", "sigma") if k not in keys]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; it has {sorted(keys)}, expected 'mu' and 'sigma'")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        meta = {k: data[k].item() for k in ("extractor", "num_samples", "source") if k in keys}
    if mu.ndim != 1:
        raise ValueError(f"{path}: 'mu' must be 1-D (D,), got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: 'sigma' must be (D, D) = {(mu.shape[0],) * 2} to match 'mu', got {sigma.shape}")
    for key, value in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(value).all():
            raise ValueError(f"{path}: '{key}' has non-finite values")
    if num_features is not None and mu.shape[0] != num_features:
        raise ValueError(
            f"{path}: statistics have D = {mu.shape[0]} features ('mu' {mu.shape}) but the feature extractor "
            f"{extractor or ''} gives {num_features}; were they computed with another extractor?"
        )
    if extractor is not None and "extractor" in meta and str(meta["extractor"]) != extractor:
        raise ValueError(f"{path}: 'extractor' is {meta['extractor']!r}, but the features come from {extractor!r}")
    return ReferenceStats(mu, sigma, str(path), meta)


def save_reference_stats(
    path: str | os.PathLike, mu: Any, sigma: Any, *, extractor: str, num_samples: int, source: str = ""
) -> Path:
    """Write ``mu``/``sigma`` (float64) with provenance keys, atomically (a reader never sees half a file)."""
    arrays = dict(
        mu=np.asarray(torch.as_tensor(mu).cpu(), dtype=np.float64),
        sigma=np.asarray(torch.as_tensor(sigma).cpu(), dtype=np.float64),
        extractor=np.asarray(extractor),
        num_samples=np.asarray(int(num_samples)),
        source=np.asarray(source),
    )
    return atomic_write(path, lambda f: np.savez(f, **arrays))


@torch.inference_mode()
def compute_reference_stats(
    extractor: torch.nn.Module,
    images: Iterable[torch.Tensor],
    device: torch.device | str = "cpu",
    sync: bool = True,
    total: int | None = None,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features of every batch of ``images`` (B, C, H, W) in [0, 1] -> ``(mu, sigma, n)`` in float64.

    Args:
        extractor: a feature extractor (:mod:`lit_nat.metrics.extractors`), on ``device``.
        images: batches of images; under DDP each rank passes its own part.
        device: where features are computed.
        sync: all-gather the sums over ranks (every rank must then call this); False for a single process's data,
            e.g. inside a data preparation that only one rank runs.
        total: the number of images, for the progress bar's ETA.
        show_progress: show a progress bar (images done, ETA).
    """

    stats = FeatureStatistics(extractor.num_features, sync_on_compute=sync).to(device)
    bar = progress(total, "reference statistics", unit="img", enabled=show_progress)
    with full_precision(torch.device(device).type), bar:  # features in float32: no bf16 autocast, no TF32
        for batch in images:
            stats.update(extractor(batch.to(device).float())[0])
            bar.update(len(batch))
    mu, sigma, n = stats.compute()
    return mu.cpu(), sigma.cpu(), n


def shard_images(
    root: str | os.PathLike,
    split: str,
    tokenizer: Any,
    batch_size: int = 100,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """The images of a token-shard split, decoded with ``tokenizer``; rank ``rank`` of ``world_size`` reads its part
    (every sample exactly once over all ranks: the evaluation plan of :mod:`lit_nat.data.split`)."""

    meta = read_metadata(root)
    if split not in meta.splits:
        raise ValueError(f"{Path(root) / 'meta.json'} has no split {split!r} (it has {sorted(meta.splits)})")
    info = meta.splits[split]
    dataset = TokenShardDataset(
        root,
        [s.name for s in info.shards],
        info.shard_sizes,
        batch_size=batch_size,
        mode="eval",
        rank=rank,
        world_size=world_size,
        shuffle=False,
    )
    tokenizer = tokenizer.to(device)
    with torch.inference_mode():
        for batch in dataset:
            yield tokenizer.decode(batch["ids"].to(device)).clamp(0, 1)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images of a folder tree, sorted by path (one error naming a missing or image-less folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def folder_images(
    folder: str | os.PathLike, batch_size: int = 100, rank: int = 0, world_size: int = 1, resolution: int | None = None,
    files: list[Path] | None = None,
) -> Iterator[torch.Tensor]:
    """RGB images of a folder (sorted by name; image i goes to rank i mod world_size) as float batches in [0, 1].

    With ``resolution`` every image is first centre-cropped to a square of that side with the ADM crop the tokenizers'
    data went through (COCO's FID protocol: val2014 at 256). Otherwise images are used at their size (the extractor
    resizes) and within a batch they must all have the same size.
    """
    from PIL import Image

    mine = (files if files is not None else image_files(folder))[rank::world_size]  # files: listed by the caller
    for start in range(0, len(mine), batch_size):
        opened = [Image.open(p).convert("RGB") for p in mine[start : start + batch_size]]
        arrays = [center_crop_arr(im, resolution) if resolution else np.asarray(im) for im in opened]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{folder}: images of different sizes {sorted(shapes)} in one batch; resize them first")
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def write_reference_stats(
    out: str,
    extractor: str = "inception",
    weights_path: str | None = None,
    protocol: str | None = None,
    data_root: str | None = None,
    split: str = "train",
    image_folder: str | None = None,
    batch_size: int = 100,
    device: str = "auto",
    overwrite: bool = False,
    resolution: int | None = None,
) -> Path:
    """Compute FID reference statistics (mu, sigma) of real images once and write them as an .npz.

    Args:
        out: the .npz to write (keys mu, sigma, extractor, num_samples, source).
        extractor: registered feature extractor (inception, digits).
        weights_path: its local weights file.
        protocol: inception preprocessing (official, torch-fidelity); default official.
        data_root: token shards (meta.json) whose split is decoded with the data's tokenizer.
        split: split of data_root.
        image_folder: a folder of images instead of data_root (used at their size; the extractor resizes).
        batch_size: images per feature batch.
        device: cpu, cuda, or auto.
        overwrite: replace an existing out file.
        resolution: with image_folder, centre-crop every image to this side first (the ADM crop of tokenisation;
            e.g. 256 for COCO's FID-30K protocol on val2014).
    """

    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it")
    if (data_root is None) == (image_folder is None):
        raise ValueError("give exactly one source: --data_root (token shards) or --image_folder")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {"protocol": protocol} if protocol else {}
    net = build_extractor(extractor, weights_path, **options).to(device)
    if data_root is not None:
        meta = read_metadata(data_root)
        tokenizer = tokenizer_from_config(meta.tokenizer)
        images, source = shard_images(data_root, split, tokenizer, batch_size, device=device), f"{data_root}/{split}"
        total = meta.splits[split].num_samples if split in meta.splits else None
    else:
        files = image_files(image_folder)  # listed once: for the images and for the bar's total
        images, source = folder_images(image_folder, batch_size, resolution=resolution, files=files), str(image_folder)
        total = len(files)
        if resolution:
            source += f", centre-cropped to {resolution}"
    mu, sigma, n = compute_reference_stats(net, images, device, sync=False, total=total, show_progress=True)
    save_reference_stats(path, mu, sigma, extractor=net.identity, num_samples=n, source=f"{source} ({n} images)")
    print(f"reference-stats: wrote {path} (D = {mu.shape[0]}, {n} images, extractor {net.identity})")
    return path
