"""Pre-tokenised shards: one writer (:class:`ShardWriter`), one reader (:class:`TokenShardDataset` through
:class:`TokenShardDataModule`), the DDP/worker planning (:mod:`lit_nat.data.split`), named preparations of a data root
(the digits demo's lives in :mod:`lit_nat.demos`, above this package), and the plan of what to generate on which rank
(:mod:`lit_nat.data.labels`).

The DataModule (and with it Lightning) is imported on first access, so writing and preparing shards stays light.
"""

from typing import Any

from lit_nat.data.dataset import ShardLoader, TokenShardDataset
from lit_nat.data.labels import GenerationBatch, GenerationBatches, class_balanced_labels, plan_generation
from lit_nat.data.samples import read_range
from lit_nat.data.shards import (
    FORMAT,
    META_FILE,
    DatasetMeta,
    MetadataError,
    ShardInfo,
    ShardWriter,
    SplitInfo,
    read_metadata,
    write_metadata,
)
from lit_nat.data.split import ReadRange, WorkerPlan, plan_epoch, plan_eval, plan_resampled, plan_train

__all__ = [
    "FORMAT",
    "META_FILE",
    "PREPARATIONS",
    "DatasetMeta",
    "GenerationBatch",
    "GenerationBatches",
    "MetadataError",
    "ReadRange",
    "ShardInfo",
    "ShardLoader",
    "ShardWriter",
    "SplitInfo",
    "TokenShardDataModule",
    "TokenShardDataset",
    "WorkerPlan",
    "class_balanced_labels",
    "ensure_prepared",
    "plan_epoch",
    "plan_eval",
    "plan_generation",
    "plan_resampled",
    "plan_train",
    "read_metadata",
    "read_range",
    "write_metadata",
]

_LAZY = {"PREPARATIONS", "Preparation", "TokenShardDataModule", "ensure_prepared"}  # from lit_nat.data.datamodule


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lit_nat.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'lit_nat.data' has no attribute {name!r}")
