"""What one FID evaluation and one schedule-search update cost, printed once when training starts.

One evaluated image is measured, not estimated: rank 0 generates a single image with the module's current schedule,
decodes it and extracts its features (and its CLIP score for a text model) under
:func:`lit_nat.models.flops.pipeline_gflops`, on the run's device and in the run's precision, so guidance rows, ENAT's
reuse, the text encoder, the VQ decoder and the extractor are all counted as they run. The global RNG is left as it was,
so printing the cost changes no training draw. An evaluation of N images costs N times that; a search update costs up to
``1 + (4T - 2)`` FID evaluations (the base point and one forward difference per coordinate of xi) of the search's own
number of images, without the CLIP score (the search measures FID only).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.data.labels import plan_generation
from lit_nat.metrics.extractors import full_precision
from lit_nat.models.flops import format_gflops, pipeline_gflops

if TYPE_CHECKING:
    from lit_nat.callbacks.evaluation import GenerativeEvaluation

CLIP_PART = "CLIP score"


def measure_image_gflops(
    evaluation: GenerativeEvaluation, trainer: L.Trainer, pl_module: L.LightningModule
) -> dict[str, float]:
    """GFLOPs of one evaluated image by part: generation (T steps), decode, the extractor, the CLIP score."""
    (batch,) = plan_generation(1, 1, evaluation.seed, num_classes=pl_module.hparams.num_classes,
                               prompts=evaluation.prompts(trainer, pl_module))  # fmt: skip
    device = pl_module.device
    labels = None if batch.prompts else torch.tensor(batch.labels, device=device)
    prompts = list(batch.prompts) if batch.prompts else None
    clip = evaluation.clip_metric(trainer, pl_module)

    def generate(_: Any) -> torch.Tensor:
        with trainer.precision_plugin.forward_context():  # as the evaluation generates
            return pl_module.generate(labels, seed=batch.seed, prompts=prompts).ids

    def exact(fn):  # decoding and metrics run in float32 outside autocast, as in the evaluation
        def run(value: Any) -> Any:
            with full_precision(device.type):
                return fn(value)

        return run

    def features(images: torch.Tensor) -> torch.Tensor:
        evaluation.extractor(images)
        return images

    stages = {f"generation ({pl_module.schedule.steps} steps)": generate,
              "decode": exact(lambda ids: pl_module.decode(ids).float()),
              evaluation.extractor_name: exact(features)}  # fmt: skip
    if clip is not None:
        stages[CLIP_PART] = exact(lambda images: clip.update(images, prompts))
    with torch.inference_mode(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        parts = pipeline_gflops(stages)
    if clip is not None:
        clip.reset()  # the measured image is no part of any evaluation
    return parts


def print_evaluation_cost(evaluation: GenerativeEvaluation, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """``GenerativeEvaluation: one FID-10k = 10,000 images x 412.3 GFLOPs (...) = 4,123.0 TFLOPs, at every ...``"""
    from lit_nat.callbacks.evaluation import count_label

    parts = evaluation.image_gflops(trainer, pl_module)
    if not trainer.is_global_zero:
        return
    name = f"{evaluation.extractor.metric_prefix.replace('_', '-')}FID-{count_label(evaluation.num_samples)}"
    n = evaluation.every_n_validations
    every = "every validation" if n == 1 else f"every {n}th validation"
    rank_zero_info(
        f"GenerativeEvaluation: one {name} = {evaluation.num_samples:,} images x {format_gflops(parts)} "
        f"= {sum(parts.values()) * evaluation.num_samples / 1e3:,.1f} TFLOPs, at {every} "
        f"(val_check_interval {trainer.val_check_interval})"
    )


def search_update_cost(steps: int, images: int, parts: dict[str, float]) -> tuple[int, int, float]:
    """(FID evaluations, images, TFLOPs) of one search update at most: 1 + (4T - 2) evaluations of ``images``."""
    evaluations = 1 + 4 * steps - 2
    per_image = sum(v for k, v in parts.items() if k != CLIP_PART)
    return evaluations, evaluations * images, evaluations * images * per_image / 1e3


def print_search_cost(evaluation: GenerativeEvaluation, trainer: L.Trainer, pl_module: L.LightningModule,
                      images: int, every_n_epochs: int, max_updates: int | None) -> None:  # fmt: skip
    """``ScheduleSearch: one update = up to 31 FID evaluations x 2,000 images = 62,000 images x ... = ... TFLOPs``"""
    parts = evaluation.image_gflops(trainer, pl_module)
    if not trainer.is_global_zero:
        return
    steps = pl_module.schedule.steps
    evaluations, total_images, tflops = search_update_cost(steps, images, parts)
    per_image = {k: v for k, v in parts.items() if k != CLIP_PART}
    batches = trainer.num_training_batches
    steps_between = every_n_epochs * batches // trainer.accumulate_grad_batches if math.isfinite(batches) else None
    epoch = "" if steps_between is None else f" ({steps_between:,} steps)"
    cap = "no limit" if max_updates is None else f"at most {max_updates} updates"
    rank_zero_info(
        f"ScheduleSearch: one update = up to {evaluations} FID evaluations (1 + 4T - 2, T = {steps}) x {images:,} "
        f"images = {total_images:,} images x {format_gflops(per_image)} = {tflops:,.1f} TFLOPs, "
        f"every {every_n_epochs} epoch(s){epoch}, {cap}"
    )
