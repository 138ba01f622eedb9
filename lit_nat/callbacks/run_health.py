"""Is my run healthy? Validation metrics with a shape one can compare across runs, and a warning on collapse.

The training and validation loss is an average over all mask ratios, and its value depends on the ratio law: "is 6.5
good?" has no answer. Here every validation batch is also scored at fixed mask ratios (the centres of ``buckets``
equal bins of r), with masks from the callback's own seeded generator (the same positions at every validation, and
no global random state touched, so training draws are unchanged):

- ``health/loss_r<r>`` and ``health/acc_r<r>``: masked-token cross-entropy and top-1 accuracy at ratio r (EMA
  weights, as ``val/loss``). A healthy run lowers every curve; accuracy falls as r grows (less context).
- ``health/codes_used``: the share of the codebook the model's predictions use on masked tokens, over the
  validation, and ``health/perplexity`` of their histogram, next to the data's, ``health/data_codes_used`` and
  ``health/data_perplexity``: those ``meta.json`` recorded for the validation split at tokenize time, or, for data
  tokenised before, those of the true tokens at the same positions.
- ``health/sample_codes_used``, ``health/sample_perplexity``, ``health/sample_distinct`` (distinct token maps /
  samples) and ``health/sample_one_colour`` (the share of samples whose most frequent code covers at least
  ``one_colour`` of the map): ``samples`` token maps generated at each validation with the current schedule, EMA
  weights and a fixed seed (labels spread over the classes, or the first validation captions), never decoded.

Collapse is a fall from health this run had: the predictions' or the samples' codebook usage below
``collapse_share`` of both the data's and the run's own peak, all samples identical, or most samples one colour
after a validation where they were not. The callback then warns (naming the metric, its value and the step) and
logs ``health/alarm`` = 1 on the progress bar until a validation is healthy again. A fresh model never had that
health, so early validations and the sanity check never warn. ``health.png`` in the run's log folder (or
``default_root_dir``) shows every curve so far for loggers without scalars (:mod:`.run_health_plot`); the curves
are checkpointed, so a resumed run continues its picture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from lit_nat.callbacks.run_health_plot import perplexity, sample_health, write_health_png

__all__ = ["RunHealth", "bucket_ratios", "fixed_mask", "perplexity", "sample_health"]
#: most samples one colour: more than this share of them
ONE_COLOUR_ALARM = 0.5


def bucket_ratios(buckets: int) -> list[float]:
    """The centres of ``buckets`` equal bins of the mask ratio r in (0, 1)."""
    return [(i + 0.5) / buckets for i in range(buckets)]


def fixed_mask(batch: int, tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``(B, N)`` bool, True = masked: ``round(r N)`` random positions per row (at least one, at most N - 1)."""
    masked = min(max(round(ratio * tokens), 1), tokens - 1)
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    return order < masked


def data_usage(datamodule: Any) -> dict[str, Any] | None:
    """The codebook usage ``meta.json`` recorded for the data module's validation split (else its train split), or
    None for data tokenised before usage was recorded."""
    usage = getattr(getattr(datamodule, "meta", None), "codebook_usage", None) or {}
    for split in (getattr(datamodule, "val_split", "val"), getattr(datamodule, "train_split", "train")):
        if split in usage:
            return usage[split]
    return None


class RunHealth(L.Callback):
    """Validation loss and accuracy per mask-ratio bucket, codebook usage of predictions and of generated samples
    against the data's, sample diversity, a collapse warning and ``health.png`` (see the module docstring).

    Args:
        buckets: number of mask-ratio buckets (their centres are the ratios scored).
        seed: seed of the masks and of the generated samples (fixed, so validations compare).
        collapse_share: warn when the predictions (or samples) use less than this share of the codes the data uses,
            and of the most codes this run's predictions (samples) used at an earlier validation.
        samples: token maps generated at each validation for the sample metrics (0: none).
        one_colour: a sample whose most frequent code covers at least this share of its tokens is one colour.
        picture: write ``health.png`` into the run's log folder at each validation.
        enabled: False turns the callback off (``--run_health.enabled false``).
    """

    def __init__(self, buckets: int = 5, seed: int = 0, collapse_share: float = 0.25, samples: int = 16,
                 one_colour: float = 0.9, picture: bool = True, enabled: bool = True) -> None:  # fmt: skip
        super().__init__()
        if buckets < 1 or samples < 0 or not 0 <= collapse_share <= 1 or not 0 < one_colour <= 1:
            raise ValueError(f"RunHealth: buckets must be >= 1, samples >= 0, collapse_share in [0, 1] and one_colour "
                             f"in (0, 1], got {buckets}, {samples}, {collapse_share}, {one_colour}")  # fmt: skip
        self.ratios, self.seed, self.samples, self.one_colour = bucket_ratios(buckets), seed, samples, one_colour
        self.collapse_share, self.picture, self.enabled = collapse_share, picture, enabled
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._prompts: list[str] = []
        self.peak_codes_used = 0.0  # the most codes the predictions used at a validation of this run (checkpointed)
        self.best: dict[str, float] = {}  # the healthiest sample metrics of this run so far (checkpointed)
        self.history: list[dict[str, float]] = []  # every validation's metrics, for health.png (checkpointed)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_codes_used": self.peak_codes_used, "best": dict(self.best), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.peak_codes_used = float(state_dict.get("peak_codes_used", 0.0))
        self.best = dict(state_dict.get("best", {}))  # absent in checkpoints of the first version
        self.history = list(state_dict.get("history", []))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums, self._prompts = {}, []
        self._generator = torch.Generator().manual_seed(self.seed + trainer.global_rank)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self.enabled or not isinstance(batch, dict) or "ids" not in batch:
            return
        if len(self._prompts) < self.samples and batch.get("text"):  # a text model's samples take these captions
            self._prompts += list(batch["text"])[: self.samples - len(self._prompts)]
        ids = batch["ids"]  # (B, N)
        condition = pl_module.conditioner.of_batch(batch, pl_module.device)
        codes = pl_module.codebook_size
        for ratio in self.ratios:
            mask = fixed_mask(*ids.shape, ratio, self._generator).to(ids.device)
            logits, _ = pl_module.ema_backbone(ids.masked_fill(mask, pl_module.mask_id), condition)  # (B, N, K)
            logits, targets = logits[mask].float(), ids[mask]
            predicted = logits.argmax(-1)
            self._add(f"loss_r{ratio:.1f}", F.cross_entropy(logits, targets, reduction="sum"), len(targets))
            self._add(f"acc_r{ratio:.1f}", (predicted == targets).sum(), len(targets))
            self._add("predicted_codes", torch.bincount(predicted, minlength=codes)[:codes], 0)
            self._add("data_codes", torch.bincount(targets, minlength=codes)[:codes], 0)

    def _add(self, name: str, value: torch.Tensor, count: int) -> None:
        value = value.detach().double()
        total, n = self._sums.get(name, (torch.zeros_like(value), 0))
        self._sums[name] = (total + value, n + count)

    def _reduced(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, tuple[torch.Tensor, int]]:
        """The sums and counts of every rank (one all-gather per metric under DDP)."""
        if trainer.world_size == 1:
            return self._sums
        out = {}
        for name, (total, count) in sorted(self._sums.items()):
            packed = torch.cat([total.reshape(-1), total.new_tensor([count])]).to(pl_module.device)
            gathered = pl_module.all_gather(packed).reshape(trainer.world_size, -1).sum(0).cpu()
            out[name] = (gathered[:-1].reshape(total.shape), int(gathered[-1]))
        return out

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not self._sums or trainer.sanity_checking:
            return
        metrics = self._scored(trainer, pl_module)
        ids = self._generate(pl_module)
        if ids is not None:
            metrics.update(sample_health(ids, pl_module.codebook_size, self.one_colour))
        findings = self._collapse(metrics, pl_module.codebook_size, len(ids) if ids is not None else 0)
        metrics["alarm"] = float(bool(findings))
        pl_module.log_dict({f"health/{k}": v for k, v in metrics.items() if k != "alarm"}, sync_dist=False,
                           rank_zero_only=True)  # fmt: skip
        # on the progress bar, where a collapse is seen without opening TensorBoard: 1 while it lasts
        pl_module.log("health/alarm", metrics["alarm"], prog_bar=True, sync_dist=False, rank_zero_only=True)
        step = trainer.global_step
        for metric, why in findings:
            rank_zero_warn(f"RunHealth: health/{metric} {metrics[metric]:.3f} at step {step}: {why} (collapse?)")
        self.history = [h for h in self.history if h["step"] < step] + [{"step": step, **metrics}]  # resumes replace
        if self.picture and trainer.is_global_zero:
            write_health_png(self.history, Path(trainer.log_dir or trainer.default_root_dir) / "health.png")

    def _scored(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The bucket metrics and the predictions' codebook usage beside the data's (``meta.json``'s when recorded)."""
        sums = self._reduced(trainer, pl_module)
        metrics = {name: float(total) / max(count, 1) for name, (total, count) in sums.items()
                   if not name.endswith("_codes")}  # fmt: skip
        predicted, data = (sums[k][0] for k in ("predicted_codes", "data_codes"))
        recorded = data_usage(trainer.datamodule)
        metrics.update({
            "codes_used": float((predicted > 0).sum()) / len(predicted), "perplexity": perplexity(predicted),
            "data_codes_used": float((data > 0).sum()) / len(data) if recorded is None else recorded["codes_used"],
            "data_perplexity": perplexity(data) if recorded is None else recorded["perplexity"],
        })  # fmt: skip
        return metrics

    @torch.no_grad()
    def _generate(self, pl_module: L.LightningModule) -> torch.Tensor | None:
        """``samples`` token maps ``(S, N)`` with the model's schedule and its own seeded generator; None when off or
        when a text model saw no validation captions. Global random state is restored afterwards, so whatever the
        generation touches, no training or evaluation draw changes."""
        text = pl_module.conditioner.is_text
        if not self.samples or (text and not self._prompts):
            return None
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if text:
                prompts = (self._prompts * math.ceil(self.samples / len(self._prompts)))[: self.samples]
                return pl_module.generate(prompts=prompts, seed=self.seed).ids
            labels = torch.arange(self.samples) % pl_module.conditioner.null_class  # spread over the classes
            return pl_module.generate(labels, seed=self.seed).ids

    def _collapse(self, metrics: dict[str, float], codes: int, samples: int) -> list[tuple[str, str]]:
        """The collapses this validation shows, as (metric, why), each a fall from health this run had before; then
        the run's best values take this validation's."""
        share, data = self.collapse_share, metrics["data_codes_used"]
        found = []
        used = metrics["codes_used"] * codes
        if used < share * min(data * codes, self.peak_codes_used):
            found.append(("codes_used", f"the predictions use {round(used)} codes where the data uses "
                                        f"{round(data * codes)}"))  # fmt: skip
        self.peak_codes_used = max(self.peak_codes_used, used)
        if not samples:
            return found
        best = self.best
        sample_used = metrics["sample_codes_used"]
        if sample_used < share * min(data, best.get("sample_codes_used", 0.0)):
            found.append(("sample_codes_used", f"the samples use {round(sample_used * codes)} codes where the data "
                                               f"uses {round(data * codes)}"))  # fmt: skip
        identical = 1 / samples
        if samples > 1 and metrics["sample_distinct"] <= identical < best.get("sample_distinct", 0.0):
            found.append(("sample_distinct", f"all {samples} samples are the same token map"))
        one_colour = metrics["sample_one_colour"]
        if one_colour > ONE_COLOUR_ALARM >= best.get("sample_one_colour", 1.0):
            found.append(("sample_one_colour", f"{round(one_colour * samples)} of {samples} samples are one colour "
                                               f"(one code on >= {self.one_colour:.0%} of the tokens)"))  # fmt: skip
        best["sample_codes_used"] = max(best.get("sample_codes_used", 0.0), sample_used)
        best["sample_distinct"] = max(best.get("sample_distinct", 0.0), metrics["sample_distinct"])
        best["sample_one_colour"] = min(best.get("sample_one_colour", 1.0), one_colour)
        return found
