"""The digits demo data: scikit-learn's 1,797 real 8x8 grey digits, tokenised losslessly, as train/val shards.

The images ship inside scikit-learn (no download). Their 17 grey levels 0..16 become ids 0..16 of
``PixelTokenizer(levels=17, image_size=8)``, one token per pixel, so decoding the shards gives the images back exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lit_nat.data.shards import META_FILE, DatasetMeta, ShardWriter, read_metadata, write_metadata
from lit_nat.tokenizers import PixelTokenizer

NUM_CLASSES = 10


def stratified_split(labels: np.ndarray, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``val_per_class`` random samples of each class to val; both parts shuffled."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if not 0 < val_per_class < len(idx):
            raise ValueError(
                f"val_per_class must be in [1, {len(idx) - 1}] (class {c} has {len(idx)}), got {val_per_class}"
            )
        n_val = val_per_class
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    # shuffled so every shard mixes all classes
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def prepare_digits(
    root: str | os.PathLike,
    val_per_class: int = 18,
    seed: int = 0,
    samples_per_shard: int = 128,
    overwrite: bool = False,
) -> DatasetMeta:
    """Tokenise scikit-learn's digits into ``<root>``: ``train`` and ``val`` shards plus ``meta.json``.

    With the defaults: 1,617 train samples in 13 shards and 180 val samples (18 per class, ~10%) in 2 shards. Each
    sample's key is its index in ``sklearn.datasets.load_digits()`` (``"0042"``). ``meta.json`` is written once,
    after both splits, so its presence means the data is complete.

    Args:
        root: the data root to create.
        val_per_class: samples of each class held out for validation (a balanced val set for class-conditional FID).
        seed: seed of the split and of the sample order.
        samples_per_shard: samples per tar; small, so there are enough shards for ranks x workers to split.
        overwrite: replace an existing preparation in ``root``.

    Returns:
        The metadata written.
    """
    from sklearn.datasets import load_digits  # imported here: scikit-learn is only needed to prepare

    root = Path(root)
    if (root / META_FILE).exists() and not overwrite:
        raise FileExistsError(f"{root / META_FILE} exists: {root} is already prepared; pass overwrite=True to redo it")
    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    tokenizer = PixelTokenizer(levels=17, image_size=8)
    ids = tokenizer.encode(images)  # (1797, 64), exact: grey levels are k/16
    labels = digits.target.astype(np.int64)
    extra = {
        "source": "sklearn.datasets.load_digits",
        "val_per_class": val_per_class,
        "seed": seed,
        "key": "index in load_digits()",
    }
    splits = {}
    for split, indices in zip(("train", "val"), stratified_split(labels, val_per_class, seed)):
        writer = ShardWriter.for_tokenizer(
            root,
            split,
            tokenizer,
            NUM_CLASSES,
            samples_per_shard=samples_per_shard,
            update_metadata=False,
            overwrite=overwrite,
            extra=extra,
        )
        with writer:
            for i in indices:
                writer.write(ids[i], int(labels[i]), key=f"{i:04d}")
        splits[split] = writer.split_info
    meta = DatasetMeta(
        codebook_size=tokenizer.codebook_size,
        grid_size=tokenizer.grid_size,
        num_classes=NUM_CLASSES,
        tokenizer=tokenizer.config(),
        splits=splits,
        extra=extra,
    )
    write_metadata(root, meta)
    return read_metadata(root)
