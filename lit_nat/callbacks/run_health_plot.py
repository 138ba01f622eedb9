"""RunHealth's numbers for any logger: the generated samples' health (:func:`sample_health`) and ``health.png``, the
curves of every validation so far as small multiples (:func:`write_health_png`), written into the run's log folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from lit_nat.core.io import atomic_write


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a histogram: the number of equally used codes it is worth."""
    p = counts.double() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def sample_health(ids: torch.Tensor, codebook_size: int, one_colour: float = 0.9) -> dict[str, float]:
    """How generated token maps ``ids`` ``(B, N)`` use the codebook and differ from each other.

    ``sample_codes_used``: the share of the K codes that occur in any map; ``sample_perplexity``: of their pooled
    histogram; ``sample_distinct``: distinct maps / B (1: all differ, 1/B: all identical); ``sample_one_colour``: the
    share of maps whose most frequent code covers at least ``one_colour`` of their tokens (a blank image).
    """
    ids = ids.detach().long().cpu()
    counts = torch.bincount(ids.reshape(-1), minlength=codebook_size)[:codebook_size]
    top = torch.stack([torch.bincount(row).max() for row in ids]).double() / ids.shape[1]
    return {
        "sample_codes_used": float((counts > 0).sum()) / codebook_size,
        "sample_perplexity": perplexity(counts),
        "sample_distinct": torch.unique(ids, dim=0).shape[0] / ids.shape[0],
        "sample_one_colour": float((top >= one_colour).double().mean()),
    }


def _series(history: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    points = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in points], [p[1] for p in points]


def _panel(ax: Any, history: list[dict[str, float]], keys: dict[str, str], title: str, styles: dict | None = None):
    for key, label in keys.items():
        steps, values = _series(history, key)
        if steps:
            ax.plot(steps, values, label=label, **{"marker": "o", "markersize": 3, **(styles or {}).get(key, {})})
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=6)


def health_figure(history: list[dict[str, float]]) -> Figure:
    """Small multiples of a run's ``health/*`` curves: loss and accuracy per mask-ratio bucket, codes used and
    perplexity (predictions, samples, data), and sample diversity with the alarm."""
    keys = sorted({k for h in history for k in h}, key=lambda k: [float(x) for x in re.findall(r"[\d.]+$", k)] or [0])
    data = {"ls": "--", "color": "grey", "marker": ""}
    fig = Figure(figsize=(12, 6), layout="constrained")  # no pyplot: no display, no global figure list to leak
    axes = fig.subplots(2, 3).reshape(-1)
    _panel(axes[0], history, {k: f"r = {k[6:]}" for k in keys if k.startswith("loss_r")}, "loss per mask ratio r")
    _panel(axes[1], history, {k: f"r = {k[5:]}" for k in keys if k.startswith("acc_r")}, "accuracy per mask ratio r")
    _panel(axes[2], history, {"codes_used": "predictions", "sample_codes_used": "samples",
                              "data_codes_used": "data"}, "codes used / K", {"data_codes_used": data})  # fmt: skip
    _panel(axes[3], history, {"perplexity": "predictions", "sample_perplexity": "samples",
                              "data_perplexity": "data"}, "perplexity", {"data_perplexity": data})  # fmt: skip
    _panel(axes[4], history, {"sample_distinct": "distinct maps", "sample_one_colour": "one-colour maps"},
           "sample diversity (share of samples)")  # fmt: skip
    _panel(axes[5], history, {"alarm": "alarm (1: collapse)"}, "collapse alarm")
    axes[3].set_ylim(bottom=0)
    for ax in (axes[2], axes[4], axes[5]):  # shares: the whole [0, 1], so a fall is seen at its true size
        ax.set_ylim(-0.03, 1.03)
    return fig


def write_health_png(history: list[dict[str, float]], path: str | Path) -> Path:
    """``health.png``: :func:`health_figure` written atomically (a reader never sees half a picture)."""
    figure = health_figure(history)
    return atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=80))
