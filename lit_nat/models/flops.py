"""Compute accounting: ``python -m lit_nat flops --config configs/enat_l.yaml``.

Counts are measured, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` records every matmul and attention
call of a real forward (convention: a multiply-add is 2 FLOPs; tools that count MACs report half). The model is
built on the *meta* device, so even ENAT-L is counted in seconds without allocating weights. A generated image is
accounted by running the decoding loop's backbone calls step by step with the schedule's masked counts, so ENAT's
reuse (only newly revealed tokens are encoded) is counted exactly as it runs. The VQ decoder is not included (it
arrives with the VQGAN tokenizer); ENAT's paper adds it separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lit_nat.generation.decoding import prepare_condition
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import build_backbone, count_parameters


class WithoutReuse(nn.Module):
    """Runs a reuse backbone (ENAT) as if it had none: every step starts from scratch."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = backbone
        for name in ("codebook_size", "mask_id", "num_classes", "null_class", "num_tokens", "grid_size"):
            setattr(self, name, getattr(backbone, name))

    def prepare_condition(self, condition: Any) -> Any:
        return prepare_condition(self.inner, condition)

    def forward(self, ids: torch.Tensor, condition: torch.Tensor, state: Any = None, num_masked: int | None = None):
        logits, _ = self.inner(ids, condition, None, num_masked=num_masked)
        return logits, None


def count_flops(fn, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """FLOPs of one call of ``fn`` (and its result)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


def pipeline_gflops(stages: dict[str, Callable[[Any], Any]], value: Any = None) -> dict[str, float]:
    """GFLOPs of each stage of a pipeline run once, in order, each stage called with the previous stage's result (the
    first with ``value``). Measured like :func:`count_flops`, so a stage is counted as it really runs: guidance rows,
    ENAT's reuse, a text encoder, the VQ decoder, the feature extractor. (A run of the training's FID evaluation uses
    it for the cost it prints at the start: :mod:`lit_nat.callbacks.cost`.)"""
    out = {}
    for name, stage in stages.items():
        flops, value = count_flops(stage, value)
        out[name] = flops / 1e9
    return out


def format_gflops(parts: dict[str, float]) -> str:
    """``{"generation": 300.1, "decode": 106.0}`` -> ``'406.1 GFLOPs (generation 300.1 + decode 106.0)'``."""
    detail = " + ".join(f"{name} {value:,.1f}" for name, value in parts.items())
    return f"{sum(parts.values()):,.1f} GFLOPs ({detail})"


def generation_flops(backbone: nn.Module, schedule: GenerationSchedule, guided: bool,
                     condition: Any = None) -> list[int]:  # fmt: skip
    """FLOPs of each decoding step for ONE image (two backbone rows per image with guidance).

    Emulates :func:`lit_nat.generation.decoding.generate`'s backbone calls: the same batch layout, the same masked
    counts and the state threaded from step to step; which positions are revealed does not change the count.
    ``condition``: the rows' condition (a text condition of 1 or 2 rows for a text backbone); default class 0.
    """
    device = next(backbone.parameters()).device
    n, mask_id = backbone.num_tokens, backbone.mask_id
    rows = 2 if guided else 1
    order = torch.randperm(n).to(device)  # reveal order: any fixed permutation
    if condition is None:
        condition = torch.zeros(rows, dtype=torch.long, device=device)
    prepare_flops, condition = count_flops(prepare_condition, backbone, condition)  # once per call, as generate does
    state, masked, per_step = None, n, []
    for kept in schedule.masked_counts(n):
        ids = torch.zeros(rows, n, dtype=torch.long, device=device)
        ids[:, order[n - masked :]] = mask_id  # the last `masked` positions of the order are still masked
        flops, (_, state) = count_flops(backbone, ids, condition, state, num_masked=masked)
        per_step.append(flops)
        masked = kept
    per_step[0] += prepare_flops  # the condition's step-invariant part, computed once before the first step
    return per_step


@dataclass
class FlopsReport:
    name: str
    parameters: int
    forward_gflops: float  # one image, half of the tokens masked, no reuse
    per_image_gflops: dict[str, float]  # "guided", "unguided" (+ ", without reuse") -> GFLOPs for T steps


def report_for(
    name: str, arch: str, overrides: dict[str, Any] | None, token_space: dict[str, Any], steps: int
) -> FlopsReport:
    with torch.device("meta"):
        backbone = build_backbone(arch, overrides=overrides, **token_space).eval()
    schedule = GenerationSchedule.enat(steps)  # strictly decreasing counts: the ENAT release's rule
    n = backbone.num_tokens
    half_masked = torch.zeros(1, n, dtype=torch.long, device="meta")
    half_masked[:, : n // 2] = backbone.mask_id
    # ENAT's cost depends on how many tokens are masked; half masked, no reuse, is a representative forward.
    forward, _ = count_flops(
        backbone, half_masked, torch.zeros(1, dtype=torch.long, device="meta"), None, num_masked=n // 2
    )
    reuse = getattr(backbone, "supports_reuse", False)
    variants = {"": backbone, ", without reuse": WithoutReuse(backbone) if reuse else backbone}
    per_image = {}
    for label, model in variants.items():
        for guided in (True, False):
            total = sum(generation_flops(model, schedule, guided))
            per_image[f"{'guided' if guided else 'unguided'}{label}"] = total / 1e9
    return FlopsReport(name, count_parameters(backbone), forward / 1e9, per_image)


def report_for_config(config: Path, steps: int, token_space: dict[str, Any]) -> FlopsReport:
    data = yaml.safe_load(Path(config).read_text()) or {}
    model = data.get("model") or {}
    return report_for(
        Path(config).stem, model.get("arch", "autonat-s"), model.get("arch_overrides"), token_space, steps
    )


def format_markdown(reports: list[FlopsReport], steps: int) -> str:
    keys = ["guided", "guided, without reuse", "unguided", "unguided, without reuse"]
    header = ["config", "params (M)", "GFLOPs / forward", *[f"GFLOPs / image ({k})" for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reports:
        cells = [r.name, f"{r.parameters / 1e6:.1f}", f"{r.forward_gflops:.1f}"]
        cells += [f"{r.per_image_gflops[k]:.1f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops(configs: list[str], steps: int = 8, codebook_size: int = 1024, grid_size: int | None = None,
          num_classes: int = 1000) -> list[FlopsReport]:  # fmt: skip
    """Parameters and measured GFLOPs (per forward, per generated image over T steps, with and without guidance and
    ENAT reuse) of the model each config describes, as a Markdown table. VQ decoder excluded.

    Args:
        configs: one or more lit_nat configs.
        steps: decoding steps T (ENAT release schedule).
        codebook_size: token codes (ImageNet VQGAN: 1024).
        grid_size: token grid side (default 16; 32 for a config whose name has 512).
        num_classes: classes (ImageNet: 1000).
    """
    reports = []
    for config in map(Path, configs):
        grid = grid_size or (32 if "512" in config.stem else 16)
        token_space = {"codebook_size": codebook_size, "grid_size": grid, "num_classes": num_classes}
        reports.append(report_for_config(config, steps, token_space))
    print(format_markdown(reports, steps))
    return reports
