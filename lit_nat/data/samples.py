"""One token-shard sample: reading a tar's samples, checking and decoding them, drawing a caption, batching.

Decoded samples are ``{"ids": uint16 array, "label": int, "key": str}`` plus, for captioned shards, the drawn
``"text"`` and (with cached text-encoder states) ``"text_emb"``, ``"text_mask"``, ``"text_pooled"``.
"""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from lit_nat.core.errors import DataError, UnsafeNameError
from lit_nat.core.io import check_name
from lit_nat.data.integrity import check_shard
from lit_nat.data.shards import (
    CAPTIONS_FIELD,
    LABEL_FIELD,
    TEXT_FIELD,
    TEXT_STATES_FIELD,
    TOKENS_FIELD,
    decode_text_states,
    decode_tokens,
)


def iter_samples(stream: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard's tar stream, as webdataset sample dicts (the one tar reader of shards: training,
    evaluation and ``tokenize-verify`` all read through it); ``name`` appears in webdataset's and our errors.

    Every member must be a plain file name (:func:`lit_nat.core.io.check_name`): a sample's key comes from it and may
    become a path (``tokenize-verify --decode`` writes ``<key>.png``), so ``../../X.tokens.npy`` is an
    :class:`~lit_nat.core.errors.UnsafeNameError` naming the shard, never a key."""
    return group_by_keys(_plain_members(tar_file_expander([{"url": name, "stream": stream}]), name))


def _plain_members(files: Iterator[dict[str, Any]], shard: str) -> Iterator[dict[str, Any]]:
    for entry in files:
        if "fname" in entry:  # (the expander also yields an empty dict at the end of each tar)
            check_name(entry["fname"], shard, "member")
        yield entry


def read_range(path: str | os.PathLike, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Samples ``[start, stop)`` of one tar, as webdataset sample dicts (``__key__``, ``tokens.npy``, ``cls``, ...).

    Uses webdataset's tar iteration; the tar is streamed, and closed as soon as ``stop`` is reached. A tar that differs
    from its record (:func:`lit_nat.data.integrity.check_shard`, once per process), cannot be parsed, has a member
    that is not a plain name, or holds fewer samples than ``stop`` is a :class:`~lit_nat.core.errors.DataError` naming
    it.
    """
    check_shard(path)
    path = str(path)
    index = -1
    try:
        with open(path, "rb") as stream:
            for index, sample in enumerate(iter_samples(stream, path)):
                if index >= start:
                    yield sample
                if index + 1 >= stop:
                    return  # without parsing the next sample
    except UnsafeNameError as err:  # (its message names the shard and the member)
        raise DataError(str(err)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such shard (the metadata lists it)") from None
    except (tarfile.TarError, OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: unreadable after {index + 1} samples ({_first_line(err)})") from None
    if index + 1 < stop:
        raise DataError(f"{path} holds {index + 1} samples, but the metadata promised at least {stop}")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@dataclass(frozen=True)
class SampleLimits:
    """What every sample of a split must satisfy (from ``meta.json``); ``None`` skips that check."""

    num_tokens: int | None = None
    codebook_size: int | None = None
    num_classes: int | None = None


def decode_sample(sample: dict[str, Any], shard: str = "?", limits: SampleLimits = SampleLimits()) -> dict[str, Any]:
    """webdataset sample dict -> ``{"ids": uint16 array, "label": int, "key": str[, "text": str]}``, checked against
    ``limits``; a sample that breaks the format is a :class:`~lit_nat.core.errors.DataError` naming shard and key."""
    where = f"{shard}: sample {sample.get('__key__', '?')!r}"
    missing = [f for f in (TOKENS_FIELD, LABEL_FIELD) if f not in sample]
    if missing:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where} lacks {missing} (it has {members}): a damaged tar or another format")
    try:
        ids = decode_tokens(sample[TOKENS_FIELD])
    except ValueError as err:
        raise DataError(f"{where}: {TOKENS_FIELD}: {err}") from None
    if limits.num_tokens is not None and ids.size != limits.num_tokens:
        raise DataError(f"{where}: {ids.size} token ids, expected {limits.num_tokens} (the grid of meta.json)")
    if limits.codebook_size is not None and ids.size and int(ids.max()) >= limits.codebook_size:
        raise DataError(f"{where}: token id {int(ids.max())} is outside the codebook [0, {limits.codebook_size})")
    raw = sample[LABEL_FIELD]
    try:
        label = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: label {raw[:20]!r} is not an integer") from None
    if label < 0 or (limits.num_classes is not None and label >= limits.num_classes):
        raise DataError(
            f"{where}: label {label} is outside [0, {limits.num_classes}) (the null class never comes from data)"
        )
    out = {"ids": ids, "label": label, "key": sample["__key__"]}
    try:
        if CAPTIONS_FIELD in sample:
            out["captions"] = json.loads(sample[CAPTIONS_FIELD].decode("utf-8"))
        elif TEXT_FIELD in sample:
            out["captions"] = [sample[TEXT_FIELD].decode("utf-8")]
        if TEXT_STATES_FIELD in sample:
            out["text_states"] = decode_text_states(sample[TEXT_STATES_FIELD])
    except (UnicodeDecodeError, ValueError, KeyError, OSError) as err:
        raise DataError(f"{where}: unreadable captions or text states ({_first_line(err)})") from None
    captions = out.get("captions")
    if captions is not None and (not isinstance(captions, list) or not captions):
        raise DataError(f"{where}: {CAPTIONS_FIELD} must be a non-empty list of captions")
    if "text_states" in out and len(out["text_states"]["tokens"]) != len(captions or ()):
        raise DataError(f"{where}: {TEXT_STATES_FIELD} has {len(out['text_states']['tokens'])} rows for "
                        f"{len(captions or ())} captions")  # fmt: skip
    return out


def pick_caption(sample: dict[str, Any], seed: int, epoch: int) -> dict[str, Any]:
    """One of a captioned sample's captions (and its cached states) for this access: drawn with a generator seeded by
    (seed, epoch, key), so it is the same on a resumed run and, over epochs, covers every caption of the image."""
    captions = sample.pop("captions", None)
    if captions is None:
        return sample
    index = 0
    if len(captions) > 1:
        index = int(np.random.default_rng([seed, epoch, zlib.crc32(sample["key"].encode())]).integers(len(captions)))
    sample["text"] = captions[index]
    states = sample.pop("text_states", None)
    if states is not None:
        sample["text_emb"], sample["text_mask"], sample["text_pooled"] = (states[k][index] for k in
                                                                          ("tokens", "mask", "pooled"))  # fmt: skip
    return sample


@dataclass(frozen=True)
class Unreadable:
    """Stands for a planned sample that could not be read (a damaged tar), so batches keep their planned size."""

    shard: str
    reason: str


def collate(samples: Sequence[dict[str, Any]], keys: bool = False) -> dict[str, Any]:
    """Decoded samples -> one batch dict of tensors (with their keys if ``keys``)."""
    batch: dict[str, Any] = {
        "ids": torch.from_numpy(np.stack([s["ids"] for s in samples]).astype(np.int64)),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
    }
    if keys:
        batch["key"] = [s["key"] for s in samples]
    if "text" in samples[0]:
        batch["text"] = [s["text"] for s in samples]
    if "text_emb" in samples[0]:  # cached text-encoder states of the drawn captions
        for name in ("text_emb", "text_mask", "text_pooled"):
            batch[name] = torch.from_numpy(np.stack([s[name] for s in samples]))
    return batch
