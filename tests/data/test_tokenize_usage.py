"""The data's codebook usage in ``meta.json``: counted from the shards as verified at finalisation, so an interrupted
and resumed tokenize records the same usage as an uninterrupted one, and tokenize-verify catches a changed record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from lit_nat.data import read_metadata
from lit_nat.data.meta import codebook_usage
from lit_nat.data.samples import decode_sample, iter_samples
from tests.data.test_tokenize import _args, _registered_test_tokenizer, make_folder, tokenize, verify  # noqa: F401


def shard_histogram(root: Path, split: str = "train") -> np.ndarray:
    """A bincount of every id in the split's shards, read back from the tars."""
    meta = read_metadata(root)
    ids = [decode_sample(s)["ids"] for shard in meta.splits[split].shards
           for s in iter_samples(io.BytesIO((root / shard.name).read_bytes()), shard.name)]  # fmt: skip
    return np.bincount(np.concatenate(ids).astype(np.int64), minlength=meta.codebook_size)


def test_the_usage_recorded_at_tokenize_is_the_bincount_of_the_shards_even_after_a_resume(tmp_path):
    images = make_folder(tmp_path / "images")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    tokenize(_args(images, whole))
    counts = shard_histogram(whole)
    usage = read_metadata(whole).codebook_usage
    assert usage == {"train": codebook_usage(counts)} and usage["train"]["tokens"] == counts.sum() > 0
    assert 0 < usage["train"]["codes_used"] <= 1 and usage["train"]["perplexity"] > 1
    tokenize(_args(images, resumed, "--task_index", "1", "--num_tasks", "2"))  # half the shards, then the rest
    tokenize(_args(images, resumed, "--batch_size", "3"))
    assert read_metadata(resumed).codebook_usage == usage


def test_tokenize_verify_catches_a_usage_that_is_not_the_shards(tmp_path, capsys):
    out = tmp_path / "out"
    tokenize(_args(make_folder(tmp_path / "images"), out))
    verify(["--root", str(out)])  # agrees: OK
    meta = json.loads((out / "meta.json").read_text())
    meta["codebook_usage"]["train"]["codes_used"] = 1.0
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        verify(["--root", str(out)])
    assert "PROBLEM: " + f"{out / 'meta.json'}: codebook_usage.train is " in capsys.readouterr().out
    verify(["--root", str(out), "--finalize"])  # finalising again records the shards' usage
    assert read_metadata(out).codebook_usage["train"] == codebook_usage(shard_histogram(out))
