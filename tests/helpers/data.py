"""Tiny captioned image folders in the layouts of MS-COCO (a json of captions beside the images) and img2dataset
(CC3M-style tar shards of ``.jpg`` + ``.txt`` + ``.json``); tampering with a shard as a hostile writer would (renamed
members, a record rehashed to match)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = ["a red bus", "a cat on the table", "a dog", "the red table", "a bus on the table", "a red cat"]


def image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_coco(root: Path) -> tuple[Path, Path]:
    """6 images with 2-3 captions each, one more listed in the json but missing, one without any caption."""
    folder = root / "train2014"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i in range(8):
        name = f"COCO_train2014_{i:012d}.jpg"
        images.append({"id": 100 - i, "file_name": name})  # ids in reverse: the listing follows ids, not names
        if i != 6:  # image 6 is listed but not in the folder
            image(i).save(folder / name)
        if i != 7:  # image 7 has no caption
            for j in range(2 + i % 2):
                annotations.append({"image_id": 100 - i, "id": 10 * i + j, "caption": f" {CAPTIONS[(i + j) % 6]} "})
    captions = root / "captions_train2014.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    return folder, captions


def make_img2dataset(root: Path) -> Path:
    """Two shards of img2dataset output: 000000.jpg + .txt + .json; one image without a caption."""
    root.mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for k in range(4):
                key = f"{shard:05d}{k:04d}"
                buf = io.BytesIO()
                image(10 * shard + k).save(buf, format="JPEG")
                members = {f"{key}.jpg": buf.getvalue(), f"{key}.json": json.dumps({"key": key}).encode()}
                if (shard, k) != (1, 2):
                    members[f"{key}.txt"] = CAPTIONS[(shard + k) % 6].encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def tar_members(shard: Path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every member of a tar, in order."""
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def write_tar(shard: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar of exactly these members (PAX, so any unicode name is stored as given)."""
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def renamed_shard(shard: Path, rename) -> None:
    """Rewrite a shard with each member's key replaced by ``rename(key)`` and its record's ``bytes``/``sha256``
    updated to match (what a hostile or buggy writer would do: the digest cannot tell)."""
    members = [(rename(name.split(".", 1)[0]) + "." + name.split(".", 1)[1], data) for name, data in tar_members(shard)]
    write_tar(shard, members)
    rehash_record(shard)


def rehash_record(shard: Path) -> None:
    """Make the record beside ``shard`` describe its current bytes."""
    record_path = shard.with_suffix(".json")
    record = json.loads(record_path.read_text())
    data = shard.read_bytes()
    record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    record_path.write_text(json.dumps(record))


def listing(*folders: Path) -> dict[Path, set[str]]:
    """The entries of each folder (to show that nothing was written beside or above a data root)."""
    return {folder: set(os.listdir(folder)) for folder in folders}
