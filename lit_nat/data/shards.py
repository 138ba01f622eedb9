"""Pre-tokenised webdataset shards: the ONE writer every preparation path uses (metadata: :mod:`lit_nat.data.meta`).

Layout of a data root::

    <root>/meta.json                 # DatasetMeta, written last and atomically: its presence means "complete"
    <root>/train-000000.tar, ...     # one tar per shard, listed (with sample counts) in meta.json
    <root>/val-000000.tar, ...

Each sample in a tar has a ``__key__`` (no dots or slashes) and the members ``<key>.tokens.npy`` (a ``.npy`` of dtype
uint16 and shape ``(h * w,)``, raster order), ``<key>.cls`` (the class label as ASCII digits) and, for text-conditioned
data, ``<key>.txt`` (UTF-8). Readers take the shard list from ``meta.json`` and never glob, so a stray or
half-written file can never be read by accident.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from lit_nat.core.io import AtomicFile
from lit_nat.data.meta import (  # noqa: F401  (re-exported: the shard format's names live together)
    CAPTIONS_FIELD,
    FORMAT,
    LABEL_FIELD,
    META_FILE,
    TEXT_FIELD,
    TEXT_STATES_FIELD,
    TOKENS_FIELD,
    DatasetMeta,
    MetadataError,
    ShardInfo,
    SplitInfo,
    codebook_usage,
    read_metadata,
    write_metadata,
)

MAX_CODES = 65536  # tokens are stored as uint16


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``train-000003.tar``."""
    return f"{split}-{index:06d}.tar"


def encode_tokens(tokens: Any, num_tokens: int, codebook_size: int) -> bytes:
    """Validate one sample's ids and serialise them as a uint16 ``.npy``."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size != num_tokens:
        raise ValueError(f"expected {num_tokens} token ids per sample (the grid), got {arr.size}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(f"token id {lo} is negative")
    if hi >= MAX_CODES:
        raise ValueError(f"token id {hi} >= {MAX_CODES} cannot be stored: shards hold ids as uint16")
    if hi >= codebook_size:
        raise ValueError(f"token id {hi} is outside the codebook [0, {codebook_size})")
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.uint16), allow_pickle=False)
    return buf.getvalue()


def make_sample(
    key: str,
    tokens: Any,
    label: int,
    *,
    num_tokens: int,
    codebook_size: int,
    num_classes: int,
    captions: Sequence[str] | None = None,
    text_states: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One validated sample of the format as bytes, ready for a tar: ``{"__key__", "tokens.npy", "cls"
    [, "captions.json"[, "text.npz"]]}``.

    The key must be non-empty, without ``.``, ``/``, ``\\`` or a leading ``__`` (webdataset splits member names at
    the first dot); the label must be in ``[0, num_classes)``; the ids as in :func:`encode_tokens`. ``captions`` are
    all captions of the image (at least one); ``text_states`` their cached text-encoder states
    (:func:`encode_text_states`).
    """
    label = int(label)
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside [0, {num_classes})")
    key = str(key)
    if not key or any(c in key for c in "./\\") or key.startswith("__"):
        raise ValueError(f"sample key must be non-empty without '.', '/', '\\' or a leading '__', got {key!r}")
    sample: dict[str, Any] = {
        "__key__": key,
        TOKENS_FIELD: encode_tokens(tokens, num_tokens, codebook_size),
        LABEL_FIELD: str(label).encode("ascii"),
    }
    if captions is not None:
        captions = [str(c) for c in captions]
        if not captions:
            raise ValueError(f"sample {key!r}: a captioned sample needs at least one caption")
        sample[CAPTIONS_FIELD] = json.dumps(captions, ensure_ascii=False).encode("utf-8")
    if text_states is not None:
        if captions is None or len(text_states["tokens"]) != len(captions):
            raise ValueError(f"sample {key!r}: text states need one row per caption")
        sample[TEXT_STATES_FIELD] = encode_text_states(text_states)
    return sample


def encode_text_states(states: dict[str, Any]) -> bytes:
    """Cached text-encoder states of C captions as one ``.npz``: ``tokens`` (C, L, E) and ``pooled`` (C, E) in float16
    (118 KB per caption for CLIP-L's 77 x 768), ``mask`` (C, L) bool."""
    arrays = {k: np.asarray(torch.as_tensor(states[k]).detach().cpu().numpy()) for k in ("tokens", "mask", "pooled")}
    buf = io.BytesIO()
    np.savez(buf, tokens=arrays["tokens"].astype(np.float16), pooled=arrays["pooled"].astype(np.float16),
             mask=arrays["mask"].astype(bool))  # fmt: skip
    return buf.getvalue()


def decode_text_states(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {k: arrays[k] for k in ("tokens", "mask", "pooled")}


def shard_tar(stream: Any) -> wds.TarWriter:
    """The one tar encoding of every shard (:class:`ShardWriter`'s and ``tokenize``'s): members exactly as
    :func:`make_sample` encoded them, mtime fixed so the same samples always give the same bytes."""
    return wds.TarWriter(stream, encoder=False, mtime=0)  # an int mtime: a float adds a 1 KiB PAX header per member


def tar_bytes(samples: Iterable[dict[str, Any]]) -> bytes:
    """A whole shard in memory (``tokenize`` hashes it into its record before publishing it)."""
    buf = io.BytesIO()
    tar = shard_tar(buf)
    for sample in samples:
        tar.write(sample)
    tar.close()  # closes the tar stream, not the BytesIO
    return buf.getvalue()


def decode_tokens(data: bytes) -> np.ndarray:
    """The uint16 ids of one ``tokens.npy`` member."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint16 or arr.ndim != 1:
        raise ValueError(f"tokens.npy must hold a 1-D uint16 array, got {arr.dtype} {arr.shape}")
    return arr


class ShardWriter:
    """Writes one split of a data root: fixed-size tar shards plus its entry in ``meta.json``.

    Every shard is streamed into a temporary file (:class:`lit_nat.core.io.AtomicFile`) that appears under its shard
    name only once complete, so a file with a shard name is always whole. ``close()`` (or leaving the ``with`` block
    normally) finishes the last shard and, with ``update_metadata``, merges the split into ``meta.json``; an exception
    inside the ``with`` block removes this writer's unfinished shard and the shards it completed, and leaves
    ``meta.json`` as it was.

    It refuses (``ValueError``) a root whose ``meta.json`` describes another tokenizer, codebook, grid or class count,
    and (``FileExistsError``) to replace existing shards or a split already listed, unless ``overwrite=True``. It never
    deletes files it did not write.

    Args:
        root: the data root (created if missing).
        split: split name, e.g. ``"train"``; no dashes, dots or slashes.
        codebook_size: K, at most 65536 (ids are stored as uint16).
        grid_size: token grid ``(h, w)``.
        num_classes: labels are in ``[0, num_classes)``.
        tokenizer_config: :meth:`Tokenizer.config` of the tokenizer that made the ids.
        samples_per_shard: samples per tar (the last may hold fewer).
        update_metadata: merge the split, with its codebook usage, into ``meta.json`` on close. A preparation
            writing several splits can pass ``False`` and publish them together with :func:`write_metadata` (each
            writer's :attr:`codebook_usage` beside its split), so ``meta.json`` appears only complete.
        overwrite: allow replacing this split's shards and metadata entry.
        extra: provenance stored under ``extra`` in ``meta.json``.
        text_encoder: config of the text encoder the captions are for (and whose states ``text_states`` are).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        codebook_size: int,
        grid_size: tuple[int, int],
        num_classes: int,
        tokenizer_config: dict[str, Any],
        samples_per_shard: int = 1000,
        update_metadata: bool = True,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
    ) -> None:
        if not split or any(c in split for c in "-./\\"):
            raise ValueError(f"split name must be non-empty without '-', '.', '/' or '\\', got {split!r}")
        if not 1 <= codebook_size <= MAX_CODES:
            raise ValueError(f"codebook_size {codebook_size} cannot be stored as uint16 tokens (at most {MAX_CODES})")
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.root = Path(root)
        self.split = split
        self.samples_per_shard = samples_per_shard
        self.update_metadata = update_metadata
        self.meta = DatasetMeta(
            codebook_size,
            (int(grid_size[0]), int(grid_size[1])),
            num_classes,
            dict(tokenizer_config),
            extra=extra or {},
            text_encoder=None if text_encoder is None else dict(text_encoder),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_root(overwrite)
        self._shards: list[ShardInfo] = []
        self._tar: wds.TarWriter | None = None
        self._file: AtomicFile | None = None
        self._count = 0  # samples in the open shard
        self._index = 0  # samples written to the split
        self._code_counts = np.zeros(codebook_size, dtype=np.int64)  # the split's histogram of token ids
        self._fields: tuple[str, ...] | None = None
        self._closed = False

    @classmethod
    def for_tokenizer(cls, root: str | os.PathLike, split: str, tokenizer: Any, num_classes: int, **kwargs: Any):
        """A writer whose codebook, grid and config come from ``tokenizer`` (a :class:`Tokenizer`)."""
        return cls(
            root,
            split,
            codebook_size=tokenizer.codebook_size,
            grid_size=tokenizer.grid_size,
            num_classes=num_classes,
            tokenizer_config=tokenizer.config(),
            **kwargs,
        )

    def _check_root(self, overwrite: bool) -> None:
        meta_path = self.root / META_FILE
        existing = read_metadata(self.root) if meta_path.exists() else None
        if existing is not None and (diffs := self.meta.differences(existing)):
            raise ValueError(
                f"{meta_path} describes a different data set ({'; '.join(diffs)}; existing != new). Write into "
                f"another root; nothing was changed."
            )
        old = sorted(p.name for p in self.root.glob(f"{self.split}-[0-9]*.tar"))
        listed = existing is not None and self.split in existing.splits
        if (old or listed) and not overwrite:
            raise FileExistsError(
                f"{self.root} already holds split {self.split!r} ({', '.join(old[:3]) or 'listed in ' + META_FILE}"
                f"{', ...' if len(old) > 3 else ''}); refusing to overwrite it. Choose another root, remove those "
                f"files, or pass overwrite=True."
            )
        for record in self.root.glob(f"{self.split}-[0-9]*.json"):
            # tokenize's records (sha256) of the shards about to be replaced: the reader would refuse the new ones
            record.unlink()
        if listed:
            # The old entry would describe shards we are about to replace: drop it first, so meta.json never lists
            # a half-rewritten split.
            write_metadata(self.root, existing.with_split(self.split, None))

    def _path(self, index: int) -> Path:
        return self.root / shard_name(self.split, index)

    def write(
        self,
        tokens: Any,
        label: int,
        text: str | None = None,
        key: str | None = None,
        captions: Sequence[str] | None = None,
        text_states: dict[str, Any] | None = None,
    ) -> None:
        """Append one sample: ``tokens`` of ``h * w`` ids in ``[0, codebook_size)``, its class ``label``, optionally its
        ``captions`` (``text``: one caption) with their cached ``text_states``, and a ``key`` (default: the running
        index in the split). Every sample of a split carries the same members."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if text is not None:
            if captions is not None:
                raise ValueError("give text (one caption) or captions, not both")
            captions = [text]
        key = f"{self._index:09d}" if key is None else str(key)
        sample = make_sample(
            key,
            tokens,
            label,
            num_tokens=self.meta.num_tokens,
            codebook_size=self.meta.codebook_size,
            num_classes=self.meta.num_classes,
            captions=captions,
            text_states=text_states,
        )
        fields = tuple(k for k in sample if k != "__key__")
        if self._fields is not None and fields != self._fields:
            raise ValueError(f"sample {key!r} has the members {fields}, the split's others {self._fields}")
        self._fields = fields
        if self._tar is None:
            self._file = AtomicFile(self._path(len(self._shards)))
            self._tar = shard_tar(self._file.file)
        self._tar.write(sample)
        ids = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        self._code_counts += np.bincount(ids.reshape(-1), minlength=self.meta.codebook_size)  # (validated above)
        self._count += 1
        self._index += 1
        if self._count == self.samples_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()  # closes the tar stream, not the file
        index = len(self._shards)
        self._file.commit()  # atomic: the shard name appears only when complete
        self._shards.append(ShardInfo(shard_name(self.split, index), self._count))
        self._tar, self._file, self._count = None, None, 0

    @property
    def fields(self) -> tuple[str, ...]:
        """The members each sample of this split carries (for :attr:`DatasetMeta.fields`)."""
        return self._fields or (TOKENS_FIELD, LABEL_FIELD)

    @property
    def split_info(self) -> SplitInfo:
        """The shards completed so far (all of them after :meth:`close`)."""
        return SplitInfo(tuple(self._shards))

    def close(self) -> SplitInfo:
        """Finish the last shard, update ``meta.json`` (if asked) and return the split's per-shard counts."""
        if self._closed:
            return self.split_info
        if self._tar is not None:
            self._finish_shard()
        self._closed = True
        info = self.split_info
        if self.update_metadata:
            meta_path = self.root / META_FILE
            base = read_metadata(self.root) if meta_path.exists() else self.meta
            if diffs := self.meta.differences(base):  # someone changed the root while we were writing
                raise ValueError(f"{meta_path} changed during writing ({'; '.join(diffs)}); not updating it")
            base = replace(base, fields=self.fields, extra={**base.extra, **self.meta.extra})
            write_metadata(self.root, base.with_split(self.split, info, self.codebook_usage))
        return info

    @property
    def codebook_usage(self) -> dict[str, Any]:
        """How the samples written so far use the codebook (:func:`~lit_nat.data.meta.codebook_usage`), recorded in
        ``meta.json`` on close, where a run's health compares its predictions and samples with it."""
        return codebook_usage(self._code_counts)

    def abort(self) -> None:
        """Remove the partial shard and the shards this writer completed; ``meta.json`` is not touched."""
        if self._file is not None:
            try:
                self._tar.close()  # (writes the tar's end blocks into the temporary file, which is then discarded)
            finally:
                self._file.discard()
        for shard in self._shards:
            (self.root / shard.name).unlink(missing_ok=True)
        self._shards, self._tar, self._file, self._closed = [], None, None, True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
