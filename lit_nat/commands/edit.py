"""``python -m lit_nat edit``: inpaint, outpaint or re-generate regions of images with a trained NAT.

Output under ``--out``: ``edited/<image>_seed<s>.png`` (one per image and seed; ``<image>`` is the input file's stem
or ``<key>_<i>`` for image i of an ``.npz`` array, checked as a plain file name by :func:`lit_nat.core.io.check_name`),
``grid.png`` (a row per image: the input, the input with the regenerated region painted, then one result per seed) and
``edits.json`` (per image: the image's name, the kept and regenerated token counts, the label or prompt, the seeds
and the files). See :mod:`lit_nat.generation.editing` for the masks and :func:`lit_nat.generation.decoding.generate`
for the partial-canvas loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torchvision.utils import make_grid

from lit_nat.core.errors import UsageError
from lit_nat.core.io import DirectoryLock, atomic_write_json, child_path
from lit_nat.generation.decoding import make_generator
from lit_nat.generation.editing import (
    check_edit_inputs,
    load_images,
    overlay,
    parse_mask,
    random_keep_mask,
    token_keep_mask,
)
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.generation.visuals import upscale_nearest, write_image_png, write_png
from lit_nat.training.loading import AssetLocations, load_model
from lit_nat.training.lora import AdapterSet
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer


@dataclass(frozen=True)
class EditRequest:
    """What an ``edit`` run is asked for.

    Args:
        images: an image, a folder of images or an .npz of N x H x W [x C] stacks (as `sample` writes), at the
            tokenizer's size; any mode or dtype, by its true range (8-bit /255, 16-bit /65535, floats in [0, 1];
            alpha over black).
        mask: what to regenerate: half[:top|bottom|left|right] (keep that half; default top), border[:width]
            (outpaint: keep the centre), box:x0,y0,x1,y1 (pixels or fractions), or a mask PNG (white = regenerate).
        out: output folder (edited/*.png, grid.png, edits.json).
        labels: class labels, one for all images or one per image (class models; default: unconditional).
        prompts: prompts, one for all images or one per image (text models).
        seeds: one edit per seed (grid columns); default [0].
        dilate: grow the regenerated region by this many tokens (more context redrawn around a hole).
        fraction: img2img instead of --mask: regenerate this random share of all tokens.
        schedule: a schedule YAML or preset; default: the checkpoint's.
        overwrite: replace an existing out/edits.json.
    """

    images: str
    mask: str | None = None
    out: str = "edits"
    labels: list[int] | None = None
    prompts: list[str] | None = None
    seeds: list[int] | None = None
    dilate: int = 0
    fraction: float | None = None
    schedule: str | None = None
    overwrite: bool = False


def edit(trainer: NATTrainer, model: NATModule | None, request: EditRequest, ckpt_path: str | None = None,
         assets: AssetLocations = AssetLocations(), adapters: AdapterSet = AdapterSet()) -> Path:  # fmt: skip
    """Inpaint, outpaint or re-generate regions of images: keep the tokens of the kept region and decode the rest
    (with LoRA --adapters merged into the weights first).

    Args:
        ckpt_path: checkpoint to edit with (its EMA weights and schedule); without it, the model of --config.
    """
    editor = load_model(ckpt_path, **assets.when_built()) if ckpt_path else model.eval()
    assets.apply(editor)
    adapters.apply(editor)
    editor = editor.to(trainer.strategy.root_device)
    if request.labels is None and request.prompts is None and not editor.conditioner.is_text:
        request = replace(request, labels=[editor.null_class])  # unconditional
    return run_edit(editor, request)


def run_edit(model: Any, request: EditRequest) -> Path:
    """:func:`edit` with ``model``, a NATModule with EMA weights on its device. Returns ``out/edits.json``."""
    r = request
    out_dir = Path(r.out)
    if (out_dir / "edits.json").exists() and not r.overwrite:
        raise FileExistsError(f"{out_dir / 'edits.json'} exists; pass --overwrite true or another --out")
    if (r.mask is None) == (r.fraction is None):
        raise UsageError("give --mask (a region to regenerate) or --fraction (img2img: a random share of tokens)")
    check_edit_options(r.seeds, r.dilate)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UsageError("the model has no tokenizer, so images can be neither encoded nor decoded")
    parsed = GenerationSchedule.preset(r.schedule) if r.schedule else None
    pixels, names = load_images(r.images, tuple(tokenizer.image_size), tokenizer.channels)
    batch, grid, seeds = len(pixels), tuple(model.backbone.grid_size), list(r.seeds or [0])
    if r.mask is not None:
        keep = token_keep_mask(parse_mask(r.mask, tuple(tokenizer.image_size)), grid, r.dilate).expand(batch, -1)
    else:
        keep = random_keep_mask(batch, model.num_tokens, r.fraction, make_generator(seeds[0], "cpu"))
    condition = r.prompts if r.prompts is not None else r.labels
    for note in check_edit_inputs(keep, batch, None if condition is None else len(condition)):
        rank_zero_info(f"edit: {note}")
    if condition is not None and len(condition) == 1:
        condition = condition * batch
    with torch.inference_mode():
        init_ids = tokenizer.to(model.device).encode(pixels.to(model.device))  # (B, N)
        keep = keep.to(model.device)
        results = []
        for seed in seeds:
            kwargs = {"prompts": condition} if r.prompts is not None else {"labels": condition}
            ids = model.generate(seed=seed, schedule=parsed, init_ids=init_ids, keep_mask=keep, **kwargs).ids
            results.append(model.decode(ids).float().cpu())
    with DirectoryLock(out_dir, "lit_nat edit"):
        return write_edits(out_dir, names, pixels, keep.cpu(), grid, results, seeds, condition, r.mask or
                           f"random {r.fraction}", r.dilate)  # fmt: skip


def check_edit_options(seeds: list[int] | None, dilate: int) -> None:
    """Options that would otherwise do something quietly other than asked: a seed given twice (its files would be
    written twice under one name) and a negative ``--dilate`` (which would shrink nothing and be ignored)."""
    twice = sorted({s for s in seeds or [] if list(seeds or []).count(s) > 1})
    if twice:
        raise UsageError(f"--seeds {list(seeds or [])}: seed {twice[0]} is given twice; each seed writes its own files")
    if dilate < 0:
        raise UsageError(f"--dilate {dilate}: expected a number of tokens >= 0 (0: regenerate exactly the mask)")


def write_edits(out_dir, names, pixels, keep, grid, results, seeds, condition, mask, dilate) -> Path:
    """Every edited image, the comparison grid and ``edits.json``, each written atomically."""
    records = []
    for i, name in enumerate(names):
        files = []
        for seed, images in zip(seeds, results):
            path = child_path(out_dir / "edited", f"{name}_seed{seed}.png", "--images", "image name")
            write_image_png(images[i], path)
            files.append(str(path.relative_to(out_dir)))
        records.append({"image": name, "kept_tokens": int(keep[i].sum()), "regenerated_tokens": int((~keep[i]).sum()),
                        "condition": None if condition is None else condition[i], "seeds": seeds,
                        "files": files})  # fmt: skip
    columns = [pixels.float(), overlay(pixels.float(), keep, grid), *results]
    tiles = torch.stack([c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns], dim=1).flatten(0, 1)
    write_png(make_grid(upscale_nearest(tiles), nrow=len(columns), padding=2, pad_value=1.0), out_dir / "grid.png")
    path = atomic_write_json(out_dir / "edits.json", {"mask": mask, "dilate": dilate, "columns": ["input", "mask"] + [
        f"seed {s}" for s in seeds], "edits": records})  # fmt: skip
    rank_zero_info(f"edit: wrote {len(names) * len(seeds)} edited images, {out_dir / 'grid.png'} and {path}")
    return path
