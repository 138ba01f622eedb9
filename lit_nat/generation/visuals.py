"""Pictures of generation: tokens being revealed step by step, masked regions painted, labelled grid rows, and the
schedule's curves.

Pure functions of a module (or a schedule, or images): :class:`~lit_nat.callbacks.sample_grid.SampleGrid` logs them,
``sample`` labels its grid with them and ``edit`` paints its masks with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid, save_image

from lit_nat.core.io import atomic_write
from lit_nat.generation.schedule import FIELDS, GenerationSchedule

#: how each schedule field is labelled in figures (the AutoNAT paper's symbols)
FIELD_LABELS = {
    "mask_ratio": "r(t): masked after step t",
    "sample_temperature": "tau1(t): sampling temperature",
    "remask_temperature": "tau2(t): re-masking temperature",
    "guidance": "s(t): guidance scale",
}


def paint_masked(images: torch.Tensor, masked: torch.Tensor, color: tuple[float, float, float]) -> torch.Tensor:
    """Paint the image area of masked tokens with ``color``.

    Args:
        images: (B, C, H, W) in [0, 1]; grey images become RGB.
        masked: (B, h, w) bool token grid; each token covers an (H/h, W/w) patch.
        color: RGB in [0, 1].
    """
    rgb = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    cover = F.interpolate(masked[:, None].float(), size=rgb.shape[-2:], mode="nearest").bool()  # (B, 1, H, W)
    fill = torch.tensor(color, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1).expand_as(rgb)
    return torch.where(cover, fill, rgb)


def label_rows(grid: torch.Tensor, labels: list[str], rows: int, width: int = 200) -> torch.Tensor:
    """Write ``labels[r]`` left of row ``r`` of an image grid (3, H, W) in [0, 1]: a white margin ``width`` px wide,
    text in PIL's default font, so a grid generated from prompts says which row came from which prompt."""
    from PIL import Image, ImageDraw

    height = grid.shape[1]
    margin = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(margin)
    row_height = height / max(rows, 1)
    for r, text in enumerate(labels[:rows]):
        text = text if len(text) <= width // 6 else text[: width // 6 - 1] + "…"
        draw.text((4, int(r * row_height + row_height / 2) - 5), text, fill=(0, 0, 0))
    strip = torch.from_numpy(np.array(margin)).permute(2, 0, 1).float() / 255
    return torch.cat([strip, grid.expand(3, -1, -1).float().cpu()], dim=2)


@torch.no_grad()
def reveal_strip(
    pl_module: Any,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    schedule: GenerationSchedule | None = None,
    mask_color: tuple[float, float, float] = (0.3, 0.45, 0.85),
    upscale: int = 1,
    prompts: list[str] | None = None,
) -> torch.Tensor:
    """One row per label (or prompt): the canvas before step 1 (all masked) and after each of the T steps;
    (3, H', W') in [0, 1].

    Masked tokens are painted ``mask_color`` (a colour no tokenizer produces, unlike a grey level); the ids under them
    are decoded as id 0, which the paint hides.
    """
    result = pl_module.generate(labels, schedule=schedule, seed=seed, return_history=True, prompts=prompts)
    history = [torch.full_like(result.ids, pl_module.mask_id), *result.history]  # T + 1 canvases of (B, N)
    grid_h, grid_w = pl_module.backbone.grid_size  # part of the backbone contract (lit_nat.models)
    frames = []
    for ids in history:
        masked = ids == pl_module.mask_id
        images = pl_module.decode(torch.where(masked, torch.zeros_like(ids), ids)).float()
        frames.append(paint_masked(images, masked.view(-1, grid_h, grid_w), mask_color).cpu())
    strip = torch.stack(frames, dim=1).flatten(0, 1)  # (B * (T + 1), 3, H, W): row = sample, column = step
    if upscale > 1:
        strip = F.interpolate(strip, scale_factor=upscale, mode="nearest")
    return make_grid(strip, nrow=len(history), padding=2, pad_value=1.0)


def schedule_scalars(schedule: GenerationSchedule, prefix: str = "schedule") -> dict[str, float]:
    """``{"schedule/<field>/step_<t>": value}`` for every field and step (t = 1..T, the paper's numbering)."""
    return {
        f"{prefix}/{key}/step_{t + 1}": float(value) for key in FIELDS for t, value in enumerate(getattr(schedule, key))
    }


def schedule_figure(schedule: GenerationSchedule, num_tokens: int | None = None) -> Any:
    """A matplotlib figure with r(t), tau1(t), tau2(t) and s(t) against the step t = 1..T.

    With ``num_tokens``, the mask-ratio panel also shows the fraction actually left masked (the count rule's integers).
    """
    steps = list(range(1, schedule.steps + 1))
    fig = Figure(figsize=(13, 2.8), layout="constrained")  # no pyplot: no display, no global figure list to leak
    axes = fig.subplots(1, 4)
    for ax, key in zip(axes, FIELDS):
        ax.plot(steps, getattr(schedule, key), marker="o", label="schedule")
        if key == "mask_ratio" and num_tokens:
            realised = [c / num_tokens for c in schedule.masked_counts(num_tokens)]
            ax.step(steps, realised, where="mid", linestyle="--", label=f"realised (N={num_tokens})")
            ax.legend(fontsize=7)
        ax.set_title(FIELD_LABELS[key], fontsize=9)
        ax.set_xlabel("step t")
        ax.set_xticks(steps if len(steps) <= 16 else steps[:: max(1, len(steps) // 8)])
        ax.grid(alpha=0.3)
    fig.suptitle(f"generation schedule '{schedule.name}' (T = {schedule.steps})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# Writing pictures (atomically, as every file lit_nat writes)
def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """A picture (C, H, W) in [0, 1] (a grid, a strip) as an RGB PNG, with torchvision's ``save_image`` rounding."""
    return atomic_write(path, lambda f: save_image(image, f, format="png"))


def write_image_png(image: torch.Tensor, path: str | Path) -> Path:
    """One image (C, H, W) in [0, 1] as a PNG of its own pixels: rounded to 8 bits, grey stays one channel."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


def upscale_nearest(images: torch.Tensor, min_size: int = 64) -> torch.Tensor:
    """Images (B, C, H, W) upscaled by an integer factor (nearest) to at least ``min_size`` px: tiny images (8x8
    digits) become readable in grids."""
    scale = max(1, min_size // images.shape[-1])
    return F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images
