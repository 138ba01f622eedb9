"""Who reads what: pure planning of an epoch's sample ranges over ranks (DDP) and DataLoader workers.

Every rank and every worker computes the same global plan from the same inputs (shard sizes, world size, batch size,
epoch, seed) and keeps its own part, so no communication is needed and no sample is read twice. Nothing here opens a
file or asks torch.distributed or the environment for the rank: callers pass it in (webdataset's implicit detection
silently gives every rank the same shards when DataLoader workers start by spawn/forkserver).

Three plans, all returning one :class:`WorkerPlan` per worker of the asked rank:

- :func:`plan_train` - an epoch without replacement. The shard order is a permutation seeded by ``(seed, epoch)``,
  the same on every rank. In that permuted sample space a window of ``world_size * batch_size * batches_per_rank``
  samples, ``batches_per_rank = total // (world_size * batch_size)``, is cut into one contiguous block per rank, and
  each block into whole batches per worker. Every rank gets exactly the same number of full batches, which DDP needs
  (a rank that runs dry early hangs the others). The remainder, fewer than ``world_size * batch_size`` samples, is
  left out of that epoch; when shuffling, the window starts at a random offset, so a different remainder is left out
  each epoch. When ``total`` is divisible by ``world_size * batch_size`` nothing is left out.
- :func:`plan_eval` - every sample exactly once, in shard order, no shuffling. Samples are spread over ranks as
  evenly as possible (counts differ by at most one sample), then cut into batches; each rank's last batch may be
  partial, so ranks may differ by at most one batch. Use epoch-level metrics (no per-step collectives) in validation.
- :func:`plan_resampled` - shards drawn uniformly with replacement and read whole (so every sample, whatever its
  shard's size, is equally likely to be read), seeded by ``(seed, epoch, rank, worker)``, with the same per-worker
  batch quotas as :func:`plan_train`, so an "epoch" of ``samples_per_epoch`` samples has a declared length.

A worker's ranges are contiguous in the (permuted) sample space, so it opens only the shards they touch, reading
at most the two end shards partially.

Resuming inside an epoch (:class:`TrainPosition`, :func:`resume_point`, :func:`worker_skip`): the plans are pure
functions of the epoch, so a rank that had consumed ``n`` batches of an epoch continues exactly where it stopped by
re-planning that epoch and skipping its first ``n`` batches. The DataLoader takes batch ``i`` from worker ``i mod W``,
so the plan of worker ``w`` skips the share of the ``n`` batches that came from it; and since a new DataLoader
iterator starts asking at worker 0 while the next batch belongs to plan ``n mod W``, the resumed pass hands plan
``(w + n) mod W`` to worker ``w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("train", "eval", "resampled")


@dataclass(frozen=True)
class ReadRange:
    """Samples ``[start, stop)`` (positions inside the tar) of shard number ``shard`` of the split."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    """What one DataLoader worker of one rank reads in one epoch, and how many batches it yields.

    The worker reads ``ranges`` in order and yields ``num_batches`` batches of ``batch_size`` samples; with
    ``partial_last`` the last one may be smaller (evaluation).
    """

    rank: int
    worker: int
    ranges: tuple[ReadRange, ...]
    num_batches: int
    batch_size: int
    partial_last: bool = False

    @property
    def num_samples(self) -> int:
        return sum(len(r) for r in self.ranges)


def _check(shard_sizes: Sequence[int], world_size: int, rank: int, num_workers: int, batch_size: int) -> int:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank {rank} of {world_size}")
    if num_workers < 0 or batch_size < 1:
        raise ValueError(f"need num_workers >= 0 and batch_size >= 1, got {num_workers} and {batch_size}")
    if any(s < 0 for s in shard_sizes):
        raise ValueError(f"shard sizes must be >= 0, got {list(shard_sizes)}")
    return max(1, num_workers)  # num_workers=0: the main process is the one worker


def split_evenly(n: int, parts: int) -> list[int]:
    """``n`` items into ``parts`` counts differing by at most one, larger counts first."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _ranges(shard_sizes: Sequence[int], order: Sequence[int], lo: int, hi: int) -> tuple[ReadRange, ...]:
    """Positions ``[lo, hi)`` of the sample space made by concatenating the shards in ``order``, as shard ranges."""
    out, offset = [], 0
    for s in order:
        size = shard_sizes[s]
        a, b = max(lo, offset), min(hi, offset + size)
        if a < b:
            out.append(ReadRange(s, a - offset, b - offset))
        offset += size
        if offset >= hi:
            break
    return tuple(out)


def _batch_spans(num_batches: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[first, last)`` batch indices per worker, whole batches, counts differing by at most one."""
    spans, first = [], 0
    for count in split_evenly(num_batches, workers):
        spans.append((first, first + count))
        first += count
    return spans


def batches_per_rank(total: int, world_size: int, batch_size: int) -> int:
    """Full batches every rank gets in a dropping (training or resampled) epoch of ``total`` samples."""
    return total // (world_size * batch_size)


def plan_train(
    shard_sizes: Sequence[int],
    *,
    world_size: int,
    rank: int,
    num_workers: int,
    batch_size: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
) -> list[WorkerPlan]:
    """The training epoch of ``rank``: equal full batches on every rank, no sample twice (see the module doc)."""
    workers = _check(shard_sizes, world_size, rank, num_workers, batch_size)
    total = sum(shard_sizes)
    per_rank = batches_per_rank(total, world_size, batch_size)
    if per_rank == 0:
        raise ValueError(
            f"{total} samples are fewer than world_size * batch_size = {world_size} * {batch_size}: "
            f"not one full batch per rank; lower the batch size or add data"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(shard_sizes)).tolist() if shuffle else list(range(len(shard_sizes)))
    remainder = total - per_rank * world_size * batch_size
    # a random start moves the left-out remainder around, not only onto the epoch's last shard
    offset = int(rng.integers(0, remainder + 1)) if shuffle and remainder else 0
    rank_start = offset + rank * per_rank * batch_size
    plans = []
    for worker, (b0, b1) in enumerate(_batch_spans(per_rank, workers)):
        lo, hi = rank_start + b0 * batch_size, rank_start + b1 * batch_size
        plans.append(WorkerPlan(rank, worker, _ranges(shard_sizes, order, lo, hi), b1 - b0, batch_size))
    return plans


def plan_eval(
    shard_sizes: Sequence[int], *, world_size: int, rank: int, num_workers: int, batch_size: int
) -> list[WorkerPlan]:
    """The evaluation pass of ``rank``: every sample exactly once over all ranks, in shard order, last batch partial."""
    workers = _check(shard_sizes, world_size, rank, num_workers, batch_size)
    counts = split_evenly(sum(shard_sizes), world_size)
    start, n = sum(counts[:rank]), counts[rank]
    num_batches = -(-n // batch_size)
    order = list(range(len(shard_sizes)))
    plans = []
    for worker, (b0, b1) in enumerate(_batch_spans(num_batches, workers)):
        lo, hi = start + b0 * batch_size, start + min(b1 * batch_size, n)
        ranges = _ranges(shard_sizes, order, lo, hi) if hi > lo else ()
        plans.append(WorkerPlan(rank, worker, ranges, b1 - b0, batch_size, partial_last=True))
    return plans


def plan_resampled(
    shard_sizes: Sequence[int],
    *,
    world_size: int,
    rank: int,
    num_workers: int,
    batch_size: int,
    epoch: int = 0,
    seed: int = 0,
    samples_per_epoch: int | None = None,
) -> list[WorkerPlan]:
    """A resampled "epoch" of ``rank``: shards drawn with replacement, per-worker quotas as in :func:`plan_train`.

    Each worker draws shards uniformly until its quota of ``num_batches * batch_size`` samples is met, reading whole
    shards except the last draw, which reads a random window of the needed length. (Drawing by size instead would
    favour the samples of large shards twice: once by the draw and once by the whole-shard read.)
    ``samples_per_epoch`` (all ranks together; default: the split's size) sets the declared epoch length.
    """
    workers = _check(shard_sizes, world_size, rank, num_workers, batch_size)
    total = sum(shard_sizes)
    if total == 0:
        raise ValueError("cannot resample from a split without samples")
    per_rank = batches_per_rank(total if samples_per_epoch is None else samples_per_epoch, world_size, batch_size)
    if per_rank == 0:
        raise ValueError(
            f"samples_per_epoch={samples_per_epoch or total} is below world_size * batch_size = "
            f"{world_size} * {batch_size}: not one full batch per rank"
        )
    nonempty = [i for i, n in enumerate(shard_sizes) if n > 0]
    plans = []
    for worker, (b0, b1) in enumerate(_batch_spans(per_rank, workers)):
        rng = np.random.default_rng([seed, epoch, rank, worker])
        need, ranges = (b1 - b0) * batch_size, []
        while need > 0:
            s = nonempty[int(rng.integers(len(nonempty)))]
            take = min(shard_sizes[s], need)
            start = int(rng.integers(0, shard_sizes[s] - take + 1))
            ranges.append(ReadRange(s, start, start + take))
            need -= take
        plans.append(WorkerPlan(rank, worker, tuple(ranges), b1 - b0, batch_size))
    return plans


@dataclass(frozen=True)
class TrainPosition:
    """Where training stopped: ``batches`` batches of ``epoch`` consumed on every rank, under the layout that read
    them (saved in checkpoints by the DataModule)."""

    epoch: int
    batches: int
    batches_per_epoch: int
    world_size: int
    num_workers: int
    batch_size: int
    #: batches of the rank's epoch *plan* (``batches_per_epoch`` is the trainer's count, which ``limit_train_batches``
    #: may cut); None in checkpoints written before it was recorded
    plan_batches: int | None = None

    @property
    def layout(self) -> tuple[int, int, int, int]:
        plan = self.batches_per_epoch if self.plan_batches is None else self.plan_batches
        return (plan, self.world_size, self.num_workers, self.batch_size)


def resume_point(saved: TrainPosition, now: TrainPosition) -> tuple[int, int, str | None]:
    """``(epoch, batches to skip, note)`` for the first training pass after resuming from ``saved``.

    ``now`` describes the resumed run's layout (its ``epoch``/``batches`` are ignored). With the same layout the pass
    continues exactly (``note`` is None). With another world size, worker count or batch size the epoch's plan
    differs: the pass skips as many batches as cover the samples already consumed (deterministic, not identical to an
    uninterrupted run), and ``note`` says so in one line.
    """
    if saved.batches >= saved.batches_per_epoch:
        return saved.epoch + 1, 0, None  # the saved epoch was complete: the next one starts
    if saved.layout == now.layout:
        return saved.epoch, saved.batches, None
    consumed = saved.batches * saved.world_size * saved.batch_size
    skip = min(consumed // (now.world_size * now.batch_size), now.batches_per_epoch)
    note = (
        f"resuming epoch {saved.epoch} with another data layout (batches per epoch, world size, workers, batch size: "
        f"{saved.layout} -> {now.layout}): skipping the first {skip} batches of the new plan, which cover the "
        f"{consumed} samples already read; deterministic, but not the batches the original run would have read"
    )
    return saved.epoch, skip, note


def worker_skip(batches: int, workers: int, worker: int) -> int:
    """How many of a rank's first ``batches`` batches came from ``worker``: the DataLoader takes batch ``i`` from worker
    ``i mod workers`` (in order), and the plans give earlier workers at most one batch more than later ones."""
    return (batches - worker + workers - 1) // workers if batches > worker else 0


def plan_epoch(
    mode: str,
    shard_sizes: Sequence[int],
    *,
    world_size: int,
    rank: int,
    num_workers: int,
    batch_size: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    samples_per_epoch: int | None = None,
) -> list[WorkerPlan]:
    """Dispatch to :func:`plan_train` / :func:`plan_eval` / :func:`plan_resampled` by ``mode``."""
    common = dict(world_size=world_size, rank=rank, num_workers=num_workers, batch_size=batch_size)
    if mode == "train":
        return plan_train(shard_sizes, epoch=epoch, seed=seed, shuffle=shuffle, **common)
    if mode == "eval":
        return plan_eval(shard_sizes, **common)
    if mode == "resampled":
        return plan_resampled(shard_sizes, epoch=epoch, seed=seed, samples_per_epoch=samples_per_epoch, **common)
    raise ValueError(f"unknown plan mode {mode!r}; expected one of {MODES}")
