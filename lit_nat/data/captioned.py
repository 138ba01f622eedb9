"""Captioned image sources for text-to-image tokenisation: MS-COCO (a folder + ``captions_*.json``), img2dataset
webdataset folders (``*.tar`` of ``<key>.jpg`` + ``<key>.txt``, how CC3M and CC12M are usually downloaded), and your
own images: a folder with a ``.txt`` caption beside each image, or a folder and a table of ``file,caption`` rows (CSV
with a header, or JSON lines ``{"file": ..., "caption": ...}``; several rows of one file give it several captions).

Both give an :class:`~lit_nat.data.imagefolder.ImageList` with one class (label 0) and every caption of each image,
so :mod:`lit_nat.data.tokenize` tokenises them like an ImageNet folder (same plan, resume and verification).

- COCO: images in the order of their ids (as U-ViT's feature extraction), every caption of an image kept (5, sometimes
  more); an image of the json that is missing from the folder, or one without a caption, is skipped and listed.
- img2dataset: the shards in name order, the images of each in tar order; an image's caption is its ``.txt`` member
  (a ``.json`` member's ``caption`` when there is no ``.txt``); an image without one is skipped and listed. Images are
  read from inside the tars (``<shard>.tar::<member>``), never extracted.

A name read from a file (a COCO ``file_name``, a tar member) must be a plain file name
(:func:`lit_nat.core.io.check_name`): ``../x.jpg`` or ``a/b.jpg`` is a one-line
:class:`~lit_nat.core.errors.UnsafeNameError` naming the json or tar, never a path to follow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import defaultdict
from pathlib import Path

from lit_nat.core.io import check_name
from lit_nat.data.imagefolder import TAR_INDEX, ImageList, is_image_file

CAPTIONED_CLASSES = ("image",)  # captioned data has no classes: every sample has label 0


def list_coco(images: str | os.PathLike, captions_json: str | os.PathLike) -> tuple[ImageList, list[tuple[str, str]]]:
    """``(the captioned images of a COCO split, [(file, why skipped)])`` from its folder and captions json."""
    root, path = Path(images), Path(captions_json)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        annotations = [(int(a["image_id"]), str(a["caption"]).strip()) for a in data["annotations"]]
    except FileNotFoundError:
        raise FileNotFoundError(f"captions file {path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a COCO captions file (needs images[id, file_name] and annotations[image_id, "
                         f"caption]): {type(err).__name__}: {err}") from None  # fmt: skip
    captions: dict[int, list[str]] = defaultdict(list)
    for image_id, caption in annotations:
        captions[image_id].append(caption)
    present = set(os.listdir(root))
    files, texts, skipped = [], [], []
    for image_id in sorted(entries):
        name = check_name(entries[image_id], str(path), f"images[id={image_id}].file_name")  # a name in root, no path
        if name not in present:
            skipped.append((name, f"listed in {path.name} but not in {root}"))
        elif not captions.get(image_id):
            skipped.append((name, f"has no caption in {path.name}"))
        else:
            files.append(name)
            texts.append(tuple(captions[image_id]))
    if not files:
        raise ValueError(f"none of the {len(entries)} images of {path} is in {root} with a caption")
    return ImageList(root, CAPTIONED_CLASSES, tuple(files), (0,) * len(files), tuple(texts)), skipped


def list_img2dataset(folder: str | os.PathLike) -> tuple[ImageList, list[tuple[str, str]]]:
    """``(the captioned images of an img2dataset webdataset folder, [(member, why skipped)])``."""
    root = Path(folder)
    tars = sorted(p for p in root.glob("*.tar")) if root.is_dir() else []
    if not tars:
        raise FileNotFoundError(f"{root}: no webdataset shards (*.tar) here")
    files, texts, skipped = [], [], []
    for tar_path in tars:
        members: dict[str, dict[str, str]] = defaultdict(dict)
        try:
            with tarfile.open(tar_path, "r:") as tar:
                infos = [info for info in tar.getmembers() if info.isfile()]
                # the images' places, so reading them (in forked workers too) needs no second header walk
                TAR_INDEX[str(root / tar_path.name)] = {i.name: (i.offset_data, i.size) for i in infos}
                for info in infos:  # img2dataset writes flat members; one named like a path is refused
                    key, _, ext = check_name(info.name, str(tar_path), "member").partition(".")
                    if ext in ("txt", "json"):
                        members[key][ext] = tar.extractfile(info).read().decode("utf-8", errors="replace")
                    elif is_image_file(info.name):
                        members[key]["image"] = info.name
        except tarfile.TarError as err:
            skipped.append((tar_path.name, f"unreadable shard: {err}"))
            continue
        for found in members.values():  # tar order (dicts keep insertion order)
            if "image" not in found:
                continue
            caption = found.get("txt")
            if caption is None and "json" in found:
                try:
                    caption = (json.loads(found["json"] or "{}") or {}).get("caption")
                except (ValueError, AttributeError):  # not JSON, or not an object: this image only is skipped
                    caption = None
            if not caption or not caption.strip():
                skipped.append((f"{tar_path.name}::{found['image']}", "has no caption (.txt or json caption)"))
                continue
            files.append(f"{tar_path.name}::{found['image']}")
            texts.append((caption.strip(),))
    if not files:
        raise ValueError(f"{root}: no captioned image in its {len(tars)} shards")
    return ImageList(root, CAPTIONED_CLASSES, tuple(files), (0,) * len(files), tuple(texts)), skipped


def captioned_list(root: Path, captions: dict[str, list[str]], source: str,
                   skipped: list[tuple[str, str]]) -> tuple[ImageList, list[tuple[str, str]]]:  # fmt: skip
    """The ImageList of ``captions`` (file -> its captions), in file-name order; files missing from ``root`` or
    without a caption are skipped and listed."""
    present, files, texts = set(os.listdir(root)), [], []
    for name in sorted(captions):
        kept = tuple(c.strip() for c in captions[name] if c and c.strip())
        if name not in present:
            skipped.append((name, f"named in {source} but not in {root}"))
        elif not kept:
            skipped.append((name, f"has an empty caption in {source}"))
        else:
            files.append(name)
            texts.append(kept)
    if not files:
        raise ValueError(f"{source}: none of its {len(captions)} images is in {root} with a caption")
    return ImageList(root, CAPTIONED_CLASSES, tuple(files), (0,) * len(files), tuple(texts)), skipped


def read_caption_table(path: Path) -> dict[str, list[str]]:
    """``file -> captions`` of a CSV (header ``file,caption``) or JSON-lines table; a name must be a plain file name."""
    captions: dict[str, list[str]] = defaultdict(list)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # (its own message names no file)
        raise ValueError(f"{path}: the captions table is not UTF-8 text (byte {err.start}: {err.reason}); save it "
                         "as UTF-8") from None  # fmt: skip
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and not {"file", "caption"} <= set(rows[0]):
            raise ValueError(f"{path}: a captions CSV needs the header file,caption (got {sorted(rows[0])})")
        entries = [(row["file"], row["caption"], f"row {i + 2}") for i, row in enumerate(rows)]
    else:
        entries = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    row = json.loads(line)
                    entries.append((row["file"], row["caption"], f"line {i + 1}"))
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}: line {i + 1} is not {{\"file\": ..., \"caption\": ...}}: "
                                     f"{type(err).__name__}: {err}") from None  # fmt: skip
    for name, caption, where in entries:
        captions[check_name(str(name), str(path), f"{where}.file")].append(str(caption or ""))
    return captions


def list_caption_table(images: str | os.PathLike, table: str | os.PathLike) -> tuple[ImageList, list[tuple[str, str]]]:
    """``(your captioned images, [(file, why skipped)])`` from a folder and a ``file,caption`` CSV or JSON-lines."""
    root, path = Path(images), Path(table)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    return captioned_list(root, read_caption_table(path), path.name, [])


def has_caption_files(folder: Path) -> bool:
    """Whether a folder holds images with a ``.txt`` beside them (your own captioned images, not class folders)."""
    return folder.is_dir() and any(p.suffix == ".txt" and is_image_file(n) for p in folder.glob("*.txt")
                                   for n in os.listdir(folder) if Path(n).stem == p.stem)  # fmt: skip


def list_caption_files(folder: str | os.PathLike) -> tuple[ImageList, list[tuple[str, str]]]:
    """``(your captioned images, [(file, why skipped)])`` from a folder with ``<name>.txt`` beside ``<name>.jpg``; an
    image without its ``.txt`` is skipped and listed (one line of the text file per caption)."""
    root = Path(folder)
    names = sorted(os.listdir(root))
    texts = {Path(n).stem: root / n for n in names if n.endswith(".txt")}
    captions, skipped = {}, []
    for name in (n for n in names if is_image_file(n)):
        if Path(name).stem in texts:
            captions[name] = texts[Path(name).stem].read_text(encoding="utf-8", errors="replace").splitlines()
        else:
            skipped.append((name, f"has no {Path(name).stem}.txt beside it"))
    return captioned_list(root, captions, f"the .txt files of {root}", skipped)
