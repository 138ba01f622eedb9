"""Is my run healthy? Validation metrics with a shape one can compare across runs, and a warning on collapse.

The training and validation loss is an average over all mask ratios, and its value depends on the ratio law: "is 6.5
good?" has no answer. Here every validation batch is also scored at fixed mask ratios (the centres of ``buckets``
equal bins of r), with masks from the callback's own seeded generator (the same positions at every validation, and
no global random state touched, so training draws are unchanged):

- ``health/loss_r<r>`` and ``health/acc_r<r>``: masked-token cross-entropy and top-1 accuracy at ratio r (EMA
  weights, as ``val/loss``). A healthy run lowers every curve; accuracy falls as r grows (less context).
- ``health/codes_used``: the share of the codebook the model's predictions use on masked tokens, over the
  validation, next to ``health/data_codes_used``, the share the true tokens at the same positions use, and
  ``health/perplexity`` / ``health/data_perplexity`` of the two histograms.

A model whose predictions fall to far fewer codes than both the data holds and the run itself reached before
(one-colour samples, all tokens one code) is collapsing: the callback warns, naming the metric, its value and the
step. (A fresh model also predicts few codes; only a fall from the run's own peak counts, so early validations and
the sanity check never warn.)
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn


def bucket_ratios(buckets: int) -> list[float]:
    """The centres of ``buckets`` equal bins of the mask ratio r in (0, 1)."""
    return [(i + 0.5) / buckets for i in range(buckets)]


def fixed_mask(batch: int, tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``(B, N)`` bool, True = masked: ``round(r N)`` random positions per row (at least one, at most N - 1)."""
    masked = min(max(round(ratio * tokens), 1), tokens - 1)
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    return order < masked


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a histogram: the number of equally used codes it is worth."""
    p = counts.double() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


class RunHealth(L.Callback):
    """Validation loss and accuracy per mask-ratio bucket, codebook usage of predictions against the data's, and a
    collapse warning (see the module docstring).

    Args:
        buckets: number of mask-ratio buckets (their centres are the ratios scored).
        seed: seed of the masks (fixed, so validations compare).
        collapse_share: warn when the predictions use less than this share of the codes the true tokens use, and
            of the most codes this run's predictions used at an earlier validation.
        enabled: False turns the callback off (``--run_health.enabled false``).
    """

    def __init__(self, buckets: int = 5, seed: int = 0, collapse_share: float = 0.25, enabled: bool = True) -> None:
        super().__init__()
        if buckets < 1 or not 0 <= collapse_share <= 1:
            raise ValueError(f"RunHealth: buckets must be >= 1 and collapse_share in [0, 1], got {buckets}, "
                             f"{collapse_share}")  # fmt: skip
        self.ratios, self.seed = bucket_ratios(buckets), seed
        self.collapse_share, self.enabled = collapse_share, enabled
        self._sums: dict[str, torch.Tensor] = {}
        self.peak_codes_used = 0.0  # the most codes the predictions used at a validation of this run (checkpointed)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_codes_used": self.peak_codes_used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.peak_codes_used = float(state_dict.get("peak_codes_used", 0.0))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums = {}
        self._generator = torch.Generator().manual_seed(self.seed + trainer.global_rank)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self.enabled or not isinstance(batch, dict) or "ids" not in batch:
            return
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
        sums = self._reduced(trainer, pl_module)
        metrics = {f"health/{name}": float(total) / max(count, 1) for name, (total, count) in sums.items()
                   if not name.endswith("_codes")}  # fmt: skip
        predicted, data = (sums[k][0] for k in ("predicted_codes", "data_codes"))
        used, data_used = float((predicted > 0).sum()), float((data > 0).sum())
        codes = len(predicted)
        metrics.update({"health/codes_used": used / codes, "health/data_codes_used": data_used / codes,
                        "health/perplexity": perplexity(predicted), "health/data_perplexity": perplexity(data)})
        pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=True)
        fell = used < self.collapse_share * min(data_used, self.peak_codes_used)
        self.peak_codes_used = max(self.peak_codes_used, used)
        if fell:
            rank_zero_warn(f"RunHealth: health/codes_used {used / codes:.3f} at step {trainer.global_step}: the "
                           f"predictions use {int(used)} codes where the data uses {int(data_used)} (collapse?)")
