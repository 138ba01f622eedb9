"""Editing with a masked-token generator: inpainting, outpainting, re-generation under another condition, img2img.

A NAT fills any region of an image for free: encode the image, keep the tokens of the region to keep, and start the
decoding loop from that partial canvas instead of an all-[MASK] one (:func:`lit_nat.generation.decoding.generate`'s
``init_ids`` / ``keep_mask``). This module turns pixel masks into token masks and reads the inputs of ``edit``; the
loop itself lives in :mod:`lit_nat.generation.decoding`.

Masks (pixel level, ``(H, W)`` bool, **True = keep**): :func:`box_mask`, :func:`half_mask`, :func:`border_mask`,
:func:`png_mask` (white = regenerate, dark = keep: the inpainting convention of image editors and diffusers), or a spec
string for the command line (:func:`parse_mask`). :func:`token_keep_mask` keeps a token only if its whole patch is kept,
then grows the regenerated region by ``dilate`` tokens (MAGE issue 3: a little context around a hole helps the seams).
:func:`random_keep_mask` is img2img: re-generate a random fraction of all tokens.

Images in (:func:`load_images`, and mask images): any PIL mode or ``.npz`` array is converted by the true range of its
samples (:func:`to_unit_float`: 1-bit 0/1, 8-bit / 255, 16-bit / 65535, floats checked to lie in [0, 1], other integer
dtypes refused), alpha is composited over black (:func:`composite_alpha`), and colour or grey is matched to the
tokenizer (:func:`to_channels`, RGB -> grey by ITU-R 601 luma). A file that cannot be read is one line naming it.

The kept region of an edited image is the tokenizer's reconstruction of the input (the decoded kept tokens), not the
input pixels: pixel-exact for the pixel tokenizer, a VQGAN reconstruction otherwise.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lit_nat.core.errors import UsageError
from lit_nat.core.io import check_name
from lit_nat.generation.visuals import paint_masked

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
    """A mask image: white (grey level >= half of its range) = regenerate, dark = keep; it must have the images' size.

    Read like the images (:func:`read_image_file`, :func:`to_unit_float`): any mode or bit depth, alpha composited
    over black (a transparent pixel is kept), colour reduced to its luminance."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such mask image")
    grey = to_channels(composite_alpha(to_unit_float(read_image_file(path), str(path)), str(path)), 1)[..., 0]
    if grey.shape != tuple(size):
        raise UsageError(f"{path}: the mask is {grey.shape[1]}x{grey.shape[0]}, the images {size[1]}x{size[0]}")
    return torch.from_numpy(grey < 0.5)


#: the forms of --mask, for its errors
MASK_FORMS = "half[:top|bottom|left|right], border[:width], box:x0,y0,x1,y1 or a mask image (white = regenerate)"


def _numbers(spec: str, text: str, count: int, form: str) -> tuple[float, ...]:
    """``count`` finite numbers separated by commas, or a one-line error naming ``--mask`` and its expected form."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--mask {spec!r}: expected {form}, got {text!r}")
    return values


def parse_mask(spec: str, size: tuple[int, int]) -> torch.Tensor:
    """A mask from the command line: ``half`` / ``half:bottom`` / ``half:left`` (keep that half), ``border`` /
    ``border:0.25`` (outpaint), ``box:x0,y0,x1,y1`` (regenerate the box; pixels or fractions), or a mask image path.
    Every error names ``--mask`` and the form expected."""
    name, _, arg = spec.partition(":")
    if spec.lower().endswith(IMAGE_SUFFIXES) and name not in ("half", "border", "box"):
        return png_mask(spec, size)  # (its errors name the file)
    try:
        if name == "half":
            return half_mask(size, arg or "top")
        if name == "border":
            width = _numbers(spec, arg, 1, "border:<width> (a fraction < 1 of the side, or pixels)")[0] if arg else 0.25
            return border_mask(size, width)
        if name == "box":
            box = _numbers(spec, arg, 4, "box:x0,y0,x1,y1 (pixels, or fractions of the size)")
            return box_mask(size, box)  # type: ignore[arg-type]
    except UsageError as err:
        message = str(err)
        raise UsageError(message if message.startswith("--mask") else f"--mask {spec!r}: {message}") from None
    raise UsageError(f"--mask {spec!r}: unknown mask; expected {MASK_FORMS}")


def random_keep_mask(batch: int, num_tokens: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """img2img: re-generate round(fraction N) tokens drawn uniformly (the same count in every row), keep the rest."""
    if not 0 < fraction <= 1:
        raise UsageError(f"the fraction of tokens to re-generate must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * num_tokens))
    noise = torch.rand(batch, num_tokens, generator=generator, device=generator.device)
    regenerate = noise.argsort(dim=1)[:, :count]
    return torch.ones(batch, num_tokens, dtype=torch.bool, device=generator.device).scatter(1, regenerate, False)


# ---------------------------------------------------------------------------------------------------- images in
#: what a file that cannot be decoded raises (PIL: UnidentifiedImageError is an OSError; numpy: ValueError for a pickle
#: or object array, EOFError for an empty file, BadZipFile for a damaged archive)
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile)
#: PIL modes with 16-bit samples (PNG stores grey at 16 bits; Pillow opens it as I;16 or, older, as 32-bit I)
_PIL_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: integer dtypes whose range is known: their values are divided by the maximum
_INTEGER_RANGES = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
#: ITU-R 601-2 luma (PIL's "L"): colour -> grey
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_unit_float(array: np.ndarray, source: str) -> np.ndarray:
    """Pixel values -> float32 in [0, 1] by the TRUE range of their dtype, the one rule for images and masks:

    - ``bool`` (1-bit): False 0, True 1;
    - ``uint8`` (8-bit PNG, JPEG, palette colours): divided by 255; ``uint16`` (16-bit PNG): divided by 65535;
    - floats: taken as they are, and must lie in [0, 1] (else a one-line error naming ``source`` and the range found);
    - any other integer dtype (int8/16/32/64, uint32/64) is refused: its range is unknown (give uint8, uint16 or
      floats in [0, 1]).

    Nothing is clipped, so a 16-bit image is never saturated."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in _INTEGER_RANGES:
        return array.astype(np.float32) / _INTEGER_RANGES[array.dtype]
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        low, high = (float(np.min(values)), float(np.max(values))) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1):  # NaN fails every comparison
            raise UsageError(f"{source}: float pixel values must lie in [0, 1], found [{low:.6g}, {high:.6g}]")
        return values
    raise UsageError(f"{source}: pixels of dtype {array.dtype} have no known range; give uint8 (0-255), uint16 "
                     "(0-65535) or floats in [0, 1]")  # fmt: skip


def composite_alpha(image: np.ndarray, source: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` in [0, 1] -> ``(H, W, 1 or 3)``: a last channel of alpha (C = 2: grey + alpha,
    C = 4: RGBA) is composited over BLACK (colour x alpha: a transparent pixel is black); other channel counts are
    refused naming ``source``."""
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise UsageError(f"{source}: expected an image H x W or H x W x C with 1-4 channels (grey, grey+alpha, RGB, "
                         f"RGBA), got shape {tuple(image.shape)}")  # fmt: skip
    if image.shape[-1] in (2, 4):
        return image[..., :-1] * image[..., -1:]
    return image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W, 1 or 3)`` -> the tokenizer's ``channels``: grey repeated into RGB, RGB to grey by its luma."""
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return (image @ _LUMA)[..., None].astype(np.float32)
    return np.repeat(image, channels, axis=-1)


def read_image_file(path: Path) -> np.ndarray:
    """An image file's samples with a dtype that tells their range (for :func:`to_unit_float`): ``bool`` for 1-bit,
    ``uint16`` for 16-bit grey, ``float32`` for PIL's float mode, ``uint8`` for every other mode (palette and
    premultiplied or exotic modes converted to RGB(A) or grey(+alpha) first, keeping their alpha)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _pil_samples(image, path)
    except (*_READ_ERRORS, Image.DecompressionBombError) as err:
        raise UsageError(f"{path}: not a readable image ({type(err).__name__}: {_first_line(err)})") from None


def _pil_samples(image: Any, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=bool)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in _PIL_16_BIT:
        samples = np.asarray(image).astype(np.int64)
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise UsageError(f"{path}: 32-bit integer pixels in [{samples.min()}, {samples.max()}] are not 16-bit "
                             "samples (0-65535)")  # fmt: skip
        return samples.astype(np.uint16)
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert(("LA" if mode == "La" else "RGBA") if has_alpha else "RGB")
    return np.asarray(image)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def read_npz_images(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Every array of an ``.npz`` is a stack of images ``(N, H, W)`` or ``(N, H, W, C)`` (``arr_0`` is what ``sample``
    writes); image ``i`` of array ``key`` is named ``<key>_<i>`` (the key checked as a plain file name, since it becomes
    part of an output file name). Returns the images, their names and where each came from (``file:name``, for
    errors). An empty archive, a damaged one or an object array is one line naming the file."""
    try:
        with np.load(path) as data:  # allow_pickle stays False: no code runs on load
            arrays = {key: data[key] for key in data.files}
    except _READ_ERRORS as err:
        raise UsageError(f"{path}: not a readable .npz ({type(err).__name__}: {_first_line(err)})") from None
    images, names = [], []
    for key, stack in arrays.items():
        check_name(key, str(path), "array name")
        if stack.ndim not in (3, 4):
            raise UsageError(f"{path}: array {key!r} has shape {tuple(stack.shape)}; expected a stack of images "
                             "N x H x W or N x H x W x C")  # fmt: skip
        images.extend(stack)
        names.extend(f"{key}_{i}" for i in range(len(stack)))
    if not images:
        raise UsageError(f"{path}: the .npz holds no image (expected arrays N x H x W [x C], e.g. arr_0)")
    return images, names, [f"{path}:{name}" for name in names]


def read_folder_images(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The image files of a folder (sorted; or one image file), named by their stems, each checked as a plain name and
    unique (``a.png`` and ``a.jpg`` would write the same outputs)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    names = [check_name(f.stem, str(f), "image name") for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{path}: several images named {twice[0]!r} (e.g. .png and .jpg); their edits would have the "
                         "same file names")  # fmt: skip
    return [read_image_file(f) for f in files], names, [str(f) for f in files]


def load_images(source: str | os.PathLike, size: tuple[int, int], channels: int) -> tuple[torch.Tensor, list[str]]:
    """Images to edit, ``(B, C, H, W)`` in [0, 1], and their names (plain file names, used for the outputs): a folder
    of image files (sorted), one image file, or an ``.npz`` of image stacks (:func:`read_npz_images`). Values are
    converted by their true range (:func:`to_unit_float`), alpha composited over black, colour and grey matched to
    the tokenizer's ``channels``. Every image must have the tokenizer's size (edits keep pixels in place, so nothing
    is resized)."""
    path = Path(source)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        arrays, names, sources = read_npz_images(path)
    elif path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        arrays, names, sources = read_folder_images(path)
    else:
        raise UsageError(f"{path}: expected a folder of images, an image file or an .npz")
    images = []
    for source_name, array in zip(sources, arrays):
        if array.shape[:2] != tuple(size):
            raise UsageError(f"{source_name}: the image is {array.shape[1]}x{array.shape[0]}, the tokenizer takes "
                             f"{size[1]}x{size[0]} (crop or resize it first)")  # fmt: skip
        image = to_channels(composite_alpha(to_unit_float(array, source_name), source_name), channels)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))  # (C, H, W)
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
