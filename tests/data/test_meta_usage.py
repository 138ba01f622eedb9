"""``meta.json``'s optional ``codebook_usage``: older files without it read, bad values are one line naming the key."""

from __future__ import annotations

import json

import pytest

from lit_nat.data.meta import DatasetMeta, MetadataError, codebook_usage

GOOD = {
    "format": "lit_nat.tokens/1", "codebook_size": 4, "grid_size": [1, 2], "num_classes": 1,
    "tokenizer": {"name": "pixel"}, "splits": {"train": {"num_samples": 1, "shards": [
        {"name": "train-000000.tar", "num_samples": 1}]}},
}  # fmt: skip


def test_codebook_usage_of_a_histogram():
    assert codebook_usage([2, 2, 0, 0]) == {"codes_used": 0.5, "perplexity": 2.0, "tokens": 4}
    assert codebook_usage([0, 0]) == {"codes_used": 0.0, "perplexity": 1.0, "tokens": 0}


def test_meta_without_usage_reads_and_writes_as_before():
    meta = DatasetMeta.from_dict(json.loads(json.dumps(GOOD)))
    assert meta.codebook_usage == {} and "codebook_usage" not in meta.to_dict()
    usage = codebook_usage([1, 1, 1, 1])
    with_usage = meta.with_split("train", meta.splits["train"], usage)
    assert DatasetMeta.from_dict(with_usage.to_dict()).codebook_usage == {"train": usage}
    assert with_usage.with_split("train", meta.splits["train"]).codebook_usage == {}  # new shards: old usage gone


@pytest.mark.parametrize("usage, message", [
    ([], "key 'codebook_usage' must be an object"),
    ({"val": {"codes_used": 1, "perplexity": 2, "tokens": 3}}, "key 'codebook_usage.val' must be the usage of a "
                                                                "listed split"),
    ({"train": {"codes_used": 1.5, "perplexity": 2, "tokens": 3}}, "'codebook_usage.train.codes_used' must be a "
                                                                   "number in \\[0, 1\\]; got 1.5"),
    ({"train": {"codes_used": 1, "perplexity": 0.5, "tokens": 3}}, "'codebook_usage.train.perplexity' must be"),
    ({"train": {"codes_used": 1, "perplexity": 2}}, "'codebook_usage.train.tokens' must be an integer >= 0; it is "
                                                    "missing"),
])  # fmt: skip
def test_a_bad_usage_is_one_line_naming_the_key(usage, message):
    with pytest.raises(MetadataError, match=f"^x/meta.json: .*{message}"):
        DatasetMeta.from_dict({**GOOD, "codebook_usage": usage}, source="x/meta.json")


def test_shard_writer_records_its_splits_usage(tmp_path):
    """A split written through ShardWriter (own data from Python, a test's shards) has its usage in meta.json, the
    histogram of exactly the ids written (tensors and lists alike); rewriting the split replaces it."""
    import numpy as np
    import torch

    from lit_nat.data.shards import ShardWriter, read_metadata

    space = dict(codebook_size=5, grid_size=(1, 3), num_classes=2, tokenizer_config={"name": "pixel"})
    rows = [torch.tensor([0, 0, 1]), [1, 2, 0], np.array([2, 2, 2])]
    with ShardWriter(tmp_path, "train", samples_per_shard=2, **space) as writer:
        for i, row in enumerate(rows):
            writer.write(row, label=i % 2)
    expected = codebook_usage([3, 2, 4, 0, 0])
    assert read_metadata(tmp_path).codebook_usage == {"train": expected} and expected["codes_used"] == 0.6
    with ShardWriter(tmp_path, "train", overwrite=True, **space) as writer:
        writer.write([4, 4, 4], label=0)
    assert read_metadata(tmp_path).codebook_usage["train"] == codebook_usage([0, 0, 0, 0, 3])
