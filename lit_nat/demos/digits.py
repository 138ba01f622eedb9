"""The digits demo: scikit-learn's 1,797 real 8x8 grey digits, tokenised losslessly, as train/val shards.

The images ship inside scikit-learn (no download). Their 17 grey levels 0..16 become ids 0..16 of
``PixelTokenizer(levels=17, image_size=8)``, one token per pixel, so decoding the shards gives the images back exactly.

The preparation also writes what the demo's "digits-FID" needs (:func:`write_digits_evaluation`, a few seconds on
CPU): a small classifier trained on the train split (``digits_classifier.pt``, the feature extractor ``digits``) and
the reference statistics of its features on both splits (``digits_fid_stats_train.npz``, ``digits_fid_stats_val.npz``).
A root prepared before these existed is completed on the next use (:func:`digits_evaluation_missing`).

With ``captions=True`` (the ``digits_text`` preparation of the text-to-image demo) every image also carries captions,
several phrasings of its label (:func:`digit_captions`: ``a handwritten digit seven``, ``the number seven``, ...), and
``meta.json`` names the small ``words`` text encoder over their vocabulary (:data:`TEXT_ENCODER`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nat.data.datamodule import Preparation
from lit_nat.data.dataset import TokenShardDataset
from lit_nat.data.meta import codebook_usage
from lit_nat.data.shards import META_FILE, DatasetMeta, ShardWriter, read_metadata, write_metadata
from lit_nat.metrics.digits import classifier_accuracy, save_digits_classifier, train_digits_classifier
from lit_nat.metrics.extractors import build_extractor
from lit_nat.metrics.fid import ReferenceFID
from lit_nat.metrics.reference import compute_reference_stats, save_reference_stats
from lit_nat.tokenizers import PixelTokenizer

NUM_CLASSES = 10
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {name}",
    "a {name} written by hand",
    "handwritten {numeral}",
    "an image of the digit {name}",
)


def digit_captions(label: int) -> list[str]:
    """Every caption of a digit: one per template, e.g. ``a handwritten digit seven`` ... ``handwritten 7``."""
    return [t.format(name=NAMES[label], numeral=label) for t in CAPTION_TEMPLATES]


def _vocabulary() -> list[str]:
    words = dict.fromkeys(w for label in range(NUM_CLASSES) for c in digit_captions(label) for w in c.split())
    return list(words)


#: the text encoder of the captioned digits: every word of the captions, 32-dim, 8 tokens
TEXT_ENCODER = {"name": "words", "vocab": _vocabulary(), "dim": 32, "max_length": 8, "seed": 0}
CLASSIFIER_FILE = "digits_classifier.pt"
#: split -> reference statistics of the digits classifier's features on that split
REFERENCE_FILES = {"train": "digits_fid_stats_train.npz", "val": "digits_fid_stats_val.npz"}


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
    captions: bool = False,
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
        captions: also write every image's captions (:func:`digit_captions`), for text-to-image.

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
    extra = {"source": "sklearn.datasets.load_digits", "val_per_class": val_per_class, "seed": seed,
             "key": "index in load_digits()"}  # fmt: skip
    splits, arrays, usage = {}, {}, {}
    for split, indices in zip(("train", "val"), stratified_split(labels, val_per_class, seed)):
        arrays[split] = (images[indices], torch.from_numpy(labels[indices]))
        usage[split] = codebook_usage(torch.bincount(ids[indices].reshape(-1), minlength=tokenizer.codebook_size))
        writer = write_split(root, split, tokenizer, ids, labels, indices, samples_per_shard=samples_per_shard,
                             overwrite=overwrite, extra=extra, captions=captions)  # fmt: skip
        splits[split], fields = writer.split_info, writer.fields
    write_digits_evaluation(root, arrays, seed=seed)  # before meta.json: its presence means everything is there
    meta = DatasetMeta(
        codebook_size=tokenizer.codebook_size,
        grid_size=tokenizer.grid_size,
        num_classes=NUM_CLASSES,
        tokenizer=tokenizer.config(),
        splits=splits,
        fields=fields,
        extra=extra,
        text_encoder=TEXT_ENCODER if captions else None,
        codebook_usage=usage,
    )
    write_metadata(root, meta)
    return read_metadata(root)


def write_split(
    root: Path,
    split: str,
    tokenizer: PixelTokenizer,
    ids: torch.Tensor,
    labels: np.ndarray,
    indices: np.ndarray,
    *,
    samples_per_shard: int,
    overwrite: bool,
    extra: dict[str, Any],
    captions: bool,
) -> ShardWriter:
    """Write the samples ``indices`` of the tokenised digits (``ids`` (1797, 64), ``labels`` (1797,)) as the shards of
    ``split``. Each sample's key is its index in ``load_digits()`` (``"0042"``), its captions (with ``captions``) every
    phrasing of its label. Returns the closed writer, whose split info and fields :func:`prepare_digits` puts into
    ``meta.json`` once every split is written."""
    writer = ShardWriter.for_tokenizer(
        root,
        split,
        tokenizer,
        NUM_CLASSES,
        samples_per_shard=samples_per_shard,
        update_metadata=False,
        overwrite=overwrite,
        extra=extra,
        text_encoder=TEXT_ENCODER if captions else None,
    )
    with writer:
        for i in indices:
            text = digit_captions(int(labels[i])) if captions else None
            writer.write(ids[i], int(labels[i]), key=f"{i:04d}", captions=text)
    return writer


# ----------------------------------------------------------------------------------------------------------------------
# digits-FID: the classifier and the reference statistics
def write_digits_evaluation(
    root: str | os.PathLike, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 0
) -> dict[str, float]:
    """Train the digits classifier on ``splits["train"]`` and write it and the reference statistics of every split.

    Args:
        root: the data root.
        splits: split name -> (images (N, 1, 8, 8) in [0, 1], labels (N,)); must hold ``train`` (and ``val``).
        seed: seed of the classifier's initialisation and batches.

    Returns:
        Facts for the record: validation accuracy and the digits-FID of the real val images against the train
        statistics (the value a perfect generator would reach with that many samples).
    """
    root = Path(root)
    train_images, train_labels = splits["train"]
    model = train_digits_classifier(train_images, train_labels, seed=seed)
    info: dict[str, float] = {"train_accuracy": classifier_accuracy(model, train_images, train_labels)}
    if "val" in splits:
        info["val_accuracy"] = classifier_accuracy(model, *splits["val"])
    save_digits_classifier(model, root / CLASSIFIER_FILE, **info)
    extractor = build_extractor("digits", root / CLASSIFIER_FILE)  # the exact pipeline evaluation will use
    stats = {}
    for split, (images, _) in splits.items():
        mu, sigma, n = compute_reference_stats(extractor, images.split(500), sync=False)
        stats[split] = (mu, sigma)
        source = f"{root.name}/{split} ({n} real images)"
        save_reference_stats(
            root / REFERENCE_FILES[split], mu, sigma, extractor=extractor.identity, num_samples=n, source=source
        )
    if "val" in splits:
        fid = ReferenceFID(*stats["train"], sync_on_compute=False)
        with torch.no_grad():
            fid.update(extractor(splits["val"][0])[0])
        info["real_val_fid_vs_train"] = float(fid.compute())
    return info


def digits_evaluation_missing(root: str | os.PathLike) -> bool:
    """Whether a prepared digits root lacks the classifier or a reference statistics file."""
    root = Path(root)
    return not all((root / name).is_file() for name in (CLASSIFIER_FILE, *REFERENCE_FILES.values()))


def complete_digits(root: str | os.PathLike) -> dict[str, float]:
    """Write the digits-FID files into a root prepared without them, from its own shards (ids decode exactly)."""
    root = Path(root)
    meta = read_metadata(root)
    tokenizer = PixelTokenizer(levels=17, image_size=8)
    splits = {}
    for split in ("train", "val"):
        info = meta.splits[split]
        dataset = TokenShardDataset(
            root, [s.name for s in info.shards], info.shard_sizes, batch_size=info.num_samples, mode="eval"
        )
        batch = next(iter(dataset))
        splits[split] = (tokenizer.decode(batch["ids"]), batch["label"])
    return write_digits_evaluation(root, splits, seed=int(meta.extra.get("seed", 0)))


#: ``--data.prepare digits`` / ``digits_text`` (see :data:`lit_nat.data.datamodule.PREPARATIONS`)
DIGITS = Preparation(prepare_digits, digits_evaluation_missing, complete_digits)
DIGITS_TEXT = Preparation(functools.partial(prepare_digits, captions=True), digits_evaluation_missing, complete_digits)
