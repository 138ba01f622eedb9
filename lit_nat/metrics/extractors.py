"""Pluggable feature extractors for FID/IS, built from a local weights file or, for Inception, torch.hub's cache.

Every extractor maps images ``(B, C, H, W)`` float in [0, 1] to ``(features (B, D), logits (B, K) or None)`` in float32
and declares ``num_features``, ``num_logits`` (None: no Inception Score), ``metric_prefix`` (logged names are
``val/<prefix>fid`` and ``val/<prefix>is``) and
``identity`` (recorded in reference ``.npz`` files so statistics are only compared with the features they describe).

Built in (:data:`EXTRACTORS`; add one with :func:`register_extractor`):

- ``inception``: the FID Inception v3 (TF 2015-12-05 graph, 2048-d pool features, 1008 logits) with the weights of
  torch-fidelity (``weights-inception-2015-12-05-6726825d.pth``, the file torchmetrics downloads) or of pytorch-fid
  (``pt_inception-2015-12-05-6726825d.pth``, the file of the official AutoNAT/ENAT code): both are torchvision-layout
  state dicts with the same keys (``module.`` prefixes and ``AuxLogits.*`` are dropped). Without ``weights_path``,
  torch-fidelity's file comes from torch.hub's cache (``$TORCH_HOME/hub/checkpoints/``), where torch-fidelity and
  torchmetrics keep it too, downloaded there by ``torch.hub`` when missing (:func:`inception_weights`). Protocols:
  ``official`` (default; the AutoNAT/ENAT evaluation): float images, bilinear resize to 299 without antialias
  (align_corners=False), then ``2x - 1``. ``torch-fidelity``: images rounded to uint8 levels, TF1-style bilinear
  resize, ``(x - 128) / 128``: the features of torch-fidelity and of torchmetrics with ``antialias=False``.
- ``digits``: the small digits classifier trained at data preparation (:mod:`lit_nat.metrics.digits`); "digits-FID".
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_nat.core.assets import resolve
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.metrics.digits import IMAGE_SIZE as DIGITS_SIZE
from lit_nat.metrics.digits import load_digits_classifier

INCEPTION_FILES = (
    "weights-inception-2015-12-05-6726825d.pth (torch-fidelity, "
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)",
    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid, "
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)",
)


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images)`` -> ``(features, logits or None)``; always in eval mode, no gradients."""

    name = "base"
    num_features: int
    num_logits: int | None = None
    metric_prefix = ""

    @property
    def identity(self) -> str:
        """What the features depend on (network + preprocessing); stored in and checked against reference files."""
        return self.name

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # batch norm statistics are part of the metric's definition


@contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Float32 feature extraction: no autocast (bf16-mixed training), no TF32 in convolutions or matmuls.

    TF32 (on by default for cuDNN convolutions on Ampere+) changes Inception features in the 3rd-4th digit and makes
    them depend on the batch size; FID statistics should not.
    """
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with (
            torch.autocast(device_type, enabled=False),
            torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False),
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


#: extractor name -> factory(weights_path, **options)
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Decorator: make ``factory(weights_path, **options)`` available as extractor ``name``."""

    def wrap(factory: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        EXTRACTORS[name] = factory
        return factory

    return wrap


def build_extractor(name: str, weights_path: str | os.PathLike | None = None, **options: Any) -> FeatureExtractor:
    """Build the registered extractor ``name`` from its local weights file, frozen and in eval mode."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; registered ones are {sorted(EXTRACTORS)}")
    # Layers are randomly initialised before the weights are loaded: keep that off the global RNG, so adding an
    # evaluation callback does not change the training run's random draws.
    with torch.random.fork_rng(devices=[]):
        extractor = EXTRACTORS[name](weights_path, **options)
    return extractor.requires_grad_(False).eval()


# ----------------------------------------------------------------------------------------------------------------------
# Inception v3 (FID)
_INCEPTION_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)  # fmt: skip
PROTOCOLS = ("official", "torch-fidelity")


#: the first hex digits of the sha256 of torch-fidelity's file, as its name carries them (torch.hub's convention)
INCEPTION_SHA256_PREFIX = "6726825d"


def inception_weights() -> Path:
    """torch-fidelity's Inception weights from torch.hub's cache (``$TORCH_HOME/hub/checkpoints/``, the file and place
    torch-fidelity's own ``load_state_dict_from_url`` uses), downloaded there by torch.hub when missing and checked
    against the sha256 prefix of its name; offline with an empty cache, one line naming the URL and the place."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return resolve(f"{URL_INCEPTION_V3}#sha256={INCEPTION_SHA256_PREFIX}", "the FID Inception weights", "weights_path",
                   kinds=("url",))  # fmt: skip


def load_inception_state_dict(path: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """Read FID Inception weights (torch-fidelity or pytorch-fid file) safely (``weights_only``), keys normalised;
    ``None``: torch-fidelity's file from torch.hub's cache (:func:`inception_weights`)."""
    path = inception_weights() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights {path} do not exist. Expected one of: {'; '.join(INCEPTION_FILES)}. "
            "Download it once on a machine with internet access and point weights_path at it."
        )
    state = read_checkpoint(path, legacy_format=True)  # CRCs checked; a damaged or pickled file is one line
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith("AuxLogits."):  # torchvision's auxiliary head, unused by FID
            out[key] = value
    return out


class InceptionV3Extractor(FeatureExtractor):
    """The FID Inception v3: 2048-d pool features and 1008 unbiased logits (for IS, as in the original IS code).

    Args:
        weights_path: local weights file (torch-fidelity's or pytorch-fid's 2015-12-05 conversion); None:
            torch-fidelity's, from torch.hub's cache (:func:`inception_weights`).
        protocol: ``official`` (float, bilinear without antialias, 2x-1) or ``torch-fidelity`` (uint8 levels,
            TF1 bilinear, (x-128)/128).
    """

    name = "inception"
    num_features = 2048
    num_logits = 1008
    SIZE = 299

    def __init__(self, weights_path: str | os.PathLike | None, protocol: str = "official") -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"inception: unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights_path = inception_weights() if weights_path is None else weights_path
        state = load_inception_state_dict(weights_path)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # torch-fidelity's constructor loads from a path or file object, strictly
        buffer.seek(0)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer
            )
        except RuntimeError as err:
            raise ValueError(f"{weights_path}: not FID Inception v3 weights: {err}") from None
        self.protocol = protocol
        self.weights_path = str(weights_path)

    @property
    def identity(self) -> str:
        return f"inception-v3-2015-12-05/{self.protocol}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> the network's (B, 3, 299, 299) input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"inception: expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
        x = images.float().expand(-1, 3, -1, -1)  # grey -> RGB
        size = (self.SIZE, self.SIZE)
        if self.protocol == "official":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
            return 2 * x - 1
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = torch.round(x.clamp(0, 1) * 255)  # what a uint8 image holds
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=size, align_corners=False)
        return (x - 128) / 128

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images)
        for block in _INCEPTION_BLOCKS:
            x = getattr(self.net, block)(x)
        features = torch.flatten(x, 1)
        logits = features @ self.net.fc.weight.T  # "logits_unbiased": no bias, as the original IS code
        return features.float(), logits.float()


@register_extractor("inception")
def _inception(weights_path: str | os.PathLike | None, protocol: str = "official") -> FeatureExtractor:
    return InceptionV3Extractor(weights_path, protocol=protocol)


# ----------------------------------------------------------------------------------------------------------------------
# Digits classifier (demo)
class DigitsExtractor(FeatureExtractor):
    """Features (64-d) and logits (10) of the digits classifier; colour images are averaged to grey, other sizes are
    resized to 8x8 (bilinear, no antialias).

    Args:
        weights_path: the classifier written by the digits preparation (``<data root>/digits_classifier.pt``).
    """

    name = "digits"
    metric_prefix = "digits_"  # digits-FID is not ImageNet FID: never logged under the same name

    def __init__(self, weights_path: str | os.PathLike | None) -> None:
        super().__init__()
        if weights_path is None:
            raise ValueError("the digits extractor needs weights_path (<data root>/digits_classifier.pt)")
        self.classifier = load_digits_classifier(weights_path)
        self.num_features = self.classifier.feature_dim
        self.num_logits = self.classifier.num_classes
        self.weights_path = str(weights_path)

    @property
    def identity(self) -> str:
        return f"digits-classifier/{self.num_features}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4:
            raise ValueError(f"digits: expected images (B, C, H, W), got {tuple(images.shape)}")
        x = images.float().mean(dim=1, keepdim=True)
        if tuple(x.shape[-2:]) != (DIGITS_SIZE, DIGITS_SIZE):
            x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
        features, logits = self.classifier(x)
        return features.float(), logits.float()


@register_extractor("digits")
def _digits(weights_path: str | os.PathLike | None) -> FeatureExtractor:
    return DigitsExtractor(weights_path)
