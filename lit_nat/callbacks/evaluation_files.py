"""The files of a :class:`~lit_nat.callbacks.evaluation.GenerativeEvaluation`: the reference statistics it reads (or
computes from the data's token shards and caches), the one-line error naming the command that makes a missing one,
and the records of its JSON report.

Functions of the evaluation's settings and results; the callback decides when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics.extractors import FeatureExtractor
from lit_nat.metrics.reference import ReferenceStats, compute_reference_stats, save_reference_stats, shard_images
from lit_nat.tokenizers import Tokenizer

if TYPE_CHECKING:
    from lit_nat.callbacks.evaluation import GenerativeEvaluation


def count_label(n: int) -> str:
    """50000 -> '50k', 180 -> '180' (the N of 'FID-N')."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def metric_name(metric_prefix: str, num_samples: int) -> str:
    """The report's name of the metric: ``FID-10k``, or ``digits-FID-200`` for the digits extractor."""
    return ("digits-" if metric_prefix == "digits_" else "") + f"FID-{count_label(num_samples)}"


# ----------------------------------------------------------------------------------------------------------------------
# Reference statistics
def missing_reference_message(path: Path, extractor_name: str, extractor_options: dict[str, Any],
                              weights_path: str | None, image_size: int | tuple[int, int] | None,
                              data_root: str | None) -> str:  # fmt: skip
    """The one-line error of a missing reference file: its name and the command that makes it (``weights_path``
    already resolved; ``image_size`` the tokenizer's; ``data_root`` the data module's, if it has one)."""
    options = "" if extractor_name == "inception" else f" --extractor {extractor_name}"
    options += "".join(f" --{key} {value}" for key, value in extractor_options.items())
    if weights_path:
        options += f" --weights_path {weights_path}"
    side = f" --resolution {image_size[0] if isinstance(image_size, tuple) else image_size}" if image_size else ""
    shards = f" (or --data_root {data_root} --split val for the data's own tokenised images)" if data_root else ""
    return (
        f"GenerativeEvaluation: reference statistics {path} (reference_stats) does not exist; make them once with "
        f"`python -m lit_nat reference-stats --out {path} --image_folder <the real images>{side}{options}`{shards}"
        ", or point reference_stats at the ADM/U-ViT fid_stats .npz"
    )


def reference_from_shards(trainer: L.Trainer, tokenizer: Tokenizer, extractor: FeatureExtractor, split: str,
                          batch_size: int, path: Path | None) -> ReferenceStats:  # fmt: skip
    """The reference statistics of a split of the data's token shards, decoded with ``tokenizer``: every rank reads
    its part and the sums are all-gathered; rank 0 caches them in ``path`` (if given)."""
    datamodule = trainer.datamodule
    root = getattr(datamodule, "root", None)
    if root is None:
        raise ValueError("GenerativeEvaluation: reference_split needs a TokenShardDataModule (data with a root)")
    device = trainer.strategy.root_device
    rank_zero_info(f"GenerativeEvaluation: computing reference statistics of {root}/{split} ...")
    images = shard_images(root, split, tokenizer, batch_size, trainer.global_rank, trainer.world_size, device)
    mu, sigma, n = compute_reference_stats(extractor, images, device, sync=True)
    source = f"{root}/{split} ({n} real images)"
    if path is not None and trainer.is_global_zero:
        save_reference_stats(path, mu, sigma, extractor=extractor.identity, num_samples=n, source=source)
        rank_zero_info(f"GenerativeEvaluation: wrote {path}")
    meta = {"extractor": extractor.identity, "num_samples": n, "source": source}
    return ReferenceStats(mu.numpy(), sigma.numpy(), str(path or ""), meta)


# ----------------------------------------------------------------------------------------------------------------------
# The JSON report
def history_entry(values: dict[str, Any], step: int, epoch: int) -> dict[str, Any]:
    """One point of the training curve: the values of an evaluation at (step, epoch)."""
    return {
        "global_step": step,
        "epoch": epoch,
        "fid": values["fid"],
        "inception_score": values["inception_score"],
        "clip_score": values.get("clip_score"),
    }


def evaluation_record(evaluation: GenerativeEvaluation, trainer: L.Trainer, values: dict[str, Any], name: str,
                      step: int, epoch: int) -> dict[str, Any]:  # fmt: skip
    """The report of one evaluation (``values`` from :meth:`GenerativeEvaluation.evaluate`, ``name`` from
    :func:`metric_name`): the values, the schedule, everything that fixes the images and the metric, and the
    training curve so far."""
    schedule: GenerationSchedule = values["schedule"]
    return {
        "metric": name,
        name: values["fid"],
        "fid": values["fid"],
        "inception_score": values["inception_score"],
        "clip_score": values.get("clip_score"),
        "num_samples": evaluation.num_samples,
        "steps": schedule.steps,
        "schedule": schedule.to_dict(),
        "checkpoint": trainer.ckpt_path,
        "seed": evaluation.seed,
        "batch_size": evaluation.batch_size,
        "extractor": evaluation.extractor.identity,
        "weights_path": getattr(evaluation.extractor, "weights_path", evaluation.weights_path),
        "reference_stats": evaluation.reference.path or None,
        "reference_num_samples": evaluation.reference.meta.get("num_samples"),
        "stage": getattr(trainer.state.fn, "value", str(trainer.state.fn)),
        "global_step": step,
        "epoch": epoch,
        "world_size": trainer.world_size,
        "seconds": values["seconds"],
        "history": list(evaluation.history),
    }
