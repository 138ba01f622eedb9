"""``python -m lit_nat evaluate``: FID, IS, precision and recall of any ADM-layout ``.npz`` or image folder, with the
validation protocol, and a JSON report of the numbers and of the protocol that produced them.

The same code path as :class:`~lit_nat.callbacks.GenerativeEvaluation`: images in [0, 1] at their stored size go to
the same extractor (which resizes them: bilinear to 299 without antialias for the official Inception protocol) in
float32 outside autocast and TF32 (:func:`~lit_nat.metrics.extractors.full_precision`), features are summed in
float64 by :class:`~lit_nat.metrics.fid.FeatureStatistics`, and the distance is
:func:`~lit_nat.metrics.fid.frechet_distance` against the reference's ``mu``/``sigma``, in the order the callback's
``ReferenceFID`` uses. So a ``samples.npz`` of a validation's images gives the FID that validation logged, up to the
uint8 rounding the file applies (none for images at uint8 levels).

Users' most frequent surprise is an FID that differs from a paper's: the report records the sample count, the label
balance, the image size and resize, the extractor and the sha256 of its weights and of the reference file, and lists
the departures from the paper's protocol (fewer samples than ``--paper_samples``, unbalanced labels, another
resolution than the reference images', a non-Inception extractor) as ``warnings``, each also printed as one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nat.core.io import atomic_write_json, file_sha256
from lit_nat.metrics.evaluate_inputs import ADM_SPLIT_SIZE, Features, Reference, extract, load_reference
from lit_nat.metrics.extractors import FeatureExtractor, build_extractor
from lit_nat.metrics.fid import frechet_distance
from lit_nat.metrics.image_sources import ImageSource, open_images
from lit_nat.metrics.precision_recall import NEAREST_K, precision_recall


@dataclass
class EvaluateRequest:
    """What ``python -m lit_nat evaluate`` measures and against what.

    Args:
        samples: the generated images: an .npz in ADM's layout (arr_0 uint8 N x H x W x 3, arr_1 labels optional;
            `python -m lit_nat sample` writes one, so do the official codes) or a folder of images.
        reference: reference statistics (.npz with mu and sigma: ADM/U-ViT files, `reference-stats` output; an ADM
            reference batch with arr_0 images gives precision/recall too), or a second .npz of images or a folder,
            whose statistics are computed here.
        extractor: registered feature extractor (inception; digits for the demo).
        weights_path: its local weights file (inception: None takes torch-fidelity's file through torch.hub's cache).
        protocol: inception preprocessing (official, torch-fidelity); default official, as in validation.
        batch_size: images per feature batch.
        device: cpu, cuda, or auto.
        out: the JSON report (default: beside the samples, <samples>.eval.json).
        paper_samples: the sample count of the table being compared with (AutoNAT/ENAT/ADM: 50000); fewer is
            reported as a departure; null: no such check.
        precision_recall: ADM's improved precision and recall (k = 3 nearest neighbours in the extractor's features);
            needs the reference's images (a samples .npz, a folder, or an ADM reference batch with arr_0).
        resolution: centre-crop the images of a folder to this side first (the ADM crop); .npz images are used as
            stored.
        is_split_size: images per split of the ADM-style Inception Score (ADM: 5000, i.e. 10 splits of 50k).
    """

    samples: str
    reference: str
    extractor: str = "inception"
    weights_path: str | None = None
    protocol: str | None = None
    batch_size: int = 100
    device: str = "auto"
    out: str | None = None
    paper_samples: int | None = 50_000
    precision_recall: bool = True
    resolution: int | None = None
    is_split_size: int = ADM_SPLIT_SIZE


def inception_scores(features: Features, split_size: int) -> dict[str, Any] | None:
    """Both Inception Scores, labelled: ours (one split, what validation logs) and ADM's (mean and std over splits)."""
    if features.inception is None:
        return None
    per_split = [float(metric.compute()) for metric in features.splits]
    return {
        "single_split": float(features.inception.compute()),
        "single_split_is": "one split of all images: what validation logs as val/is",
        "adm_mean": float(np.mean(per_split)),
        "adm_std": float(np.std(per_split)),
        "adm_splits": len(per_split),
        "adm_split_size": split_size,
        "adm_is": f"ADM's evaluator: the mean over consecutive splits of {split_size} images (10 splits of 50k), "
        "the value papers report; usually lower than the single split on the same images",
    }


def balance_of(labels: np.ndarray | None) -> dict[str, Any] | None:
    """Images per label (None without labels); balanced when counts differ by at most one."""
    if labels is None:
        return None
    values, counts = np.unique(labels, return_counts=True)
    return {
        "num_labels": len(values),
        "min_per_label": int(counts.min()),
        "max_per_label": int(counts.max()),
        "balanced": bool(counts.max() - counts.min() <= 1),
        "counts": {str(int(v)): int(c) for v, c in zip(values, counts)},
    }


def departures(request: EvaluateRequest, samples: ImageSource, reference: Reference, extractor: FeatureExtractor,
               balance: dict[str, Any] | None) -> list[str]:  # fmt: skip
    """Where this evaluation departs from the paper's protocol, one sentence each."""
    found, n, paper = [], samples.num_images, request.paper_samples
    if paper and n < paper:
        found.append(f"{n} samples where the paper's table used {paper}: FID falls as the sample count grows, so "
                     f"FID-{count_label(n)} is not comparable with the table's FID-{count_label(paper)}")  # fmt: skip
    if balance is not None and not balance["balanced"]:
        found.append(f"labels are not balanced: {balance['min_per_label']} to {balance['max_per_label']} images per "
                     f"label over {balance['num_labels']} labels; the papers' samples are class-balanced")  # fmt: skip
    if reference.image_size is not None and reference.image_size != samples.image_size:
        found.append(f"samples are {size_text(samples.image_size)} but the reference images are "
                     f"{size_text(reference.image_size)}: the FID then measures the resolution too")  # fmt: skip
    if extractor.name != "inception":
        found.append(f"extractor {extractor.identity}: its FID is not comparable with published (Inception) FIDs")
    return found


def count_label(n: int) -> str:
    """50000 -> '50k', 180 -> '180' (the N of 'FID-N', as validation's report names it)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def resize_text(extractor: FeatureExtractor, samples: ImageSource) -> str:
    """How the images reach the extractor's input."""
    crop = f"centre-cropped to {samples.resolution} (ADM crop), then " if samples.resolution else ""
    protocol = getattr(extractor, "protocol", None)
    if protocol == "official":
        how = "bilinear to 299x299 without antialias, 2x - 1 (official protocol)"
    elif protocol:
        how = f"uint8 levels, TF1 bilinear to 299x299, (x - 128) / 128 ({protocol} protocol)"
    else:
        how = f"resized by the {extractor.name} extractor as in validation"
    return f"{size_text(samples.image_size)} images, {crop}{how}"


def fid_and_precision_recall(request: EvaluateRequest, reference: Reference, features: Features) -> dict[str, Any]:
    """FID (validation's formula and argument order) and, when both sides have features, precision and recall."""
    mu, sigma, _ = features.statistics.statistics()
    fid = float(frechet_distance(reference.mu.to(mu.device), reference.sigma.to(mu.device), mu, sigma))
    out: dict[str, Any] = {"fid": fid, "precision": None, "recall": None, "precision_recall_k": NEAREST_K}
    if not request.precision_recall:
        out["precision_recall_note"] = "not asked for (--precision_recall false)"
    elif reference.features is None:
        out["precision_recall_note"] = reference.no_features_reason
    else:
        out["precision"], out["recall"] = precision_recall(reference.features.to(mu.device), features.features)
    return out


def protocol_record(request: EvaluateRequest, samples: ImageSource, reference: Reference, extractor: FeatureExtractor,
                    device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Everything the numbers depend on besides the images themselves."""
    from lit_nat import __version__

    weights = getattr(extractor, "weights_path", None)
    return {
        "num_samples": samples.num_images,
        "samples": str(samples.path),
        "samples_kind": samples.kind,
        "image_size": list(samples.image_size),
        "label_balance": balance_of(samples.labels),
        "resize": resize_text(extractor, samples),
        "extractor": extractor.identity,
        "extractor_weights": weights,
        "extractor_weights_sha256": file_sha256(weights)[1] if weights and Path(weights).is_file() else None,
        "reference": reference.record(),
        "features": "float32 without autocast or TF32; statistics in float64 (unbiased covariance)",
        "batch_size": request.batch_size,
        "device": str(device),
        "paper_samples": request.paper_samples,
        "lit_nat_version": __version__,
    }


def report_path(request: EvaluateRequest) -> Path:
    if request.out:
        return Path(request.out)
    samples = Path(request.samples)
    return samples.with_suffix(".eval.json") if samples.suffix else samples.parent / f"{samples.name}.eval.json"


def check_request(request: EvaluateRequest) -> None:
    if request.batch_size < 1 or request.is_split_size < 1:
        raise ValueError(f"evaluate: --batch_size and --is_split_size must be >= 1, got {request.batch_size} and "
                         f"{request.is_split_size}")  # fmt: skip


def evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """FID, Inception Score (ADM's splits and our single split), precision and recall of generated images, an .npz
    in ADM's layout or an image folder, against reference statistics or other images, with the validation protocol.

    Writes a JSON report of the numbers and of the protocol (sample count, label balance, image size and resize,
    extractor and weights sha256, reference file and sha256) whose `warnings` list where it departs from the paper's
    (e.g. 10k samples where the table used 50k); each warning is also printed as one line.
    """
    check_request(request)
    start = time.perf_counter()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if request.device == "auto" else
                          request.device)  # fmt: skip
    samples = open_images(request.samples, request.resolution)  # a bad file fails before any weights load
    options = {"protocol": request.protocol} if request.protocol else {}
    extractor = build_extractor(request.extractor, request.weights_path, **options).to(device)
    reference = load_reference(request.reference, extractor, device, request.batch_size, request.precision_recall,
                               request.resolution)  # fmt: skip
    features = extract(samples, extractor, device, request.batch_size, keep=reference.features is not None,
                       split_size=request.is_split_size)  # fmt: skip
    balance = balance_of(samples.labels)
    name = ("digits-" if extractor.metric_prefix == "digits_" else "") + f"FID-{count_label(samples.num_images)}"
    report = {
        "metric": name,
        **fid_and_precision_recall(request, reference, features),
        "inception_score": inception_scores(features, request.is_split_size),
        "protocol": protocol_record(request, samples, reference, extractor, device),
        "warnings": departures(request, samples, reference, extractor, balance),
        "seconds": round(time.perf_counter() - start, 3),
    }
    path = atomic_write_json(report_path(request), report)
    print_summary(report, path)
    return report


def print_summary(report: dict[str, Any], path: Path) -> None:
    """One line of numbers, one per warning, and where the report went."""
    parts = [f"{report['metric']} {report['fid']:.4f}"]
    if (scores := report["inception_score"]) is not None:
        parts.append(f"IS {scores['single_split']:.3f} (one split; ADM's {scores['adm_splits']} splits "
                     f"{scores['adm_mean']:.3f} ± {scores['adm_std']:.3f})")  # fmt: skip
    if report["precision"] is not None:
        parts.append(f"precision {report['precision']:.4f}, recall {report['recall']:.4f}")
    elif note := report.get("precision_recall_note"):
        parts.append(f"no precision/recall: {note}")
    print("evaluate: " + "; ".join(parts))
    for warning in report["warnings"]:
        print(f"evaluate: warning: {warning}")
    print(f"evaluate: wrote {path}")
