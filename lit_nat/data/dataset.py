"""The one way to read token shards: an IterableDataset that follows a :mod:`lit_nat.data.split` plan, and the
DataLoader that advances its epoch.

Batches are dicts ``{"ids": LongTensor (B, h*w), "label": LongTensor (B,)}``, plus ``"text": list[str]`` when the
shards carry captions and ``"key": list[str]`` (the samples' ``__key__``) when asked. ``B`` is the batch size except
for the last batch of an evaluation pass.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_nat.core.errors import DataError
from lit_nat.data.samples import SampleLimits, Unreadable, collate, decode_sample, pick_caption, read_range
from lit_nat.data.split import MODES, WorkerPlan, plan_epoch, worker_skip

BAD_DATA_POLICIES = ("skip", "fail")


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


def batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items; the last may be shorter."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TokenShardDataset(IterableDataset):
    """Yields the batches of one rank from token shards, following the epoch's plan.

    Rank and world size are given explicitly (the DataModule takes them from the Trainer), never detected, so the
    split is right whatever the workers' start method. Each DataLoader worker computes the plan of the current epoch
    (read from a shared counter, see :class:`ShardLoader`) and reads only its ranges; after a resume it skips the
    batches of the epoch that were already consumed (:func:`~lit_nat.data.split.worker_skip`) without decoding them.

    Every sample is checked as it streams (:func:`decode_sample`: members present, ids in the codebook, as many ids
    as the grid, label in ``[0, num_classes)``). With ``bad_data="fail"`` a bad sample or unreadable tar is a
    :class:`~lit_nat.core.errors.DataError` naming shard and key. With ``"skip"`` it is reported once per shard (a
    warning) and replaced by a good sample of the same batch, drawn with a seeded generator, so every rank still yields
    its planned number of full batches (DDP needs equal counts); the batch then carries ``"bad_samples"`` (how many were
    replaced), which the LightningModule logs as a running counter. A fully bad batch takes its stand-ins from the
    worker's recent samples; with none readable at all it is an error.

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
        limits: what every sample must satisfy (grid, codebook, classes from ``meta.json``).
        bad_data: ``"fail"`` or ``"skip"`` (see above).
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
        limits: SampleLimits = SampleLimits(),
        bad_data: str = "fail",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if len(shard_names) != len(shard_sizes):
            raise ValueError(f"{len(shard_names)} shard names but {len(shard_sizes)} sizes")
        if bad_data not in BAD_DATA_POLICIES:
            raise ValueError(f"bad_data must be one of {BAD_DATA_POLICIES}, got {bad_data!r}")
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
        self.limits = limits
        self.bad_data = bad_data
        # Shared memory: the main process writes them (ShardLoader.__iter__), persistent workers read them at the start
        # of each pass. Created here so that workers inherit (fork) or receive (spawn/forkserver) the same memory.
        # lock=False: there is one writer, and a lock (SemLock) made in the default context could not be sent to
        # workers started by another one ("A SemLock created in a fork context ... spawn context").
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._skip = multiprocessing.Value("q", 0, lock=False)  # batches of this rank's pass already consumed
        self.plans(0)  # fail now, not in a worker, on an impossible plan (e.g. fewer samples than one batch per rank)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Set the epoch the next pass over the data uses (it seeds shard order, buffer and resampling) and how many of
        the pass's first batches are skipped (a resumed epoch)."""
        self._epoch.value = int(epoch)
        self._skip.value = int(skip_batches)

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

    def _items(self, plan: WorkerPlan) -> Iterator[dict[str, Any] | Unreadable]:
        """The raw samples of the plan's ranges, with an :class:`Unreadable` for each one a damaged tar withheld."""
        for r in plan.ranges:
            name = self.shard_names[r.shard]
            count = 0
            try:
                for sample in read_range(self.root / name, r.start, r.stop):
                    count += 1
                    yield sample
            except DataError as err:
                if self.bad_data == "fail":
                    raise
                for _ in range(len(r) - count):
                    yield Unreadable(name, str(err))

    def _decode(self, item: dict[str, Any] | Unreadable) -> dict[str, Any]:
        if isinstance(item, Unreadable):
            raise DataError(item.reason)
        sample = decode_sample(item, Path(item.get("__url__", "?")).name, self.limits)
        # evaluation reads the same caption of a sample at every validation; training draws one per epoch
        return pick_caption(sample, self.seed, self.epoch if self.shuffle else 0)

    def _decode_batch(self, items: list[Any], recent: Sequence[Any], rng_key: list[int], reported: set[str]):
        """Decode and check a batch; with ``bad_data="skip"`` replace its bad samples by good ones of the batch (or,
        if it has none, of the worker's recent samples), drawn with a generator seeded by the batch's coordinates."""
        good, bad, error = [], 0, None
        for item in items:
            try:
                good.append(self._decode(item))
            except DataError as err:
                if self.bad_data == "fail":
                    raise
                bad, error = bad + 1, err
                shard = item.shard if isinstance(item, Unreadable) else Path(item.get("__url__", "?")).name
                if shard not in reported:
                    reported.add(shard)
                    warnings.warn(f"skipping bad samples of {shard} (bad_data=skip): {err}", stacklevel=2)
        if bad:  # the batch keeps its planned size: every rank must yield the same number of full batches
            pool = good or [d for d in map(self._decode_or_none, recent) if d is not None]
            if not pool:
                raise DataError(f"rank {self.rank}: no readable sample to stand in for a bad batch (e.g. {error})")
            good += [pool[int(i)] for i in np.random.default_rng(rng_key).integers(len(pool), size=bad)]
        batch = collate(good, self.return_keys)
        if bad:
            batch["bad_samples"] = bad
        return batch

    def _decode_or_none(self, item: Any) -> dict[str, Any] | None:
        try:
            return self._decode(item)
        except DataError:
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"TokenShardDataset was planned for num_workers={self.num_workers} but runs in a DataLoader with "
                f"{workers} worker(s); build the loader with the dataset's num_workers (ShardLoader does)"
            )
        epoch, consumed = self.epoch, int(self._skip.value)
        # The DataLoader asks its workers in turn starting at worker 0, but after `consumed` batches the next batch
        # belongs to plan `consumed mod workers`: a resumed pass rotates which plan each worker serves.
        logical = (worker + consumed) % workers
        plan, skip = self.plans(epoch)[logical], worker_skip(consumed, workers, logical)
        items: Iterator[Any] = self._items(plan)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, epoch, self.rank, logical, 1])  # 1: apart from resampling's streams
            items = shuffled(items, self.shuffle_buffer, rng)
        count, reported = 0, set()
        recent: collections.deque = collections.deque(maxlen=4 * plan.batch_size)  # stand-ins for a fully bad batch
        for index, group in enumerate(batched(items, plan.batch_size)):
            if len(group) < plan.batch_size and not plan.partial_last:
                raise RuntimeError(f"rank {self.rank} plan {logical}: a partial batch in a plan of full batches")
            count += 1
            if index >= skip:  # skipped batches (already consumed before a resume) are not even decoded
                yield self._decode_batch(group, recent, [self.seed, epoch, self.rank, logical, index, 2], reported)
            if self.bad_data == "skip":  # (only a skipping pass ever draws stand-ins from them)
                recent.extend(item for item in group if not isinstance(item, Unreadable))
        if count != plan.num_batches:
            raise RuntimeError(f"rank {self.rank} plan {logical} yielded {count} of {plan.num_batches} planned batches")


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

    Resuming: ``resume=(epoch, skip)`` makes the *first* pass run ``epoch`` without its first ``skip`` batches (those
    a resumed run had already consumed); later passes follow ``epoch_fn`` / the counter again.

    Args:
        dataset: the dataset; its ``num_workers`` is used for the loader.
        start_epoch: the first epoch of the counter.
        epoch_fn: optional source of the current epoch (``None`` results fall back to the counter).
        resume: ``(epoch, batches to skip)`` of the first pass, or None.
        persistent_workers: keep workers alive between passes (default: when there are workers).
        **kwargs: further DataLoader arguments (``pin_memory``, ``multiprocessing_context``, ``prefetch_factor``...).
    """

    def __init__(
        self,
        dataset: TokenShardDataset,
        *,
        start_epoch: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
        resume: tuple[int, int] | None = None,
        persistent_workers: bool | None = None,
        **kwargs: Any,
    ) -> None:
        workers = dataset.num_workers
        persistent = workers > 0 if persistent_workers is None else persistent_workers and workers > 0
        # batch_size=None: the dataset yields whole batches; len(loader) == len(dataset) == planned batches per rank
        super().__init__(dataset, batch_size=None, num_workers=workers, persistent_workers=persistent, **kwargs)
        self.epoch_fn = epoch_fn
        self.next_epoch = start_epoch
        self.resume = resume

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        if self.resume is not None:
            (epoch, skip), self.resume = self.resume, None
        else:
            epoch = self.epoch_fn() if self.epoch_fn is not None else None
            if epoch is None:
                epoch = self.next_epoch
        self.next_epoch = epoch + 1
        self.dataset.set_epoch(epoch, skip)
        return super().__iter__()

    # Lightning's resumable-loader protocol. The position of a resumed epoch travels in the DataModule's state
    # (TrainPosition) and is applied when the loader is built (``resume``), before Lightning would hand a loader
    # its state; the loader keeps none of its own. Having these methods is how Lightning recognises a loader that
    # resumes mid-epoch exactly; without them it warns on every exact resume that the loader "is not resumable".
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: see :meth:`state_dict`."""
