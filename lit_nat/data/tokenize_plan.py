"""The plan and the per-shard records of ``python -m lit_nat tokenize`` (see :mod:`lit_nat.data.tokenize`).

The plan (``tokenize_<split>_plan.json``) fixes everything the shards depend on, so two runs with equal plans write
identical shards and a run against a root with another plan is refused. A shard is complete when its ``.tar`` and its
record (``<split>-NNNNNN.json``, with the tar's sha256) are both present; the record is written first.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from lit_nat.core.errors import UsageError
from lit_nat.core.io import atomic_write_bytes, atomic_write_text
from lit_nat.data.imagefolder import ImageList, read_class_list
from lit_nat.data.integrity import read_record
from lit_nat.data.meta import (
    CAPTIONS_FIELD,
    LABEL_FIELD,
    META_FILE,
    TEXT_STATES_FIELD,
    TOKENS_FIELD,
    DatasetMeta,
    read_metadata,
)
from lit_nat.data.shards import shard_name, tar_bytes
from lit_nat.tokenizers import TOKENIZERS, load_tokenizer

PLAN_FORMAT = "lit_nat.tokenize/1"
PATCH = 16  # the VQGAN's downsampling factor: resolutions must be multiples of it


class TokenizeError(UsageError):
    """A refused run: a mismatched output root, bad options, or an inconsistent shard; nothing was changed. A
    :class:`~lit_nat.core.errors.UsageError`: the command line prints it as one line and exits 2, as for every
    mistake."""


def plan_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"tokenize_{split}_plan.json"


def record_path(root: str | os.PathLike, split: str, index: int) -> Path:
    return Path(root) / f"{split}-{index:06d}.json"


@dataclass(frozen=True)
class TokenizePlan:
    """What a tokenisation of one split produces; two runs with equal plans write identical shards.

    ``source`` (the image folder) is for the record only: the same images may be mounted elsewhere on a resume.
    """

    split: str
    resolution: int
    flip: bool
    images_per_shard: int
    order: str  # "sorted" or "shuffled:<seed>"
    num_images: int
    files_sha256: str  # ImageList.sha256() of the ordered list
    classes: tuple[str, ...]
    tokenizer: dict[str, Any]
    codebook_size: int
    grid_size: tuple[int, int]
    source: str = ""
    captioned: bool = False
    text_encoder: dict[str, Any] | None = None
    cache_text: bool = False

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.images_per_shard)

    def shard_images(self, index: int) -> range:
        """Positions (in the ordered image list) of the images of shard ``index``."""
        return range(index * self.images_per_shard, min((index + 1) * self.images_per_shard, self.num_images))

    def samples_per_image(self) -> int:
        return 2 if self.flip else 1

    def to_dict(self) -> dict[str, Any]:
        data = {"format": PLAN_FORMAT, **json.loads(json.dumps(asdict(self)))}
        for key, default in (("captioned", False), ("text_encoder", None), ("cache_text", False)):
            if data[key] == default:  # absent when unused: class-folder plans keep the digest they always had
                del data[key]
        return data

    @property
    def sample_fields(self) -> tuple[str, ...]:
        """The members of every sample this plan writes."""
        extra = (CAPTIONS_FIELD,) if self.captioned else ()
        return (TOKENS_FIELD, LABEL_FIELD, *extra, *((TEXT_STATES_FIELD,) if self.cache_text else ()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> TokenizePlan:
        if data.get("format") != PLAN_FORMAT:
            raise TokenizeError(f"{source}: not a {PLAN_FORMAT} plan (format {data.get('format')!r})")
        names = [f.name for f in fields(cls)]
        optional = ("source", "captioned", "text_encoder", "cache_text")  # (plans made before captions existed)
        if missing := [n for n in names if n not in data and n not in optional]:
            raise TokenizeError(f"{source}: keys {missing} are missing")
        for key in ("resolution", "images_per_shard", "num_images", "codebook_size"):  # sizes and ranges come of them
            if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1:
                raise TokenizeError(f"{source}: key {key!r} must be an integer >= 1; got {data[key]!r:.80}")
        kwargs = {n: data[n] for n in names if n in data}
        kwargs["classes"], kwargs["grid_size"] = tuple(kwargs["classes"]), tuple(kwargs["grid_size"])
        return cls(**kwargs)

    def digest(self) -> str:
        """sha256 of everything but ``source``: stored in every shard record to tie it to this plan."""
        data = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def differences(self, other: TokenizePlan) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = []
        for key in mine:
            if key != "source" and mine[key] != theirs.get(key):
                shown = "differ" if key in ("classes", "files_sha256") else f"{theirs.get(key)!r} != {mine[key]!r}"
                diffs.append(f"{key} {shown}")
        return diffs


def read_plan(root: str | os.PathLike, split: str) -> TokenizePlan:
    path = plan_path(root, split)
    if not path.is_file():
        raise TokenizeError(f"no tokenisation plan {path}: run `python -m lit_nat tokenize --out {root} ...` first")
    try:
        plan = TokenizePlan.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as err:  # a damaged or foreign file
        raise TokenizeError(f"{path}: not a readable tokenisation plan ({type(err).__name__}: {err})") from None
    if plan.split != split:  # the plan's split names its shards' files: it must be the one its own file name says
        raise TokenizeError(f"{path}: key 'split' is {plan.split!r:.80}, not {split!r}")
    return plan


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def classes_path(root: str | os.PathLike) -> Path:
    return Path(root) / "classes.txt"


def _refuse_other_plan(path: Path, plan: TokenizePlan) -> None:
    if path.exists() and (diffs := plan.differences(read_plan(path.parent, plan.split))):
        raise TokenizeError(
            f"{path} plans another tokenisation ({'; '.join(diffs)}; existing != new). Shards of different plans "
            f"must not mix: use another --out, or the options of the existing plan. Nothing was changed."
        )


def claim_root(root: Path, plan: TokenizePlan) -> None:
    """Write the plan (and ``classes.txt``), or check that the plan there is the same; refuse a root whose other
    splits or ``meta.json`` have another token space or other class names.

    The plan is published with a hard link (atomic and exclusive), so array tasks that start together agree on one.
    """
    path = plan_path(root, plan.split)
    _refuse_other_plan(path, plan)
    meta = read_metadata(root) if (root / META_FILE).exists() else None
    others = [read_plan(root, p.name[len("tokenize_") : -len("_plan.json")]) for p in root.glob("tokenize_*_plan.json")]
    others = [o for o in others if o.split != plan.split]
    known = [list(o.classes) for o in others] + ([meta.extra["classes"]] if meta and "classes" in meta.extra else [])
    if classes_path(root).exists():
        known.append(read_class_list(classes_path(root)))
    if any(names != list(plan.classes) for names in known):
        raise TokenizeError(
            f"{root} holds splits with other class names (labels would mean other classes); pass the class list "
            f"they used: --classes {classes_path(root)}"
        )
    for other in others:
        for key in ("resolution", "tokenizer", "codebook_size", "grid_size"):
            if getattr(other, key) != getattr(plan, key):
                raise TokenizeError(f"split {other.split!r} in {root} was tokenised with another {key}")
    if meta is not None:
        ours = DatasetMeta(plan.codebook_size, plan.grid_size, len(plan.classes), plan.tokenizer,
                           text_encoder=plan.text_encoder)  # fmt: skip
        if diffs := ours.differences(meta):
            raise TokenizeError(f"{root / META_FILE} describes another token space ({'; '.join(diffs)})")
        if plan.split in meta.splits and not path.exists():
            raise TokenizeError(f"{root / META_FILE} already lists split {plan.split!r}, not made by tokenize")
    if not classes_path(root).exists():
        atomic_write_text(classes_path(root), "".join(f"{name}\n" for name in plan.classes))
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # a private name, then linked: first task wins
        _write_json(tmp, plan.to_dict())
        try:
            os.link(tmp, path)  # fails if another task got there first: then compare below
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a benign race (same plan) at worst
            os.replace(tmp, path)
        tmp.unlink(missing_ok=True)
    _refuse_other_plan(path, plan)


def shard_complete(root: Path, plan: TokenizePlan, index: int) -> bool:
    """Whether shard ``index`` is done: its tar exists (then its record must too, and be of this plan)."""
    tar, record = root / shard_name(plan.split, index), record_path(root, plan.split, index)
    if not tar.exists():
        return False
    if not record.exists():
        raise TokenizeError(
            f"{tar} exists without its record {record.name}, which tokenize writes before the shard: it was not "
            f"written by this plan. Move it away or use another --out (nothing was deleted)."
        )
    if read_record(record).get("plan") != plan.digest():  # (a damaged record: one line naming it)
        raise TokenizeError(f"{record} belongs to another plan; use another --out (nothing was deleted)")
    return True


def write_shard(root: Path, plan: TokenizePlan, index: int, samples: list[dict], skipped: list[tuple[str, str]]):
    """Publish one shard: record first, then the tar, each atomically (see the module docstring)."""
    data = tar_bytes(samples)
    images = plan.shard_images(index)
    record = {
        "format": PLAN_FORMAT,
        "plan": plan.digest(),
        "split": plan.split,
        "shard": index,
        "name": shard_name(plan.split, index),
        "first_image": images.start,
        "num_images": len(images),
        "num_samples": len(samples),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
    }
    _write_json(record_path(root, plan.split, index), record)
    atomic_write_bytes(root / shard_name(plan.split, index), data)


def tokenizer_kwargs(name: str, checkpoint: str | None = None, args: list[str] | None = None,
                     resolution: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of tokenizer ``name`` from ``KEY=VALUE`` arguments (values parsed as YAML), ``checkpoint=``
    if given, and ``image_size=resolution`` when the tokenizer takes an ``image_size`` and none was given."""

    kwargs: dict[str, Any] = {}
    for arg in args or []:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise TokenizeError(f"--tokenizer_arg expects KEY=VALUE, got {arg!r}")
        try:  # safe_load: a tag such as !!python/object/apply:os.system is refused, never constructed
            kwargs[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or " ".join(str(err).split())  # (str(err) spans lines)
            raise TokenizeError(f"--tokenizer_arg {arg!r}: not a plain YAML value ({problem})") from None
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    if name not in TOKENIZERS:
        raise TokenizeError(f"unknown tokenizer {name!r}; registered: {sorted(TOKENIZERS)}")
    if resolution is not None and "image_size" not in kwargs:
        if "image_size" in inspect.signature(TOKENIZERS[name]).parameters:
            kwargs["image_size"] = resolution
    return kwargs


def build_tokenizer(name: str, checkpoint: str | None = None, args: list[str] | None = None, resolution=None):
    """``load_tokenizer(name, **tokenizer_kwargs(...))``; arguments the tokenizer does not take (or misses) are a
    one-line :class:`TokenizeError` naming them."""
    kwargs = tokenizer_kwargs(name, checkpoint, args, resolution)
    try:
        return load_tokenizer(name, **kwargs)
    except TypeError as err:  # a missing or unknown keyword: the user's --checkpoint / --tokenizer_arg
        raise TokenizeError(f"tokenizer {name!r} with {sorted(kwargs)}: {err} (give --checkpoint PATH and "
                            f"--tokenizer_arg KEY=VALUE as it needs)") from None  # fmt: skip


def make_plan(
    listing: ImageList,
    split: str,
    tokenizer: Any,
    resolution: int,
    flip: bool,
    images_per_shard: int,
    order: str,
    text_encoder: dict[str, Any] | None = None,
    cache_text: bool = False,
) -> TokenizePlan:
    return TokenizePlan(
        split=split,
        resolution=resolution,
        flip=flip,
        images_per_shard=images_per_shard,
        order=order,
        num_images=len(listing),
        files_sha256=listing.sha256(),
        classes=listing.classes,
        tokenizer=json.loads(json.dumps(tokenizer.config())),
        codebook_size=int(tokenizer.codebook_size),
        grid_size=(int(tokenizer.grid_size[0]), int(tokenizer.grid_size[1])),
        source=str(Path(listing.root).resolve()),
        captioned=listing.captions is not None,
        text_encoder=None if text_encoder is None else json.loads(json.dumps(text_encoder)),
        cache_text=bool(cache_text),
    )
