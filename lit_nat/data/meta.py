"""The metadata of a token-shard root: ``<root>/meta.json`` (:class:`DatasetMeta`), read and written atomically.

``meta.json`` names the token space (codebook, grid, classes, tokenizer) and lists every shard of every split with its
sample count; readers take the shard list from it and never glob. See :mod:`lit_nat.data.shards` for the shards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lit_nat.core.errors import LitNatError
from lit_nat.core.io import atomic_write_json, check_name

FORMAT = "lit_nat.tokens/1"
META_FILE = "meta.json"
TOKENS_FIELD = "tokens.npy"
LABEL_FIELD = "cls"
TEXT_FIELD = "txt"
CAPTIONS_FIELD = "captions.json"  # every caption of the image, a JSON list of strings
TEXT_STATES_FIELD = "text.npz"  # cached text-encoder states of those captions: tokens (C, L, E) fp16, mask, pooled


class MetadataError(LitNatError, ValueError):
    """A ``meta.json`` that is unreadable, of an unknown format, or with a missing or ill-typed key."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar file of a split: its file name (relative to the root) and how many samples it holds."""

    name: str
    num_samples: int


@dataclass(frozen=True)
class SplitInfo:
    """The ordered shards of one split (``train``, ``val``, ...)."""

    shards: tuple[ShardInfo, ...]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def shard_sizes(self) -> list[int]:
        return [s.num_samples for s in self.shards]


@dataclass(frozen=True)
class DatasetMeta:
    """Everything a reader (and, through the DataModule, the model) must know about a tokenised data root.

    Args:
        codebook_size: number of token ids K; ids are in ``[0, K)``.
        grid_size: token grid ``(h, w)``; each sample holds ``h * w`` ids in raster order.
        num_classes: number of class labels; labels are in ``[0, num_classes)``.
        tokenizer: the tokenizer's :meth:`~lit_nat.tokenizers.Tokenizer.config`, to decode ids back to images.
        splits: split name -> its shards.
        fields: the members every sample carries (``tokens.npy``, ``cls`` and, for captioned data,
            ``captions.json`` (or a single ``txt``) and, when the text-encoder states are cached, ``text.npz``).
        text_encoder: the text encoder the captions are meant for (its config), and the one whose states
            ``text.npz`` holds: a model is never built for another encoder than the cached states'.
        extra: free-form provenance (source data set, seed, ...), not interpreted.
        codebook_usage: split name -> how the split's tokens use the codebook (:func:`codebook_usage`), recorded
            when the split is written, so a run compares its predictions and samples with the data's usage without
            reading the shards; absent in ``meta.json`` written before it existed (and for splits written by
            :class:`~lit_nat.data.shards.ShardWriter`).
    """

    codebook_size: int
    grid_size: tuple[int, int]
    num_classes: int
    tokenizer: dict[str, Any]
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    fields: tuple[str, ...] = (TOKENS_FIELD, LABEL_FIELD)
    extra: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] | None = None
    codebook_usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def split(self, name: str) -> SplitInfo:
        """The split ``name``, or a clear error listing the splits there are."""
        if name not in self.splits:
            raise MetadataError(f"the data set has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def with_split(self, name: str, info: SplitInfo | None, usage: dict[str, Any] | None = None) -> DatasetMeta:
        """A copy with split ``name`` set to ``info`` (removed when ``None``) and its codebook usage to ``usage``
        (a usage recorded for the split's former shards is dropped: it no longer describes them)."""
        splits = {k: v for k, v in self.splits.items() if k != name}
        usages = {k: v for k, v in self.codebook_usage.items() if k != name}
        if info is not None:
            splits[name] = info
            if usage is not None:
                usages[name] = dict(usage)
        return replace(self, splits=splits, codebook_usage=usages)

    def differences(self, other: DatasetMeta) -> list[str]:
        """What makes ``other`` describe a different token space (empty when shards of both may share a root)."""
        diffs = []
        for key in ("codebook_size", "grid_size", "num_classes", "tokenizer", "text_encoder"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                diffs.append(f"{key} {theirs!r} != {mine!r}")
        return diffs

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "codebook_size": self.codebook_size,
            "grid_size": list(self.grid_size),
            "num_classes": self.num_classes,
            "tokenizer": dict(self.tokenizer),
            "fields": list(self.fields),
            "text_encoder": None if self.text_encoder is None else dict(self.text_encoder),
            "splits": {
                name: {
                    "num_samples": info.num_samples,
                    "shards": [{"name": s.name, "num_samples": s.num_samples} for s in info.shards],
                }
                for name, info in self.splits.items()
            },
            "extra": dict(self.extra),
            # only when recorded: a meta.json without usage stays byte-identical to the files of older versions
            **({"codebook_usage": {k: dict(v) for k, v in self.codebook_usage.items()}} if self.codebook_usage else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "meta.json") -> DatasetMeta:
        """Validate and build; every error names ``source``, the key, what was expected and what was found."""
        check = _Checker(source)
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fmt = check.get(data, "format", "format", f"the string {FORMAT!r}")
        if fmt != FORMAT:
            raise check.fail("format", f"{FORMAT!r} (this version of lit_nat reads no other)", fmt)
        codebook = check.count(check.get(data, "codebook_size", "codebook_size", "an integer >= 1"), "codebook_size")
        grid = check.get(data, "grid_size", "grid_size", "a list [h, w] of 2 positive integers")
        if not isinstance(grid, list) or len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
            raise check.fail("grid_size", "a list [h, w] of 2 positive integers", grid)
        num_classes = check.count(check.get(data, "num_classes", "num_classes", "an integer >= 1"), "num_classes")
        tokenizer = check.get(data, "tokenizer", "tokenizer", "a tokenizer config object with a 'name'")
        if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("name"), str):
            raise check.fail("tokenizer", "a tokenizer config object with a string 'name'", tokenizer)
        fields = data.get("fields", [TOKENS_FIELD, LABEL_FIELD])
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields) or TOKENS_FIELD not in fields:
            raise check.fail("fields", f"a list of member names including {TOKENS_FIELD!r}", fields)
        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise check.fail("extra", "an object", extra)
        text_encoder = data.get("text_encoder")
        named = isinstance(text_encoder, dict) and isinstance(text_encoder.get("name"), str)
        if text_encoder is not None and not named:
            raise check.fail("text_encoder", "null or a text encoder config object with a string 'name'", text_encoder)
        raw_splits = check.get(data, "splits", "splits", "an object {split name: {num_samples, shards}}")
        if not isinstance(raw_splits, dict):
            raise check.fail("splits", "an object {split name: {num_samples, shards}}", raw_splits)
        splits = {name: check.split(raw, f"splits.{name}") for name, raw in raw_splits.items()}
        usage = check.usage(data.get("codebook_usage", {}), splits)
        return cls(codebook, (grid[0], grid[1]), num_classes, tokenizer, splits, tuple(fields), extra, text_encoder,
                   usage)  # fmt: skip


def codebook_usage(counts: Any) -> dict[str, Any]:
    """How a histogram of token ids (``counts[k]`` = occurrences of code k, length K) uses the codebook: the share of
    codes that occur (``codes_used``, in [0, 1]), the perplexity (exp of the entropy: the number of equally used codes
    it is worth) and the number of ``tokens`` counted."""
    counts = [int(c) for c in counts]
    total = sum(counts)
    entropy = -sum(c / total * math.log(c / total) for c in counts if c > 0) if total else 0.0
    return {"codes_used": sum(c > 0 for c in counts) / max(len(counts), 1), "perplexity": round(math.exp(entropy), 4),
            "tokens": total}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
    """The checks of :meth:`DatasetMeta.from_dict`, each error naming the file, the key path, what was expected and
    what was found."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: Any = None, missing: bool = False) -> MetadataError:
        found = "it is missing" if missing else f"got {got!r}"
        return MetadataError(f"{self.source}: key {key!r} must be {expected}; {found}")

    def get(self, mapping: dict, key: str, path: str, expected: str) -> Any:
        if key not in mapping:
            raise self.fail(path, expected, missing=True)
        return mapping[key]

    def count(self, value: Any, path: str, minimum: int = 1) -> int:
        if not _is_int(value) or value < minimum:
            raise self.fail(path, f"an integer >= {minimum}", value)
        return value

    def split(self, raw: Any, where: str) -> SplitInfo:
        """One entry of ``splits``: its shards (plain file names, counts) and a total equal to their sum."""
        if not isinstance(raw, dict):
            raise self.fail(where, "an object {num_samples, shards}", raw)
        raw_shards = self.get(raw, "shards", f"{where}.shards", "a list of {name, num_samples} objects")
        if not isinstance(raw_shards, list):
            raise self.fail(f"{where}.shards", "a list of {name, num_samples} objects", raw_shards)
        shards = []
        for i, shard in enumerate(raw_shards):
            at = f"{where}.shards[{i}]"
            if not isinstance(shard, dict):
                raise self.fail(at, "an object {name, num_samples}", shard)
            name = self.get(shard, "name", f"{at}.name", "a file name in the data root")
            if not isinstance(name, str):
                raise self.fail(f"{at}.name", "a plain file name in the data root (no directories)", name)
            check_name(name, self.source, f"key '{at}.name'")  # the reader opens root / name: never a path
            count = self.get(shard, "num_samples", f"{at}.num_samples", "an integer >= 0")
            shards.append(ShardInfo(name, self.count(count, f"{at}.num_samples", 0)))
        info = SplitInfo(tuple(shards))
        total = self.count(self.get(raw, "num_samples", f"{where}.num_samples", "an integer >= 0"),
                           f"{where}.num_samples", 0)  # fmt: skip
        if total != info.num_samples:
            raise self.fail(f"{where}.num_samples", f"the sum of its shards' counts ({info.num_samples})", total)
        return info

    def usage(self, raw: Any, splits: dict[str, SplitInfo]) -> dict[str, dict[str, Any]]:
        """``codebook_usage``: for listed splits only, ``codes_used`` in [0, 1], ``perplexity`` >= 1 (0 for no
        tokens) and ``tokens`` an integer >= 0."""
        expected = "an object {split name: {codes_used, perplexity, tokens}}"
        if not isinstance(raw, dict):
            raise self.fail("codebook_usage", expected, raw)
        for name, entry in raw.items():
            where = f"codebook_usage.{name}"
            if name not in splits:
                raise self.fail(where, f"the usage of a listed split ({sorted(splits)})", name)
            if not isinstance(entry, dict):
                raise self.fail(where, "an object {codes_used, perplexity, tokens}", entry)
            used, perplexity = (self.get(entry, k, f"{where}.{k}", "a number") for k in ("codes_used", "perplexity"))
            if not _is_number(used) or not 0 <= used <= 1:
                raise self.fail(f"{where}.codes_used", "a number in [0, 1]", used)
            if not _is_number(perplexity) or not (perplexity >= 1 or perplexity == 0):
                raise self.fail(f"{where}.perplexity", "a number >= 1", perplexity)
            self.count(self.get(entry, "tokens", f"{where}.tokens", "an integer >= 0"), f"{where}.tokens", 0)
        return {name: dict(entry) for name, entry in raw.items()}

def how_to_prepare(root: str | os.PathLike) -> str:
    """The hint for a data root without ``meta.json``: the digits preparation for a digits root, else ``tokenize``."""
    root = Path(root)
    if "digits" in root.name:
        prepare = "digits_text" if "text" in root.name else "digits"  # the captioned preparation of the text demo
        return (f"Prepare it with `python data/prepare_digits.py --root {root}`, or pass `--data.prepare {prepare}` "
                f"to let the DataModule do it.")  # fmt: skip
    return (f"Tokenise the images first, e.g. `python -m lit_nat tokenize --images /data/ILSVRC2012/train --out {root} "
            f"--split train --tokenizer vqgan --checkpoint <vqgan.pth>` (and --split val), or point --data.root at a "
            f"prepared root.")  # fmt: skip


def read_metadata(root: str | os.PathLike) -> DatasetMeta:
    """Read and validate ``<root>/meta.json``.

    Raises:
        FileNotFoundError: no ``meta.json`` (the message says how to prepare data).
        MetadataError: unreadable JSON, unknown format, or a missing or ill-typed key (named in the message).
    """
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no token-shard metadata at {path}. {how_to_prepare(root)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetadataError(f"{path}: not valid JSON ({err})") from err
    return DatasetMeta.from_dict(data, source=str(path))


def write_metadata(root: str | os.PathLike, meta: DatasetMeta) -> Path:
    """Write ``<root>/meta.json`` atomically (temporary file + rename): readers see the old or the new file, never
    a torn one. Returns the path."""
    return atomic_write_json(Path(root) / META_FILE, meta.to_dict())


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An inter-process lock (``flock``, released by the OS if the holder dies); a no-op where unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
