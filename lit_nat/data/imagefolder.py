"""Image folders in the ImageNet class-folder layout: listing, sample keys, and the ADM centre crop.

Layout: ``<root>/<class name>/**/<file>.{jpg,jpeg,png,gif}`` (extension case-insensitive, so ImageNet's ``.JPEG``
counts). A label is the index of the file's top-level class folder in the sorted class names, or in an explicit
class list (so that a val folder shares the train mapping). For ImageNet's flat class folders this is exactly the
official rule (the parent folder's index in the sorted folder names).

Preprocessing (:func:`center_crop_arr`) is the ADM centre crop the official feature extraction uses: halve the image
with a BOX filter while its shorter side is at least twice the target, BICUBIC-resize the shorter side to the target
(rounded sizes), then cut the centre square. No EXIF rotation, as in the official code.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lit_nat.core.io import check_name

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif"})
FLIP_SUFFIX = "_flip"


def is_image_file(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line; label = line index among the non-empty lines.

    Only the first word of a line counts and ``#`` starts a comment, so ImageNet's ``LOC_synset_mapping.txt``
    (``n01440764 tench, Tinca tinca``) works as it is.
    """
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:  # a class name is a class folder's name: never a path
            names.append(check_name(words[0], str(path), "class name"))
    if not names:
        raise ValueError(f"class list {path} holds no class names")
    if dupes := sorted(n for n, c in Counter(names).items() if c > 1):
        raise ValueError(f"class list {path} names some classes twice: {dupes[:5]}")
    return names


@dataclass(frozen=True)
class ImageList:
    """The images of a class-folder tree in their canonical order (class folder, then relative path).

    Attributes:
        root: the folder that was listed.
        classes: all class names; label = index in it.
        files: paths relative to ``root`` (POSIX), sorted by class folder name, then path.
        labels: the label of each file.
        captions: for captioned images (COCO, img2dataset), every caption of each file; None for class folders.
    """

    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]
    captions: tuple[tuple[str, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def reordered(self, order: Sequence[int]) -> ImageList:
        captions = None if self.captions is None else tuple(self.captions[i] for i in order)
        return ImageList(
            self.root, self.classes, tuple(self.files[i] for i in order), tuple(self.labels[i] for i in order), captions
        )

    def shuffled(self, seed: int) -> ImageList:
        """A deterministic shuffle: files sorted by a hash of ``(seed, path)``. Defined by us (not by a numpy
        generator whose stream may change between versions), so the order is the same on every machine, forever."""
        digest = [hashlib.blake2b(f"{seed}:{f}".encode(), digest_size=8).digest() for f in self.files]
        return self.reordered(sorted(range(len(self.files)), key=lambda i: (digest[i], self.files[i])))

    def sha256(self) -> str:
        """Hash of the ordered ``(label, path[, captions])`` list: two lists with the same hash give the same shards."""
        h = hashlib.sha256()
        for i, (label, f) in enumerate(zip(self.labels, self.files)):
            h.update(f"{label}\t{f}\n".encode())
            if self.captions is not None:
                h.update(("\t".join(self.captions[i]) + "\n").encode())
        return h.hexdigest()


def list_image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> ImageList:
    """List ``<root>/<class>/**/*.{jpg,jpeg,png,gif}`` in canonical order (symlinks followed, hidden folders skipped).

    Args:
        root: the split's folder, e.g. ``ILSVRC2012/train``.
        classes: the class names, label = index; default: the sorted class folder names. Every class folder must
            be in it (a val folder may hold fewer classes than the list).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: images lie directly in ``root`` (not a class-folder layout), a class folder is not in
            ``classes``, a class folder is empty (when the classes are the folders), or no image was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    entries = sorted(os.listdir(root))
    folders = [e for e in entries if not e.startswith(".") and (root / e).is_dir()]
    loose = [e for e in entries if is_image_file(e) and (root / e).is_file()]
    if loose:
        raise ValueError(
            f"{root} holds {len(loose)} images directly (e.g. {loose[0]}); expected one folder per class "
            f"(<root>/<class>/<image>). Move the images into class folders first (for ImageNet val, e.g. with "
            f"the labels of LOC_val_solution.csv)."
        )
    inferred = classes is None
    if inferred:
        classes = folders
    classes = tuple(classes)
    index = {name: i for i, name in enumerate(classes)}
    if unknown := [f for f in folders if f not in index]:
        raise ValueError(
            f"{root} has {len(unknown)} class folders that are not in the class list "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); give the list the train split used"
        )
    files: list[str] = []
    labels: list[int] = []
    for name in folders:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root).as_posix()
            found += [f"{rel}/{f}" for f in filenames if is_image_file(f)]
        if not found and inferred:  # a class with a label and no image: the model would learn nothing of it
            raise ValueError(f"{root / name} is an empty class folder; remove it or add images (with --classes, a "
                             "listed class may be absent from a split)")  # fmt: skip
        found.sort()
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in the class folders of {root}")
    return ImageList(root, classes, tuple(files), tuple(labels))


def sample_keys(files: Sequence[str]) -> list[str]:
    """A sample key per file: its relative path without extension, with ``/`` and ``.`` as ``_``
    (``n01440764/n01440764_10026.JPEG`` -> ``n01440764_n01440764_10026``).

    Keys are unique also with the flipped copies' ``_flip`` suffix: where two files would share a key (``x.jpg`` and
    ``x.png``), each of them gets a short hash of its path appended, so a key never depends on the list's order.
    """
    keys = []
    for f in files:
        key = f.rsplit(".", 1)[0].replace("::", "_").replace("/", "_").replace("\\", "_").replace(".", "_")
        keys.append(("k" + key) if key.startswith("__") else key)
    counts = Counter(keys) + Counter(k + FLIP_SUFFIX for k in keys)
    keys = [
        f"{k}_{hashlib.blake2b(f.encode(), digest_size=4).hexdigest()}"
        if counts[k] + counts[k + FLIP_SUFFIX] > 2
        else k
        for k, f in zip(keys, files)
    ]
    flips = {k + FLIP_SUFFIX for k in keys}
    if len(set(keys)) != len(keys) or flips & set(keys):  # only for names built to clash even after hashing
        raise ValueError("file names too alike to give unique sample keys; rename the clashing files")
    return keys


def center_crop_arr(pil_image: Image.Image, size: int) -> np.ndarray:
    """The ADM centre crop: ``(size, size, 3)`` uint8 RGB from any PIL image (grey, palette, CMYK, RGBA -> RGB).

    While the shorter side is at least ``2 * size``, halve both sides (integer division) with a BOX filter; then
    resize with BICUBIC so that the shorter side is ``size`` (the other side rounded); then cut the centre square
    (offsets rounded down).
    """
    image = pil_image if pil_image.mode == "RGB" else pil_image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size].copy()  # owned and writable (PIL arrays are read-only)


#: member name -> (data offset, size) of each webdataset tar (img2dataset) this process has read from: one header
#: walk per tar, then every image is one seek and read (tarfile's own lookup by name scans all members each time, and
#: a hash-shuffled order would otherwise keep every tar of a folder open in every worker); the listing of a webdataset
#: folder (:func:`lit_nat.data.captioned.list_img2dataset`) fills it as it walks the headers
TAR_INDEX: dict[str, dict[str, tuple[int, int]]] = {}


def _tar_index(tar_path: str) -> dict[str, tuple[int, int]]:
    if tar_path not in TAR_INDEX:
        with tarfile.open(tar_path, "r:") as tar:
            TAR_INDEX[tar_path] = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    return TAR_INDEX[tar_path]


def open_image(path: str) -> Any:
    """A file or, for ``<tar path>::<member name>`` (an image inside a webdataset shard), the member's bytes."""
    if "::" not in path:
        return path
    tar_path, member = path.split("::", 1)
    entry = _tar_index(tar_path).get(member)
    if entry is None:
        raise FileNotFoundError(f"{member} is not a file in {tar_path}")
    offset, size = entry
    with open(tar_path, "rb") as stream:
        stream.seek(offset)
        return io.BytesIO(stream.read(size))


def load_crop(path: str | os.PathLike, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode and centre-crop one file (or ``<tar>::<member>``): ``(array, None)``, or ``(None, reason)`` for one that
    is not a readable image (truncated, not an image, too large for PIL's decompression-bomb limit, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF/palette chatter would flood the log over a million files
            with Image.open(open_image(str(path))) as image:
                image.load()
                return center_crop_arr(image, size), None
    except Exception as err:  # noqa: BLE001 - any failure means "skip this file", with the reason recorded
        return None, f"{type(err).__name__}: {err}"


class CroppedImages(torch.utils.data.Dataset):
    """Map-style dataset for a DataLoader: item ``i`` -> ``(i, (size, size, 3) uint8 array or None, reason)``."""

    def __init__(self, root: str | os.PathLike, files: Sequence[str], size: int) -> None:
        self.root = str(root)
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        return (i, *load_crop(os.path.join(self.root, self.files[i]), self.size))  # (a "::" member keeps its tar)


def collate_crops(items: Sequence[tuple[int, np.ndarray | None, str | None]]) -> dict[str, Any]:
    """``{"index": [i...] (all items, in order), "ok": [bool...], "images": uint8 (n_ok, H, W, 3),
    "errors": {i: reason}}``."""
    good = [arr for _, arr, _ in items if arr is not None]
    return {
        "index": [i for i, _, _ in items],
        "ok": [arr is not None for _, arr, _ in items],
        "images": torch.from_numpy(np.stack(good)) if good else None,
        "errors": {i: err for i, arr, err in items if arr is None},
    }
