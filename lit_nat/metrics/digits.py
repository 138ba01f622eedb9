"""A small CNN classifier of 8x8 digits whose penultimate layer gives the features of the demo's "digits-FID".

Trained in a few seconds on CPU during the digits data preparation (:func:`lit_nat.demos.digits.prepare_digits`) on
the *train* split, and saved beside the shards (``digits_classifier.pt``). Its 64-d features and 10 logits play the
roles of Inception's pool features and logits, so digits-FID and digits-IS follow the FID/IS recipes exactly; the
numbers are **not comparable with ImageNet FID/IS** (other network, other data, 10 classes: digits-IS <= 10).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.io import atomic_write

FORMAT = "lit_nat.digits_classifier/1"
IMAGE_SIZE = 8


class DigitsClassifier(nn.Module):
    """conv(1->16) conv(16->32) maxpool -> 512 -> ``feature_dim`` (features, after ReLU) -> 10 logits.

    Args:
        feature_dim: size of the penultimate layer (the FID features).
        num_classes: number of classes.
    """

    def __init__(self, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (IMAGE_SIZE // 2) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grey images ``(B, 1, 8, 8)`` in [0, 1] -> ``(features (B, feature_dim), logits (B, num_classes))``."""
        features = self.body(images)
        return features, self.head(features)


def train_digits_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on ``images`` (N, 1, 8, 8) in [0, 1]; deterministic for a seed.

    Random shifts of up to one pixel augment the 1,617 training digits, so features do not hinge on exact positions
    (generated digits are not perfectly centred). The global RNG is left untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            batch = torch.roll(images[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch)[1], labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images)[1].argmax(dim=1) == labels).float().mean())


def save_digits_classifier(model: DigitsClassifier, path: str | os.PathLike, **info: float | int | str) -> Path:
    """Save weights plus ``info`` (e.g. validation accuracy) atomically."""
    payload = {
        "format": FORMAT,
        "feature_dim": model.feature_dim,
        "num_classes": model.num_classes,
        "state_dict": model.state_dict(),
        "info": dict(info),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_digits_classifier(path: str | os.PathLike) -> DigitsClassifier:
    """Load a classifier written by :func:`save_digits_classifier` (``weights_only``: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights {path} do not exist; they are written by the digits preparation "
            "(`--data.prepare digits`, or `python data/prepare_digits.py`) as <data root>/digits_classifier.pt"
        )
    payload = read_checkpoint(path)  # CRCs checked; a damaged file or one holding Python objects is one line
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a digits classifier file (format {got!r}, expected {FORMAT!r})")
    model = DigitsClassifier(int(payload["feature_dim"]), int(payload["num_classes"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: 'state_dict' does not fit a DigitsClassifier: {err}") from None
    return model.eval()
