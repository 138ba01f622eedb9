"""Editing with a masked-token generator: inpainting, outpainting, re-generation under another condition, img2img.

A NAT fills any region of an image for free: encode the image, keep the tokens of the region to keep, and start the
decoding loop from that partial canvas instead of an all-[MASK] one (:func:`lit_nat.sampling.generate`'s
``init_ids`` / ``keep_mask``). This module turns pixel masks into token masks and reads the inputs of ``edit``; the
loop itself lives in :mod:`lit_nat.sampling`.

Masks (pixel level, ``(H, W)`` bool, **True = keep**): :func:`box_mask`, :func:`half_mask`, :func:`border_mask`,
:func:`png_mask` (white = regenerate, dark = keep: the inpainting convention of image editors and diffusers), or a spec
string for the command line (:func:`parse_mask`). :func:`token_keep_mask` keeps a token only if its whole patch is kept,
then grows the regenerated region by ``dilate`` tokens (MAGE issue 3: a little context around a hole helps the seams).
:func:`random_keep_mask` is img2img: re-generate a random fraction of all tokens.

The kept region of an edited image is the tokenizer's reconstruction of the input (the decoded kept tokens), not the
input pixels: pixel-exact for the pixel tokenizer, a VQGAN reconstruction otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lit_nat.errors import UsageError
from lit_nat.visuals import paint_masked

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def token_keep_mask(pixel_keep: torch.Tensor, grid: tuple[int, int], dilate: int = 0) -> torch.Tensor:
    """Pixel keep mask ``(H, W)`` or ``(B, H, W)`` -> token keep mask ``(B, h * w)`` (raster order).

    A token is kept only if every pixel of its ``(H/h, W/w)`` patch is kept; then the regenerated region grows by
    ``dilate`` tokens in every direction (8-connected), so the model redraws a margin around it.
    """
    keep = pixel_keep.bool()
    if keep.dim() == 2:
        keep = keep[None]
    (b, height, width), (h, w) = keep.shape, grid
    if height % h or width % w:
        raise UsageError(f"a {height}x{width} mask does not split into the {h}x{w} token grid")
    patches = keep.view(b, h, height // h, w, width // w).all(dim=4).all(dim=2)  # (B, h, w)
    if dilate > 0:
        regenerate = (~patches).float()[:, None]
        grown = F.max_pool2d(regenerate, kernel_size=2 * dilate + 1, stride=1, padding=dilate)[:, 0] > 0
        patches = ~grown
    return patches.reshape(b, h * w)


def box_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> torch.Tensor:
    """Keep everything but the box ``(x0, y0, x1, y1)`` (pixels, or fractions of the size when all are <= 1)."""
    height, width = size
    if all(0 <= v <= 1 for v in box):
        box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UsageError(f"box {box} is not inside a {width}x{height} image (x0 < x1 <= width, y0 < y1 <= height)")
    keep = torch.ones(height, width, dtype=torch.bool)
    keep[y0:y1, x0:x1] = False
    return keep


def half_mask(size: tuple[int, int], keep: str = "top") -> torch.Tensor:
    """Keep one half (``top``, ``bottom``, ``left`` or ``right``), regenerate the other."""
    height, width = size
    mask = torch.zeros(height, width, dtype=torch.bool)
    if keep == "top":
        mask[: height // 2] = True
    elif keep == "bottom":
        mask[height // 2 :] = True
    elif keep == "left":
        mask[:, : width // 2] = True
    elif keep == "right":
        mask[:, width // 2 :] = True
    else:
        raise UsageError(f"half mask: keep must be top, bottom, left or right, got {keep!r}")
    return mask


def border_mask(size: tuple[int, int], width: float = 0.25) -> torch.Tensor:
    """Outpainting: keep the centre, regenerate a border ``width`` wide (pixels, or a fraction of the side if < 1)."""
    height, side = size
    margin_y = int(round(width * height)) if width < 1 else int(width)
    margin_x = int(round(width * side)) if width < 1 else int(width)
    if not (0 < 2 * margin_y < height and 0 < 2 * margin_x < side):
        raise UsageError(f"border {width} leaves no centre to keep in a {side}x{height} image")
    keep = torch.zeros(height, side, dtype=torch.bool)
    keep[margin_y : height - margin_y, margin_x : side - margin_x] = True
    return keep


def png_mask(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """A mask image: white (>= 128) = regenerate, dark = keep; it must have the images' size."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such mask image")
    grey = np.asarray(Image.open(path).convert("L"))
    if grey.shape != tuple(size):
        raise UsageError(f"{path}: the mask is {grey.shape[1]}x{grey.shape[0]}, the images {size[1]}x{size[0]}")
    return torch.from_numpy(grey < 128)


def parse_mask(spec: str, size: tuple[int, int]) -> torch.Tensor:
    """A mask from the command line: ``half`` / ``half:bottom`` / ``half:left`` (keep that half), ``border`` /
    ``border:0.25`` (outpaint), ``box:x0,y0,x1,y1`` (regenerate the box; pixels or fractions), or a PNG path."""
    name, _, arg = spec.partition(":")
    if name == "half":
        return half_mask(size, arg or "top")
    if name == "border":
        return border_mask(size, float(arg) if arg else 0.25)
    if name == "box":
        try:
            box = tuple(float(v) for v in arg.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise UsageError(f"mask {spec!r}: expected box:x0,y0,x1,y1")
        return box_mask(size, box)  # type: ignore[arg-type]
    if spec.lower().endswith(IMAGE_SUFFIXES):
        return png_mask(spec, size)
    raise UsageError(f"unknown mask {spec!r}: expected half[:top|bottom|left|right], border[:width], box:x0,y0,x1,y1 "
                     "or a mask image (white = regenerate)")  # fmt: skip


def random_keep_mask(batch: int, num_tokens: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """img2img: re-generate round(fraction N) tokens drawn uniformly (the same count in every row), keep the rest."""
    if not 0 < fraction <= 1:
        raise UsageError(f"the fraction of tokens to re-generate must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * num_tokens))
    noise = torch.rand(batch, num_tokens, generator=generator, device=generator.device)
    regenerate = noise.argsort(dim=1)[:, :count]
    return torch.ones(batch, num_tokens, dtype=torch.bool, device=generator.device).scatter(1, regenerate, False)


def load_images(source: str | os.PathLike, size: tuple[int, int], channels: int) -> tuple[torch.Tensor, list[str]]:
    """Images to edit, ``(B, C, H, W)`` in [0, 1], and their names: a folder of image files (sorted) or an ``.npz``
    (``arr_0`` uint8 ``(N, H, W, 3 or 1)``, the ADM layout ``sample`` writes). Every image must have the tokenizer's
    size (edits keep pixels in place, so nothing is resized)."""
    from PIL import Image

    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        with np.load(path) as data:
            if "arr_0" not in data:
                raise UsageError(f"{path}: no arr_0 (images, N x H x W x C uint8)")
            arrays, names = list(data["arr_0"]), [f"{path.name}[{i}]" for i in range(len(data["arr_0"]))]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        arrays = [np.asarray(Image.open(f).convert("RGB" if channels == 3 else "L")) for f in files]
        names = [f.name for f in files]
    else:
        raise UsageError(f"{path}: expected a folder of images or an .npz")
    images = []
    for name, array in zip(names, arrays):
        if array.shape[:2] != tuple(size):
            raise UsageError(f"{name}: the image is {array.shape[1]}x{array.shape[0]}, the tokenizer takes "
                             f"{size[1]}x{size[0]} (crop or resize it first)")  # fmt: skip
        image = torch.from_numpy(np.array(array)).float() / 255
        image = image[..., None] if image.dim() == 2 else image
        image = image.permute(2, 0, 1)  # (C, H, W)
        images.append(image[:1] if channels == 1 else image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3])
    return torch.stack(images), names


def check_edit_inputs(keep: torch.Tensor, images: int, conditions: int | None) -> list[str]:
    """One-line errors for masks that leave nothing to generate and for counts that do not match; notes for the
    cases that are fine but worth saying (an all-False mask is plain generation)."""
    if keep.shape[0] not in (1, images):
        raise UsageError(f"{keep.shape[0]} masks for {images} images")
    if bool(keep.all()):
        raise UsageError("the mask keeps every token: there is nothing to generate (regenerate a region)")
    if conditions is not None and conditions not in (1, images):
        raise UsageError(f"{conditions} labels or prompts for {images} images (give one, or one per image)")
    return ["the mask keeps no token: this is plain generation"] if not bool(keep.any()) else []


def overlay(images: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], colour: Any = (0.3, 0.45, 0.85)):
    """The input with the regenerated tokens' area painted (the grid's 'mask' column)."""
    return paint_masked(images, ~keep.view(-1, *grid), colour)
