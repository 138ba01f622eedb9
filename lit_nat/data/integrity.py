"""Shard records and integrity: a shard read for training is the shard ``tokenize`` wrote.

``tokenize`` writes, before each shard ``<split>-NNNNNN.tar``, its record ``<split>-NNNNNN.json`` with the tar's
``bytes`` and ``sha256`` (see :mod:`lit_nat.data.tokenize_plan`). Where such a record exists, the reader
(:func:`lit_nat.data.samples.read_range`) checks the shard against it before its first read in a process and caches
the verdict by (path, size, mtime): the samples' own checks (ids in the codebook, labels in range) cannot see a flipped
bit inside an id that stays in range, a digest can. Shards without a record (``ShardWriter``'s: the digits demo,
user-written roots) are read as before. ``tokenize-verify`` checks the same records with the same message.

Cost (``scripts/benchmark_reliability.py --cases shard``, a 1 GB shard, this project's 2-core CPU): sha256 runs at
680-820 MB/s while the reader parses the tar at 16-20 MB/s, so the check adds about 1.3 s (2-3 %) to a process's first
read of that shard and nothing to later ones (two ``stat`` calls). Hashing the bytes as they stream by would cost the
same but could only refuse a shard after its samples were used, and a partial range would never be checked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lit_nat.core.errors import DataError
from lit_nat.core.io import file_sha256

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: str(shard path) -> (size, mtime_ns, record mtime_ns) of a shard this process found equal to its record
_VERIFIED: dict[str, tuple[int, int, int]] = {}


def record_of(shard: str | os.PathLike) -> Path:
    """The record beside a shard: ``train-000003.tar`` -> ``train-000003.json``."""
    return Path(shard).with_suffix(".json")


def _fail(path: Path, key: str, expected: str, got: Any) -> DataError:
    return DataError(f"{path}: key {key!r} must be {expected}; got {got!r:.80}")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A shard record, checked: an object whose ``name``, ``bytes``, ``sha256``, ``num_images``, ``num_samples`` and
    ``skipped`` have the types ``tokenize`` writes; else a one-line :class:`DataError` naming the file and key."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable shard record ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: a shard record must be a JSON object; got {type(record).__name__}")
    if not isinstance(record.get("name"), str):
        raise _fail(path, "name", "the shard's file name", record.get("name"))
    if not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
        raise _fail(path, "sha256", "64 lower-case hex digits", record.get("sha256"))
    for key in ("bytes", "num_images", "num_samples"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(path, key, "an integer >= 0", value)
    skipped = record.get("skipped")
    if not isinstance(skipped, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("reason"), str)
            for s in skipped):  # fmt: skip
        raise _fail(path, "skipped", "a list of {file, reason} strings", skipped)
    return record


def digest_problem(shard: str | os.PathLike, size: int, sha256: str, record: dict[str, Any]) -> str | None:
    """The one-line finding, starting with ``shard`` as given, when a shard of ``size`` bytes and digest ``sha256`` is
    not the one its record describes (``None`` when it is): the same words for the reader and ``tokenize-verify``."""
    name = Path(shard).name
    if record["name"] != name:
        return f"{shard}: its record {record_of(shard).name} describes {record['name']!r}, not this shard"
    if size != record["bytes"] or sha256 != record["sha256"]:
        return (f"{shard}: {size} bytes whose sha256 differs from its record {record_of(shard).name} "
                f"({record['bytes']} bytes): truncated, bit-rotted or modified since tokenize wrote it")  # fmt: skip
    return None


def check_shard(shard: str | os.PathLike) -> None:
    """Refuse (:class:`DataError`, one line naming the shard) a shard that differs from its record; a shard without
    a record passes. Hashes a shard once per process: the verdict is cached until its size or mtime (or its
    record's) changes."""
    shard, record_path = Path(shard), record_of(shard)
    try:
        stat, record_stat = shard.stat(), record_path.stat()
    except FileNotFoundError:
        return  # no record (or no shard: the read that follows names it)
    stamp = (stat.st_size, stat.st_mtime_ns, record_stat.st_mtime_ns)
    if _VERIFIED.get(str(shard)) == stamp:
        return
    record = read_record(record_path)
    if stat.st_size != record["bytes"]:  # (no need to hash a shard of the wrong size)
        problem = digest_problem(shard, stat.st_size, "", record)
    else:
        problem = digest_problem(shard, *file_sha256(shard), record)
    if problem is not None:
        raise DataError(problem)
    _VERIFIED[str(shard)] = stamp
