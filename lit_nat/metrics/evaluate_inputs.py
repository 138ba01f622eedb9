"""The two sides of ``python -m lit_nat evaluate``: one pass of the extractor over a source of images (float64 sums,
Inception Scores, optionally the features), and the reference (statistics from a file, or computed from images).

The pass is validation's: float batches in [0, 1] at their stored size go to the extractor inside
:func:`~lit_nat.metrics.extractors.full_precision` and under ``torch.inference_mode``, and the features are summed by
:class:`~lit_nat.metrics.fid.FeatureStatistics` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_nat.core.io import file_sha256
from lit_nat.core.progress import progress
from lit_nat.metrics.extractors import FeatureExtractor, full_precision
from lit_nat.metrics.fid import FeatureStatistics, InceptionScore
from lit_nat.metrics.image_sources import ADM_LAYOUT, ImageSource, npz_keys, open_folder, open_npz
from lit_nat.metrics.reference import load_reference_stats

#: ADM's evaluator scores consecutive splits of this many images (10 splits of the papers' 50,000)
ADM_SPLIT_SIZE = 5000


@dataclass
class Features:
    """One pass of an extractor over a source: float64 sums, the single-split and per-split Inception Scores, and the
    features themselves when precision/recall needs them."""

    statistics: FeatureStatistics
    inception: InceptionScore | None
    splits: list[InceptionScore]
    features: torch.Tensor | None


def update_splits(splits: list[InceptionScore], logits: torch.Tensor, first: int, split_size: int) -> None:
    """Add the logits of images ``first, first + 1, ...`` to the split each falls in (consecutive runs of
    ``split_size`` images, as ADM's evaluator splits them)."""
    offset = 0
    while offset < len(logits):
        index = (first + offset) // split_size
        if index == len(splits):
            splits.append(InceptionScore(logits.shape[1], sync_on_compute=False).to(logits.device))
        take = min(len(logits) - offset, (index + 1) * split_size - (first + offset))
        splits[index].update(logits[offset : offset + take])
        offset += take


@torch.inference_mode()
def extract(source: ImageSource, extractor: FeatureExtractor, device: torch.device, batch_size: int,
            keep: bool = False, split_size: int = ADM_SPLIT_SIZE, label: str = "samples") -> Features:  # fmt: skip
    """Features of every image of ``source`` (the validation's path: float32, outside autocast and TF32), with a
    progress bar and ETA; ``keep`` also returns the features (for precision/recall)."""
    statistics = FeatureStatistics(extractor.num_features, sync_on_compute=False).to(device)
    single = InceptionScore(extractor.num_logits, sync_on_compute=False).to(device) if extractor.num_logits else None
    splits: list[InceptionScore] = []
    kept: list[torch.Tensor] = []
    done = 0
    with progress(source.num_images, f"{label}: features", unit="img") as bar:
        for batch in source.batches(batch_size):
            with full_precision(device.type):
                features, logits = extractor(batch.to(device).float())
            statistics.update(features)
            if keep:
                kept.append(features)
            if single is not None:
                single.update(logits)
                update_splits(splits, logits, done, split_size)
            done += len(batch)
            bar.update(len(batch))
    return Features(statistics, single, splits, torch.cat(kept) if keep else None)


# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The reference side: ``mu``/``sigma`` (float64) and, where its images are at hand and asked for, their features
    (for precision/recall)."""

    path: Path
    kind: str  # "statistics", "statistics+images" (an ADM reference batch) or "images"
    mu: torch.Tensor
    sigma: torch.Tensor
    num_images: int | None
    image_size: tuple[int, int] | None
    recorded_extractor: str | None
    features: torch.Tensor | None = None
    no_features_reason: str = ""

    def record(self) -> dict[str, Any]:
        """The report's account of the reference: path, sha256 (a file's), kind, size and extractor."""
        return {
            "path": str(self.path),
            "sha256": file_sha256(self.path)[1] if self.path.is_file() else None,
            "kind": self.kind,
            "num_images": self.num_images,
            "image_size": list(self.image_size) if self.image_size else None,
            "extractor": self.recorded_extractor,
        }


def reference_of_images(source: ImageSource, extractor: FeatureExtractor, device: torch.device, batch_size: int,
                        keep: bool) -> Reference:  # fmt: skip
    """Statistics (and, if ``keep``, features) computed from a second set of images."""
    features = extract(source, extractor, device, batch_size, keep=keep, label="reference")
    mu, sigma, n = features.statistics.statistics()
    return Reference(source.path, "images", mu, sigma, n, source.image_size, extractor.identity, features.features)


def reference_of_statistics(path: Path, keys: list[str], extractor: FeatureExtractor, device: torch.device,
                            batch_size: int, keep: bool) -> Reference:  # fmt: skip
    """``mu``/``sigma`` read as validation reads them; an ADM reference batch's ``arr_0`` gives features if ``keep``."""
    stats = load_reference_stats(path, extractor.num_features, extractor.identity)
    images = None
    if "arr_0" in keys:
        try:
            images = open_npz(path)
        except ValueError:  # something else named arr_0 beside the statistics: they still give the FID
            images = None
    mu, sigma = (torch.as_tensor(value, dtype=torch.float64) for value in (stats.mu, stats.sigma))  # as ReferenceFID
    reference = Reference(path, "statistics+images" if images else "statistics", mu, sigma,
                          stats.meta.get("num_samples", images.num_images if images else None),
                          images.image_size if images else None, stats.meta.get("extractor"))  # fmt: skip
    if keep and images is not None:
        reference.features = extract(images, extractor, device, batch_size, keep=True, label="reference").features
    elif keep:
        reference.no_features_reason = (
            f"{path} holds statistics only (mu, sigma), not the real images that precision/recall compares with; "
            "pass an ADM reference batch (with arr_0), an .npz of real images or a folder of them as --reference"
        )
    return reference


def load_reference(path: str | Path, extractor: FeatureExtractor, device: torch.device, batch_size: int,
                   keep_features: bool, resolution: int | None = None) -> Reference:  # fmt: skip
    """Reference statistics (``mu``/``sigma`` in an .npz) or images (ADM-layout .npz, folder) whose statistics are
    computed; a missing path or an .npz with neither is one error naming it."""
    path = Path(path)
    if path.is_dir():
        return reference_of_images(open_folder(path, resolution), extractor, device, batch_size, keep_features)
    if not path.is_file():
        raise FileNotFoundError(f"reference {path} does not exist; expected reference statistics (an .npz with mu and "
                                f"sigma), an .npz in {ADM_LAYOUT}, or a folder of images")  # fmt: skip
    keys = npz_keys(path)
    if "mu" in keys or "sigma" in keys:
        return reference_of_statistics(path, keys, extractor, device, batch_size, keep_features)
    if "arr_0" not in keys:
        raise ValueError(f"{path}: neither 'mu'/'sigma' (reference statistics) nor 'arr_0' (images in ADM's layout); "
                         f"it has {sorted(keys)}")  # fmt: skip
    return reference_of_images(open_npz(path), extractor, device, batch_size, keep_features)
