"""The digits preparation records each split's codebook usage in meta.json: the bincount of its shards' ids."""

from __future__ import annotations

import numpy as np

from lit_nat.data import TokenShardDataset, read_metadata
from lit_nat.data.meta import codebook_usage
from lit_nat.demos.digits import prepare_digits


def test_digits_meta_records_the_usage_of_each_split(tmp_path):
    meta = prepare_digits(tmp_path / "digits")
    for split in ("train", "val"):
        info = meta.splits[split]
        dataset = TokenShardDataset(tmp_path / "digits", [s.name for s in info.shards], info.shard_sizes,
                                    batch_size=info.num_samples, mode="eval")  # fmt: skip
        ids = next(iter(dataset))["ids"].numpy().reshape(-1)
        assert meta.codebook_usage[split] == codebook_usage(np.bincount(ids, minlength=17))
    assert read_metadata(tmp_path / "digits").codebook_usage["val"]["codes_used"] == 1.0  # all 17 grey levels
