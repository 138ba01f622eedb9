"""What to generate, and which rank generates it: class-balanced labels in fixed batches with fixed seeds.

One plan serves ``predict``, the ``sample`` command and the FID evaluation in validation, so they make the same images:

- sample i has label ``labels[i mod len(labels)]`` (class-balanced: ``labels = 0..C-1``, i.e. label ``i mod C``);
- batch b holds samples ``[b * batch_size, (b + 1) * batch_size)`` (the last one may be shorter);
- the decoding loop of batch b is seeded with ``seed + b * batch_size`` (the seed of its first sample);
- under DDP, rank r generates batches ``r, r + W, r + 2W, ...`` (as Lightning's predict sampler deals them out).

So image i depends on (model, schedule, seed, batch_size, i) and **not** on the number of ranks: batch composition and
seeds are global. (Exact equality across world sizes also needs the same device type and kernels, as always.) With N
divisible by C every class appears N / C times; over all ranks every sample index appears exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class GenerationBatch:
    """One batch of the plan: its index, sample indices, labels (or prompts) and the seed of its decoding loop."""

    index: int
    indices: tuple[int, ...]
    labels: tuple[int, ...]
    seed: int
    prompts: tuple[str, ...] | None = None


def class_balanced_labels(num_samples: int, num_classes: int) -> list[int]:
    """Label of sample i = i mod num_classes."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"need num_samples >= 1 and num_classes >= 1, got {num_samples} and {num_classes}")
    return [i % num_classes for i in range(num_samples)]


def plan_generation(
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    num_classes: int | None = None,
    labels: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    prompts: Sequence[str] | None = None,
) -> list[GenerationBatch]:
    """The batches rank ``rank`` of ``world_size`` generates (see the module docstring for the invariants).

    Args:
        num_samples: total number of images over all ranks.
        batch_size: samples per batch (global composition; the last batch may be shorter).
        seed: base seed; batch b uses ``seed + b * batch_size``.
        num_classes: class-balanced labels ``i mod num_classes`` (when ``labels`` is not given).
        labels: explicit labels, cycled: sample i gets ``labels[i mod len(labels)]``.
        rank: this rank.
        world_size: number of ranks.
        prompts: for text models, prompts cycled like labels (sample i gets ``prompts[i mod len(prompts)]``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if labels is not None and len(labels) == 0:
        raise ValueError("labels is empty")
    if prompts is not None and len(prompts) == 0:
        raise ValueError("prompts is empty")
    if labels is None and prompts is not None:
        labels = [0]
    if labels is None:
        if num_classes is None:
            raise ValueError("give num_classes (class-balanced labels) or labels")
        pool = list(range(num_classes))
    else:
        pool = [int(v) for v in labels]
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batches = []
    for b in range(rank, -(-num_samples // batch_size), world_size):
        indices = tuple(range(b * batch_size, min((b + 1) * batch_size, num_samples)))
        texts = None if prompts is None else tuple(str(prompts[i % len(prompts)]) for i in indices)
        labels_b = tuple(pool[i % len(pool)] for i in indices)
        batches.append(GenerationBatch(b, indices, labels_b, seed + b * batch_size, texts))
    return batches


class GenerationBatches(Dataset):
    """The whole plan as a map-style dataset of *batches* (use ``DataLoader(..., batch_size=None)``).

    Item b is ``{"label": LongTensor (B,), "seed": LongTensor (B,) = seed + sample index, "index": LongTensor (B,)}``;
    ``NATModule.predict_step`` seeds the batch with ``seed[0]``. Lightning's predict sampler hands item b to rank
    ``b mod W``, which is exactly :func:`plan_generation`'s split.

    Args:
        num_samples: total number of images.
        batch_size: samples per batch.
        seed: base seed.
        num_classes: class-balanced labels (when ``labels`` is None).
        labels: explicit labels, cycled.
        skip: batch numbers to leave out (already generated); when that is all of them, the last batch stays.
        prompts: prompts, cycled (text models); items then carry ``"prompts"`` (a list of B strings).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        num_classes: int | None = None,
        labels: Sequence[int] | None = None,
        skip: set[int] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> None:
        batches = plan_generation(num_samples, batch_size, seed, num_classes, labels, prompts=prompts)
        pending = [b for b in batches if b.index not in (skip or set())]
        # all done (an interrupted run that had not merged yet): redo the last batch, which checks the weights again
        self.batches = pending or batches[-1:]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        batch = self.batches[b]
        index = torch.tensor(batch.indices, dtype=torch.long)
        seeds = batch.seed + (index - index[0])  # per-sample seed + i; the first one seeds the batch
        item = {"label": torch.tensor(batch.labels, dtype=torch.long), "seed": seeds, "index": index}
        if batch.prompts is not None:
            item["prompts"] = list(batch.prompts)
        return item
