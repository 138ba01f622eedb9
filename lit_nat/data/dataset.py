"""The one way to read token shards: an IterableDataset that follows a :mod:`lit_nat.data.split` plan, and the
DataLoader that advances its epoch.

Batches are dicts ``{"ids": LongTensor (B, h*w), "label": LongTensor (B,)}``, plus ``"text": list[str]`` when the
shards carry captions and ``"key": list[str]`` (the samples' ``__key__``) when asked. ``B`` is the batch size except
for the last batch of an evaluation pass.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from lit_nat.data.shards import LABEL_FIELD, TEXT_FIELD, TOKENS_FIELD, decode_tokens
from lit_nat.data.split import MODES, WorkerPlan, plan_epoch


def read_range(path: str | os.PathLike, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Samples ``[start, stop)`` of one tar, as webdataset sample dicts (``__key__``, ``tokens.npy``, ``cls``, ...).

    Uses webdataset's tar iteration; the tar is streamed, and closed as soon as ``stop`` is reached.
    """
    path = str(path)
    index = -1
    with open(path, "rb") as stream:
        for index, sample in enumerate(group_by_keys(tar_file_expander([{"url": path, "stream": stream}]))):
            if index >= start:
                yield sample
            if index + 1 >= stop:
                return  # without parsing the next sample
    if index + 1 < stop:
        raise RuntimeError(f"{path} holds {index + 1} samples, but the metadata promised at least {stop}")


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """webdataset sample dict -> ``{"ids": uint16 array, "label": int, "key": str[, "text": str]}``."""
    out = {
        "ids": decode_tokens(sample[TOKENS_FIELD]),
        "label": int(sample[LABEL_FIELD].decode("ascii")),
        "key": sample["__key__"],
    }
    if TEXT_FIELD in sample:
        out["text"] = sample[TEXT_FIELD].decode("utf-8")
    return out


def shuffled(items: Iterator[Any], bufsize: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``bufsize`` items (a random item of the buffer leaves for each one in)."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    for i in rng.permutation(len(buf)):
        yield buf[i]


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
    return batch


class TokenShardDataset(IterableDataset):
    """Yields the batches of one rank from token shards, following the epoch's plan.

    Rank and world size are given explicitly (the DataModule takes them from the Trainer), never detected, so the
    split is right whatever the workers' start method. Each DataLoader worker computes the plan of the current epoch
    (read from a shared counter, see :class:`ShardLoader`) and reads only its ranges.

    Args:
        root: the data root holding the shards.
        shard_names: the split's shard file names, in the metadata's order.
        shard_sizes: their sample counts.
        batch_size: samples per batch.
        mode: ``"train"`` (drop to equal full batches, optionally shuffled), ``"eval"`` (every sample once, in order)
            or ``"resampled"`` (shards drawn with replacement, ``samples_per_epoch`` long).
        rank: this process's global rank.
        world_size: number of processes.
        num_workers: the DataLoader's ``num_workers`` (the plan is cut for exactly this many).
        seed: base seed of shard order, shuffle buffer and resampling.
        shuffle: shuffle shard order and samples (``train`` only; ``eval`` never shuffles, ``resampled`` always).
        shuffle_buffer: samples held by the shuffle buffer of each worker.
        samples_per_epoch: epoch length in ``resampled`` mode (default: the split's size).
        return_keys: add the samples' keys to each batch (``"key"``), e.g. to trace samples. Off by default: a list
            of strings in the batch makes Lightning's batch-size inference warn.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        shard_names: Sequence[str],
        shard_sizes: Sequence[int],
        *,
        batch_size: int,
        mode: str = "train",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        return_keys: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if len(shard_names) != len(shard_sizes):
            raise ValueError(f"{len(shard_names)} shard names but {len(shard_sizes)} sizes")
        self.root = Path(root)
        self.shard_names = list(shard_names)
        self.shard_sizes = [int(s) for s in shard_sizes]
        self.batch_size = batch_size
        self.mode = mode
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed = seed
        self.shuffle = mode == "resampled" or (shuffle and mode == "train")
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.return_keys = return_keys
        # Shared memory: the main process writes it (ShardLoader.__iter__), persistent workers read it at the start
        # of each pass. Created here so that workers inherit (fork) or receive (spawn/forkserver) the same memory.
        # lock=False: there is one writer, and a lock (SemLock) made in the default context could not be sent to
        # workers started by another one ("A SemLock created in a fork context ... spawn context").
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self.plans(0)  # fail now, not in a worker, on an impossible plan (e.g. fewer samples than one batch per rank)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the next pass over the data uses (seeds shard order, buffer and resampling)."""
        self._epoch.value = int(epoch)

    def plans(self, epoch: int) -> list[WorkerPlan]:
        """The plan of every worker of this rank in ``epoch``."""
        return plan_epoch(
            self.mode,
            self.shard_sizes,
            world_size=self.world_size,
            rank=self.rank,
            num_workers=self.num_workers,
            batch_size=self.batch_size,
            epoch=epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            samples_per_epoch=self.samples_per_epoch,
        )

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same every epoch), so ``len(loader)`` is exact."""
        return sum(p.num_batches for p in self.plans(0))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"TokenShardDataset was planned for num_workers={self.num_workers} but runs in a DataLoader with "
                f"{workers} worker(s); build the loader with the dataset's num_workers (ShardLoader does)"
            )
        epoch = self.epoch
        plan = self.plans(epoch)[worker]
        samples: Iterator[dict[str, Any]] = (
            decode_sample(s)
            for r in plan.ranges
            for s in read_range(self.root / self.shard_names[r.shard], r.start, r.stop)
        )
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker, 1])  # 1: apart from resampling's streams
            samples = shuffled(samples, self.shuffle_buffer, rng)
        yielded, batch = 0, []
        for sample in samples:
            batch.append(sample)
            if len(batch) == plan.batch_size:
                yield collate(batch, self.return_keys)
                yielded, batch = yielded + 1, []
        if batch and plan.partial_last:
            yield collate(batch, self.return_keys)
            yielded += 1
        if yielded != plan.num_batches or (batch and not plan.partial_last):
            raise RuntimeError(
                f"rank {self.rank} worker {worker} yielded {yielded} of {plan.num_batches} planned batches"
            )


class ShardLoader(DataLoader):
    """DataLoader for a :class:`TokenShardDataset` that moves the dataset to a new epoch on every iteration.

    Why: with ``persistent_workers=True`` the workers keep their copy of the dataset across epochs, so an attribute
    set on the main process's dataset never reaches them. The epoch therefore lives in shared memory
    (``multiprocessing.Value`` owned by the dataset), and this loader writes it in ``__iter__`` *before* asking the
    workers to start the next pass (``DataLoader.__iter__`` sends them the resume signal, after which each worker
    calls ``iter(dataset)`` and reads the new value). Non-persistent workers and ``num_workers=0`` read it the same way.

    Which epoch: ``epoch_fn()`` when given and it returns an int (the DataModule passes the Trainer's
    ``current_epoch``, which is exact across resumption and immune to extra ``iter()`` calls, e.g. a callback
    peeking at a batch); otherwise a counter starting at ``start_epoch`` and bumped on every iteration.

    Args:
        dataset: the dataset; its ``num_workers`` is used for the loader.
        start_epoch: the first epoch of the counter.
        epoch_fn: optional source of the current epoch (``None`` results fall back to the counter).
        persistent_workers: keep workers alive between passes (default: when there are workers).
        **kwargs: further DataLoader arguments (``pin_memory``, ``multiprocessing_context``, ``prefetch_factor``...).
    """

    def __init__(
        self,
        dataset: TokenShardDataset,
        *,
        start_epoch: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
        persistent_workers: bool | None = None,
        **kwargs: Any,
    ) -> None:
        workers = dataset.num_workers
        persistent = workers > 0 if persistent_workers is None else persistent_workers and workers > 0
        # batch_size=None: the dataset yields whole batches; len(loader) == len(dataset) == planned batches per rank
        super().__init__(dataset, batch_size=None, num_workers=workers, persistent_workers=persistent, **kwargs)
        self.epoch_fn = epoch_fn
        self.next_epoch = start_epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self.next_epoch
        self.next_epoch = epoch + 1
        self.dataset.set_epoch(epoch)
        return super().__iter__()
