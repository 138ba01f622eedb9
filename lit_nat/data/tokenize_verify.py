"""``python -m lit_nat tokenize-verify``: check a tokenised split, report on its tokens, and finalise it.

Every shard of the plan must exist with its record; its bytes must match the record's sha256 (a truncated or edited
tar is caught here); it must parse, name every member plainly (no separators or '..': a key never becomes a path,
:func:`lit_nat.core.io.check_name`), hold the planned number of samples (images minus skipped files, doubled with
flips; every ``<key>`` followed by ``<key>_flip``), ids of the right length inside the codebook and labels inside
the class range. The report (``tokenize_<split>_report.json``) adds a token histogram summary (codes used out of K,
entropy, the most frequent codes) and the samples per class; ``tokenize_<split>_skipped.txt`` lists the files that
could not be read. ``--decode N`` writes the first N samples decoded by the tokenizer as PNGs.

With ``--finalize`` and no problem found, the split is added to ``meta.json`` (merged with the splits already there,
under a file lock), which makes it readable by :class:`~lit_nat.data.TokenShardDataModule`.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nat.core.errors import DataError, UnsafeNameError
from lit_nat.core.io import atomic_write_json, atomic_write_text, child_path
from lit_nat.core.progress import progress
from lit_nat.data.imagefolder import FLIP_SUFFIX
from lit_nat.data.integrity import digest_problem, read_record
from lit_nat.data.meta import (
    META_FILE,
    TOKENS_FIELD,
    DatasetMeta,
    ShardInfo,
    SplitInfo,
    codebook_usage,
    exclusive_lock,
    read_metadata,
    write_metadata,
)
from lit_nat.data.samples import SampleLimits, decode_sample, iter_samples
from lit_nat.data.shards import CAPTIONS_FIELD, decode_tokens, shard_name
from lit_nat.data.tokenize_plan import TokenizeError, TokenizePlan, build_tokenizer, read_plan, record_path
from lit_nat.generation.visuals import write_image_png
from lit_nat.tokenizers import tokenizer_from_config

PREPROCESSING = "ADM centre crop (BOX halving, BICUBIC resize of the shorter side, centre square), RGB, /255"


def report_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"tokenize_{split}_report.json"


def skipped_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"tokenize_{split}_skipped.txt"


def check_shard(
    root: Path, plan: TokenizePlan, index: int, counts: np.ndarray, labels: np.ndarray,
    captions: CaptionStats | None = None,
) -> tuple:
    """Check shard ``index``; add its ids to ``counts``, labels to ``labels`` and its samples' caption lists to
    ``captions``.

    Returns ``(problems, record or None, samples)``, where ``samples`` are the parsed samples (for decoding).
    """
    name = shard_name(plan.split, index)
    tar, rec = root / name, record_path(root, plan.split, index)
    if not tar.exists():
        return [f"{name}: missing (not tokenised yet)"], None, []
    if not rec.exists():
        return [f"{name}: its record {rec.name} is missing"], None, []
    try:
        record = read_record(rec)
    except DataError as err:
        return [str(err)], None, []
    if record.get("plan") != plan.digest():
        return [f"{rec.name}: belongs to another plan"], None, []
    data = tar.read_bytes()
    problems = []
    if problem := digest_problem(name, len(data), hashlib.sha256(data).hexdigest(), record):
        problems.append(problem)
    try:
        samples = list(iter_samples(io.BytesIO(data), name))
    except UnsafeNameError as err:  # a member named like a path ('../../X.tokens.npy'): the shard fails
        return [*problems, str(err)], record, []
    except Exception as err:  # noqa: BLE001 - a broken tar is a finding, not a crash
        return [*problems, f"{name}: unreadable ({type(err).__name__}: {err})"], record, []
    expected = (record["num_images"] - len(record["skipped"])) * plan.samples_per_image()
    if len(plan.shard_images(index)) != record["num_images"]:
        problems.append(f"{name}: record says {record['num_images']} images, the plan {len(plan.shard_images(index))}")
    if not len(samples) == record["num_samples"] == expected:
        problems.append(
            f"{name}: {len(samples)} samples; record {record['num_samples']}, plan {expected} "
            f"({record['num_images']} images - {len(record['skipped'])} skipped, x{plan.samples_per_image()})"
        )
    keys, all_ids, all_labels = set(), [], []
    for j, sample in enumerate(samples):
        try:
            ids, label, texts = check_sample(plan, samples, j, keys, name)
        except DataError as err:  # the reader's message names the shard and the key
            problems.append(f"{err} (sample {j})")
            break
        except ValueError as err:
            problems.append(f"{name}: sample {j} ({sample['__key__']}): {err}")
            break
        if texts is not None and captions is not None:
            captions.add(texts)
        keys.add(sample["__key__"])
        all_ids.append(ids)
        all_labels.append(label)
    if all_ids:
        counts += np.bincount(np.concatenate(all_ids), minlength=plan.codebook_size)
        labels += np.bincount(np.asarray(all_labels), minlength=labels.size)
    return problems, record, samples


def check_sample(plan: TokenizePlan, samples: list[dict[str, Any]], j: int, keys: set[str], shard: str = "?") -> tuple:
    """Sample ``j`` of a shard against the plan: the reader's own checks (:func:`~lit_nat.data.samples.decode_sample`:
    ids, label, captions, text states), then what only a whole shard can tell: exactly the plan's members, a new key,
    flips in place. Returns ``(ids, label, captions or None)``; a ``ValueError`` says what is wrong."""
    sample, key = samples[j], samples[j]["__key__"]
    if set(sample) - {"__key__", "__url__"} != set(plan.sample_fields):
        raise ValueError(f"members {sorted(sample)}, expected {list(plan.sample_fields)}")
    limits = SampleLimits(plan.grid_size[0] * plan.grid_size[1], plan.codebook_size, len(plan.classes))
    decoded = decode_sample(sample, shard, limits)  # a DataError (a ValueError) naming shard and key
    if key in keys:
        raise ValueError("key appears twice")
    if plan.flip and (j % 2 == 1) != key.endswith(FLIP_SUFFIX):
        raise ValueError("originals and flips do not alternate")
    if plan.flip and j % 2 == 1 and key != samples[j - 1]["__key__"] + FLIP_SUFFIX:
        raise ValueError(f"is not the flip of the sample before it ({samples[j - 1]['__key__']})")
    return decoded["ids"], decoded["label"], decoded.get("captions") if CAPTIONS_FIELD in sample else None


def token_summary(counts: np.ndarray, top: int = 10) -> dict[str, Any]:
    total = int(counts.sum())
    p = counts[counts > 0] / max(total, 1)
    entropy = float(-(p * np.log2(p)).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return {
        "tokens": total,
        "codebook_size": int(counts.size),
        "codes_used": int((counts > 0).sum()),
        "entropy_bits": round(entropy, 4),
        "max_entropy_bits": round(float(np.log2(counts.size)), 4),
        "perplexity": round(2.0**entropy, 2),
        "most_frequent": [{"code": int(c), "fraction": round(float(counts[c]) / max(total, 1), 6)} for c in order],
    }


class CaptionStats:
    """Caption statistics of a captioned split as running counts (a split may hold millions of images): captions per
    image, words per caption, empty ones, the first examples."""

    def __init__(self) -> None:
        self.images = self.captions = self.words = self.empty = 0
        self.per_image = [math.inf, -math.inf]  # min, max
        self.words_range = [math.inf, -math.inf]
        self.examples: list[str] = []

    def add(self, texts: list[str]) -> None:
        self.images, self.captions = self.images + 1, self.captions + len(texts)
        self.per_image = [min(self.per_image[0], len(texts)), max(self.per_image[1], len(texts))]
        for text in texts:
            n = len(text.split())
            self.words, self.empty = self.words + n, self.empty + (not text.strip())
            self.words_range = [min(self.words_range[0], n), max(self.words_range[1], n)]
        if len(self.examples) < 3 and texts:
            self.examples.append(texts[0])

    def summary(self) -> dict[str, Any]:
        def span(low_high: list[float], total: int, count: int, digits: int) -> dict[str, Any]:
            low, high = (int(v) for v in low_high) if count else (0, 0)
            return {"min": low, "mean": round(total / count, digits) if count else 0.0, "max": high}

        return {"images": self.images, "captions": self.captions,
                "per_image": span(self.per_image, self.captions, self.images, 3),
                "words": span(self.words_range, self.words, self.captions, 2),
                "empty": self.empty, "examples": self.examples}  # fmt: skip


def publish_split(root: Path, plan: TokenizePlan, shards: list[ShardInfo], skipped: int,
                  counts: np.ndarray | None = None) -> DatasetMeta:  # fmt: skip
    """Add the split to ``meta.json`` (merged with the splits already there), atomically and under a lock, with its
    codebook usage from ``counts``, the token histogram of every shard as verified."""
    ours = DatasetMeta(plan.codebook_size, plan.grid_size, len(plan.classes), plan.tokenizer,
                       fields=plan.sample_fields, text_encoder=plan.text_encoder)  # fmt: skip
    with exclusive_lock(root / ".lit_nat-tokenize.lock"):
        base = read_metadata(root) if (root / META_FILE).exists() else ours
        if diffs := ours.differences(base):
            raise TokenizeError(f"{root / META_FILE} describes another token space: {'; '.join(diffs)}")
        if base.extra.get("classes", list(plan.classes)) != list(plan.classes):
            raise TokenizeError(f"{root / META_FILE} records other class names than the plan of {plan.split!r}")
        if base.fields != plan.sample_fields:
            raise TokenizeError(f"{root / META_FILE} holds splits with fields {base.fields}, this plan writes "
                                f"{plan.sample_fields}; use another root")  # fmt: skip
        info = {
            "source": plan.source,
            "num_images": plan.num_images,
            "skipped_images": skipped,
            "flip": plan.flip,
            "order": plan.order,
            "images_per_shard": plan.images_per_shard,
            "files_sha256": plan.files_sha256,
        }
        extra = {
            **base.extra,
            "classes": list(plan.classes),
            "resolution": plan.resolution,
            "preprocessing": PREPROCESSING,
            "tokenize": {**base.extra.get("tokenize", {}), plan.split: info},
        }
        usage = None if counts is None else codebook_usage(counts)
        meta = replace(base, extra=extra).with_split(plan.split, SplitInfo(tuple(shards)), usage)
        write_metadata(root, meta)
    return meta


def decode_samples(samples: list[dict], plan: TokenizePlan, out_dir: Path, tokenizer: Any, device: str) -> list[str]:
    """Decode samples with the tokenizer and write them as ``<out_dir>/<key>.png``; returns the file names."""

    ids = torch.from_numpy(np.stack([decode_tokens(s[TOKENS_FIELD]) for s in samples]).astype(np.int64))
    with torch.inference_mode():
        images = tokenizer.to(device).eval().decode(ids.to(device)).clamp(0, 1).cpu()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for sample, image in zip(samples, images):
        # a key is a name, never a path: the PNG lands in out_dir or nowhere (iter_samples refused such members too)
        path = child_path(out_dir, f"{sample['__key__']}.png", sample.get("__url__", "?"), "decoded sample name")
        write_image_png(image, path)
        names.append(path.name)
    return names


def verify_split(
    root: str | os.PathLike,
    split: str = "train",
    *,
    finalize: bool = False,
    decode: int = 0,
    tokenizer: Any = None,
    device: str = "cpu",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Check every shard of ``split`` against its plan and records; write the report and the skipped list; with
    ``finalize`` (and no problem) add the split to ``meta.json``; with ``decode`` write that many decoded samples
    (``tokenizer`` default: rebuilt from the plan's tokenizer config). Returns the report (``report["ok"]``)."""
    root = Path(root)
    plan = read_plan(root, split)
    scan = scan_shards(root, plan, decode, show_progress)
    counts, labels, problems, shards, skipped, first, captions = (scan.counts, scan.labels, scan.problems, scan.shards,
                                                                   scan.skipped, scan.first, scan.captions)  # fmt: skip
    numbered = [(p.name, p.stem.split("-", 1)[1]) for p in root.glob(f"{split}-[0-9]*.tar")]
    if stray := sorted(name for name, n in numbered if not n.isdigit() or int(n) >= plan.num_shards):
        problems.append(f"shards beyond the plan's {plan.num_shards}: {stray[:3]} (from another plan?)")
    atomic_write_text(skipped_path(root, split), "".join(f"{f}\t{r}\n" for f, r in skipped))
    # only for a split read whole (a broken shard's tokens are missing from the counts); finalising records it anew
    if not finalize and not problems and (problem := usage_problem(root, split, counts)):
        problems.append(problem)
    report: dict[str, Any] = {
        "split": split,
        "ok": not problems,
        "problems": problems,
        "num_shards": plan.num_shards,
        "num_images": plan.num_images,
        "skipped_images": len(skipped),
        "num_samples": sum(s.num_samples for s in shards),
        "expected_samples": (plan.num_images - len(skipped)) * plan.samples_per_image(),
        "flip": plan.flip,
        "tokens": token_summary(counts),
        "labels": label_summary(labels, plan.classes),
        "finalized": False,
        "path": str(report_path(root, split)),
    }
    if plan.captioned:
        report["captions"] = captions.summary()
    if decode and first:
        out_dir = root / f"tokenize_{split}_decoded"
        tokenizer = tokenizer or plan_tokenizer(plan)
        report["decoded"] = [str(out_dir / n) for n in decode_samples(first, plan, out_dir, tokenizer, device)]
    if finalize and not problems:
        # the usage is counted from the shards as they are now, not while they were written: a tokenize killed and
        # resumed (shards written by several processes, some twice) still records the histogram of what is there
        publish_split(root, plan, shards, len(skipped), counts)
        report["finalized"] = True
    atomic_write_json(report_path(root, split), report)
    return report


def usage_problem(root: Path, split: str, counts: np.ndarray) -> str | None:
    """A ``meta.json`` that lists ``split`` with a codebook usage other than its shards' (edited by hand, or shards
    replaced without finalising again); None when it agrees or records none."""
    if not (root / META_FILE).is_file():
        return None
    recorded = read_metadata(root).codebook_usage.get(split)
    found = codebook_usage(counts)
    if recorded is not None and recorded != found:
        return f"{root / META_FILE}: codebook_usage.{split} is {recorded}, but its shards hold {found}"
    return None


@dataclass
class ShardScan:
    """What reading every shard of a split found: token and label counts, problems, the shards' records, the skipped
    images, the first samples (to decode) and caption statistics."""

    counts: np.ndarray
    labels: np.ndarray
    problems: list[str] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    first: list[dict] = field(default_factory=list)
    captions: CaptionStats = field(default_factory=CaptionStats)


def scan_shards(root: Path, plan: Any, decode: int, show_progress: bool) -> ShardScan:
    """Check every shard of the plan against its record, counting tokens, labels and captions as it goes."""
    scan = ShardScan(np.zeros(plan.codebook_size, dtype=np.int64), np.zeros(len(plan.classes), dtype=np.int64))
    bar = progress(plan.num_shards, f"verifying {plan.split}", unit="shard", enabled=show_progress)
    for index in range(plan.num_shards):
        found, record, samples = check_shard(root, plan, index, scan.counts, scan.labels, scan.captions)
        bar.update(1)
        scan.problems += found
        if record is not None:
            scan.shards.append(ShardInfo(record["name"], record["num_samples"]))
            scan.skipped += [(s["file"], s["reason"]) for s in record["skipped"]]
        if len(scan.first) < decode and not found:
            scan.first += samples[: decode - len(scan.first)]
    bar.close()
    return scan


def label_summary(labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Samples per class: how many classes occur, the fewest and most samples, the first empty classes."""
    return {
        "classes": len(classes),
        "classes_present": int((labels > 0).sum()),
        "min_per_class": int(labels.min()),
        "max_per_class": int(labels.max()),
        "empty_classes": [classes[c] for c in np.flatnonzero(labels == 0)[:20]],
    }


def plan_tokenizer(plan: Any) -> Any:
    """The tokenizer the plan records, rebuilt (for ``--decode``); a one-line error if this machine cannot."""
    try:
        return tokenizer_from_config(plan.tokenizer)
    except Exception as err:  # noqa: BLE001 - e.g. weights not at the recorded path on this machine
        raise TokenizeError(
            f"--decode: cannot rebuild the plan's tokenizer {plan.tokenizer} ({type(err).__name__}: {err}); "
            f"pass --tokenizer, --checkpoint and --tokenizer_arg"
        ) from err


def tokenize_verify(root: str, split: str = "train", finalize: bool = False, decode: int = 0,
                    tokenizer: str | None = None, checkpoint: str | None = None, tokenizer_arg: list[str] | None = None,
                    device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Check a split written by `python -m lit_nat tokenize` (every shard complete, unmodified, with the planned sample
    counts), write tokenize_<split>_report.json (token histogram, samples per class) and tokenize_<split>_skipped.txt;
    with --finalize add the split to meta.json. Exit status 1 on any problem.

    Args:
        root: the data root given to tokenize as --out.
        split: split name.
        finalize: add the split to meta.json when every check passes.
        decode: decode the first N samples to PNGs.
        tokenizer: tokenizer for --decode (default: the plan's config).
        checkpoint: its weights (with --tokenizer).
        tokenizer_arg: further tokenizer arguments as KEY=VALUE (with --tokenizer).
        device: device for --decode (default: cuda when there is one).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a TokenizeError (a UsageError) reaches the command line's entry: one line, exit 2; problems found exit 1
    built = None if tokenizer is None else build_tokenizer(tokenizer, checkpoint, tokenizer_arg or [])
    report = verify_split(root, split, finalize=finalize, decode=decode, tokenizer=built, device=device,
                          show_progress=True)  # fmt: skip
    tokens, labels = report["tokens"], report["labels"]
    print(
        f"{split}: {report['num_samples']} samples in {report['num_shards']} shards ({report['num_images']} "
        f"images, {report['skipped_images']} skipped, flip {report['flip']}); codes used {tokens['codes_used']}/"
        f"{tokens['codebook_size']}, entropy {tokens['entropy_bits']} bits (max {tokens['max_entropy_bits']}); "
        f"classes present {labels['classes_present']}/{labels['classes']}; report {report['path']}"
    )
    for problem in report["problems"][:20]:
        print(f"PROBLEM: {problem}")
    if not report["ok"]:
        raise SystemExit(1)
    print(f"finalised: {split} is in {Path(root) / META_FILE}" if report["finalized"] else "OK")
    return report
