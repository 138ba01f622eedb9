"""Images to evaluate: an ``.npz`` in ADM's layout (``arr_0`` uint8 (N, H, W, 3), ``arr_1`` optional labels; written by
``python -m lit_nat sample``, by the official AutoNAT/ENAT/ADM code, or anyone's) or a folder of image files.

An ``.npz``'s images are streamed from the zip member a batch at a time (as ADM's evaluator reads them), so 50,000
images at 256 (10 GB) are never whole in memory. Both kinds become float batches (B, 3, H, W) in [0, 1]: ``x / 255``,
the conversion of :func:`~lit_nat.metrics.reference.folder_images`, fed to the extractor at their size; the extractor
resizes them exactly as it resizes the decoded images of a validation.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from lit_nat.metrics.reference import folder_images, image_files

ADM_LAYOUT = "ADM's layout: arr_0 uint8 (N, H, W, 3) images, arr_1 (N,) integer labels (optional)"


@dataclass
class ImageSource:
    """Where images come from and what is known of them before they are read."""

    path: Path
    kind: str  # "npz" or "folder"
    num_images: int
    image_size: tuple[int, int]
    labels: np.ndarray | None = None
    files: list[Path] | None = None  # a folder's images, listed once
    resolution: int | None = None  # a folder's centre crop

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float batches (B, 3, H, W) in [0, 1], in the source's order."""
        if self.kind == "folder":
            return folder_images(self.path, batch_size, resolution=self.resolution, files=self.files)
        return npz_images(self.path, batch_size)


def npz_keys(path: Path) -> list[str]:
    """The array names of an ``.npz`` (one error naming a file that is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err}); expected {ADM_LAYOUT}") from None


@contextmanager
def npz_member(path: Path, key: str) -> Iterator[tuple[IO[bytes], tuple[int, ...], np.dtype]]:
    """The stream of array ``key`` of an ``.npz`` after its header, with its shape and dtype."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(stream)
        if fortran_order:
            raise ValueError(f"{path}: '{key}' is stored in Fortran order; save it C-ordered ({ADM_LAYOUT})")
        yield stream, tuple(shape), dtype


def npz_images(path: Path, batch_size: int) -> Iterator[torch.Tensor]:
    """The images of an ADM-layout ``.npz``, ``batch_size`` rows at a time, as floats in [0, 1]."""
    with npz_member(path, "arr_0") as (stream, shape, _):
        row_bytes = int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            data = bytearray(stream.read(count * row_bytes))  # writable: torch.from_numpy needs it
            if len(data) != count * row_bytes:
                raise ValueError(f"{path}: 'arr_0' ends within image {start + len(data) // row_bytes} of {shape[0]} "
                                 "(a truncated file?)")  # fmt: skip
            batch = np.frombuffer(data, dtype=np.uint8).reshape(count, *shape[1:])
            yield torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0


def npz_labels(path: Path, num_images: int) -> np.ndarray | None:
    """``arr_1`` of an ADM-layout file (None without one), checked against the images."""
    if "arr_1" not in npz_keys(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        labels = data["arr_1"]
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'arr_1' is {labels.dtype} {labels.shape}, expected integer labels ({num_images},) "
                         f"({ADM_LAYOUT})")  # fmt: skip
    return labels


def open_npz(path: Path) -> ImageSource:
    """An ADM-layout ``.npz``: its header and labels are read, its images only when iterated."""
    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise ValueError(f"{path}: no 'arr_0' (it has {sorted(keys)}); expected {ADM_LAYOUT}")
    with npz_member(path, "arr_0") as (_, shape, dtype):
        pass
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise ValueError(f"{path}: 'arr_0' is {dtype} {shape}, expected {ADM_LAYOUT}")
    return ImageSource(path, "npz", shape[0], (shape[1], shape[2]), labels=npz_labels(path, shape[0]))


def open_folder(path: Path, resolution: int | None) -> ImageSource:
    """A folder of images (sorted by path); with ``resolution`` each is centre-cropped to that side (the ADM crop)."""
    from PIL import Image

    files = image_files(path)
    if resolution:
        size = (resolution, resolution)
    else:
        with Image.open(files[0]) as first:
            size = (first.height, first.width)
    return ImageSource(path, "folder", len(files), size, files=files, resolution=resolution)


def open_images(path: str | Path, resolution: int | None = None) -> ImageSource:
    """An ADM-layout ``.npz`` or an image folder; a missing path, a file that is neither, or an ``.npz`` without
    images is one error naming it."""
    path = Path(path)
    if path.is_dir():
        return open_folder(path, resolution)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected an .npz in {ADM_LAYOUT}, or a folder of images")
    return open_npz(path)
