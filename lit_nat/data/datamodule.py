"""``TokenShardDataModule``: token shards -> per-rank batches, with the data's facts exposed for LightningCLI links."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lit_nat.conditioning.text import encoder_identity
from lit_nat.core.errors import UsageError
from lit_nat.data.dataset import ShardLoader, TokenShardDataset
from lit_nat.data.labels import GenerationBatches
from lit_nat.data.meta import exclusive_lock
from lit_nat.data.samples import SampleLimits
from lit_nat.data.shards import (
    CAPTIONS_FIELD,
    META_FILE,
    TEXT_FIELD,
    TEXT_STATES_FIELD,
    DatasetMeta,
    MetadataError,
    read_metadata,
)
from lit_nat.data.split import TrainPosition, resume_point
from lit_nat.tokenizers import token_space


@dataclass(frozen=True)
class Preparation:
    """How to create a data root, and how to complete one that an older version created.

    Args:
        run: ``run(root)`` writes shards and, last and atomically, ``meta.json`` (so its presence means "complete").
        missing: ``missing(root)``: whether a root with ``meta.json`` lacks artefacts added later (e.g. the digits-FID
            classifier); then ``complete(root)`` adds them in place.
        complete: see ``missing``.
    """

    run: Callable[[Path], Any]
    missing: Callable[[Path], bool] | None = None
    complete: Callable[[Path], Any] | None = None


#: built-in preparations, by the name given to ``--data.prepare``, as ``"module:attribute"`` of a :class:`Preparation`.
#: They live in :mod:`lit_nat.demos`, above both ``data`` and ``metrics`` (preparing the digits also trains the
#: digits-FID classifier), so this package names them instead of importing them. ``--data.prepare`` also takes the
#: ``"package.module:attribute"`` of a user's own Preparation (or plain ``run(root)`` function).
PREPARATIONS: dict[str, str] = {
    "digits": "lit_nat.demos.digits:DIGITS",
    "digits_text": "lit_nat.demos.digits:DIGITS_TEXT",  # with captions, for text-to-image
}


def resolve_preparation(name: str) -> Preparation:
    """The :class:`Preparation` a ``--data.prepare`` value names (a built-in name or ``module:attribute``)."""
    path = PREPARATIONS.get(name, name)
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise UsageError(f"unknown preparation {name!r}; built-in ones are {sorted(PREPARATIONS)} (or 'module:name')")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"--data.prepare {name!r}: cannot import {path} ({err})") from err
    if isinstance(found, Preparation):
        return found
    if callable(found):
        return Preparation(found)
    raise UsageError(f"--data.prepare {name!r}: {path} is neither a Preparation nor a function of the root")


def _silence_len_warning() -> None:
    """Our IterableDataset's ``__len__`` is exact by construction (every worker reads only its planned batches), so
    Lightning's generic caution about ``__len__`` with multi-process loading does not apply. Installed when a loader
    is built (Lightning checks right after), since a filter set at import can be undone by ``catch_warnings``."""
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def ensure_prepared(root: str | os.PathLike, prepare: str | None = None) -> DatasetMeta:
    """Read ``<root>/meta.json``, first running the preparation ``prepare`` if it is missing.

    Under DDP every rank builds the DataModule at the same time: one rank prepares while holding a lock file in the
    root, the others wait for the lock and then find ``meta.json``. Preparations publish ``meta.json`` last and
    atomically, so seeing it means the data is complete.
    """
    root = Path(root)
    if prepare is None:
        return read_metadata(root)
    preparation = resolve_preparation(prepare)

    def incomplete() -> bool:
        return preparation.missing is not None and preparation.complete is not None and preparation.missing(root)

    if (root / META_FILE).exists() and not incomplete():
        return read_metadata(root)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lit_nat-prepare.lock"):
        if not (root / META_FILE).exists():  # another rank may have finished while we waited
            preparation.run(root)
        elif incomplete():
            preparation.complete(root)
    return read_metadata(root)


def check_tokenizer(meta: DatasetMeta, source: str | os.PathLike) -> None:
    """``meta.json``'s codebook size and grid must be those of the tokenizer it names (ids beyond the tokenizer's
    codebook could not be decoded; a larger declared codebook would make the model predict codes that do not exist)."""
    try:
        codebook, grid = token_space(meta.tokenizer)
    except ValueError as err:
        raise MetadataError(f"{source}: key 'tokenizer': {err}") from None
    if (codebook, tuple(grid)) != (meta.codebook_size, tuple(meta.grid_size)):
        raise MetadataError(
            f"{source}: codebook_size {meta.codebook_size} and grid_size {list(meta.grid_size)} do not match its "
            f"tokenizer {meta.tokenizer.get('name')!r} ({codebook} codes, grid {list(grid)})"
        )


def resolve_text_encoder(meta: DatasetMeta, given: dict[str, Any] | None, root: Path) -> dict[str, Any] | None:
    """The text encoder of a data root: the given one or ``meta.json``'s; with cached states only ``meta.json``'s."""
    captioned = CAPTIONS_FIELD in meta.fields or TEXT_FIELD in meta.fields
    if given is not None and not captioned:
        raise MetadataError(f"{root / META_FILE}: --data.text_encoder was given but the shards carry no captions")
    cached = TEXT_STATES_FIELD in meta.fields
    if cached and given is not None and encoder_identity(given) != encoder_identity(meta.text_encoder):
        raise MetadataError(
            f"{root / META_FILE}: the shards cache the states of text encoder {meta.text_encoder}, not of "
            f"{dict(given)}; drop --data.text_encoder or use shards made with that encoder"
        )
    chosen = dict(given) if given is not None else meta.text_encoder
    if captioned and chosen is None:
        raise MetadataError(
            f"{root / META_FILE}: captioned shards but no text encoder: pass --data.text_encoder (e.g. "
            "'{name: clip, path: <local CLIP folder>}')"
        )
    return chosen


class TokenShardDataModule(L.LightningDataModule):
    """Pre-tokenised shards (``meta.json`` + ``<split>-NNNNNN.tar``) as training and validation batches.

    The metadata is read when the DataModule is built, so ``codebook_size``, ``grid_size``, ``num_classes``,
    ``num_tokens``, ``tokenizer_config`` and ``meta`` can be linked into the model (``apply_on="instantiate"``).
    Batches are ``{"ids": LongTensor (B, h*w), "label": LongTensor (B,)}`` (plus ``"key": list[str]`` with
    ``return_keys``, ``"text": list[str]`` for captioned shards). Each rank reads its
    own part, planned from the Trainer's rank and world size: training gives every rank the same number of full
    batches (a remainder of fewer than world_size x batch_size samples is left out each epoch, a different one each
    epoch); validation reads every sample exactly once, in order, with partial last batches.

    Args:
        root: data root holding meta.json and the shards.
        batch_size: training batch size per device.
        val_batch_size: validation batch size per device (default: batch_size).
        num_workers: DataLoader worker processes per device (0: load in the main process).
        shuffle_buffer: samples held by each worker's shuffle buffer (training).
        resampled: draw training shards with replacement instead of a permutation per epoch.
        samples_per_epoch: epoch length over all devices in resampled mode (default: the train split's size).
        seed: seed of shard order, shuffle buffer and resampling (combined with the epoch).
        prepare: built-in preparation to run when root/meta.json is missing ("digits"), else the data must exist.
        train_split: name of the training split in meta.json.
        val_split: name of the validation split in meta.json.
        return_keys: also put the samples' keys into each batch ("key"), e.g. to trace samples.
        test_split: split read by ``test`` (default: the validation split).
        predict_num_samples: number of images ``predict`` generates, class-balanced (label of sample i = i mod C).
        predict_batch_size: batch size of ``predict`` (default: the validation batch size); fixed batch composition.
        predict_seed: batch b of ``predict`` is seeded with predict_seed + b * predict_batch_size.
        bad_data: what a bad sample or unreadable shard does: ``skip`` (default: a warning per shard, the sample is
            replaced by another of its batch and counted in ``train/bad_samples``) or ``fail`` (an error naming shard
            and key). See :class:`~lit_nat.data.dataset.TokenShardDataset`.
        text_encoder: for captioned shards, the frozen text encoder the model is conditioned through (a config such
            as ``{name: clip, path: assets/clip-vit-large-patch14}``); default: the one ``meta.json`` names. Shards
            with cached text-encoder states accept no other (a model never reads another encoder's states).

    Checkpoints hold the training position (epoch, batches consumed and the layout that read them), so a resumed fit
    continues with exactly the batches an uninterrupted one would have read.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        prepare: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        return_keys: bool = False,
        test_split: str | None = None,
        predict_num_samples: int = 100,
        predict_batch_size: int | None = None,
        predict_seed: int = 0,
        bad_data: str = "skip",
        text_encoder: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise UsageError(f"batch sizes must be >= 1, got {batch_size} and {val_batch_size}")
        if num_workers < 0:
            raise UsageError(f"num_workers must be >= 0, got {num_workers}")
        root = str(root)  # a Path in the checkpoint's hyper-parameters would not load with weights_only=True
        meta = ensure_prepared(root, prepare)
        text_encoder = resolve_text_encoder(meta, text_encoder, Path(root))
        # not among the data's hyper-parameters: the model records the resolved encoder (linked from here), and the
        # loggers, which merge both sets, would call the user's unset value and the model's a conflict
        self.save_hyperparameters(ignore=["text_encoder"])
        self.root = Path(root)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.train_split = train_split
        self.val_split = val_split
        self.return_keys = return_keys
        self.test_split = test_split or val_split
        self.predict_num_samples = predict_num_samples
        self.predict_batch_size = predict_batch_size or self.val_batch_size
        self.predict_seed = predict_seed
        self.bad_data = bad_data
        self.meta: DatasetMeta = meta
        check_tokenizer(self.meta, self.root / META_FILE)
        self.codebook_size: int = self.meta.codebook_size
        self.grid_size: tuple[int, int] = self.meta.grid_size
        self.num_classes: int = self.meta.num_classes
        self.num_tokens: int = self.meta.num_tokens
        self.tokenizer_config: dict[str, Any] = dict(self.meta.tokenizer)
        self.text_encoder_config: dict[str, Any] | None = text_encoder
        self.rank, self.world_size = 0, 1
        self._resume_position: TrainPosition | None = None
        self._plan_batches: int | None = None  # batches of this rank's training plan (set by train_dataloader)

    def setup(self, stage: str | None = None) -> None:
        """Take rank and world size from the Trainer (after DDP is up), never from the environment."""
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    def _current_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def _dataset(self, split: str, mode: str, batch_size: int, option: str) -> TokenShardDataset:
        if split not in self.meta.splits:
            raise UsageError(
                f"{self.root / META_FILE} has no split {split!r} (it has {sorted(self.meta.splits)}); "
                f"choose one with --data.{option}"
            )
        info = self.meta.splits[split]
        return TokenShardDataset(
            self.root,
            [s.name for s in info.shards],
            info.shard_sizes,
            batch_size=batch_size,
            mode=mode,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            seed=self.seed,
            shuffle=mode != "eval",
            shuffle_buffer=self.shuffle_buffer,
            samples_per_epoch=self.samples_per_epoch,
            return_keys=self.return_keys,
            limits=SampleLimits(self.num_tokens, self.codebook_size, self.num_classes),
            bad_data=self.bad_data,
        )

    def _loader(self, dataset: TokenShardDataset, resume: tuple[int, int] | None = None) -> ShardLoader:
        _silence_len_warning()
        epoch = self._current_epoch()
        return ShardLoader(
            dataset,
            start_epoch=epoch or 0,
            epoch_fn=self._current_epoch,
            resume=resume,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> ShardLoader:
        mode = "resampled" if self.resampled else "train"
        dataset = self._dataset(self.train_split, mode, self.batch_size, "train_split")
        resume, self._plan_batches = None, len(dataset)
        if self._resume_position is not None:
            now = TrainPosition(0, 0, len(dataset), self.world_size, self.num_workers, self.batch_size, len(dataset))
            epoch, skip, note = resume_point(self._resume_position, now)
            resume, self._resume_position = (epoch, skip), None
            if note:
                rank_zero_warn(note)
            elif skip:
                rank_zero_info(f"data: resuming epoch {epoch} exactly after its first {skip} batches (the checkpoint's "
                               "training position)")  # fmt: skip
        return self._loader(dataset, resume)

    def captions(self, split: str | None = None) -> list[str]:
        """One caption per sample of ``split`` (default: the validation split), in shard order: the caption that
        sample's evaluation access draws. The prompts of a text model's FID (sample i: caption i mod len)."""
        split = split or self.val_split
        info = self.meta.split(split)
        limits = SampleLimits(self.num_tokens, self.codebook_size, self.num_classes)
        dataset = TokenShardDataset(self.root, [s.name for s in info.shards], info.shard_sizes, batch_size=256,
                                    mode="eval", seed=self.seed, limits=limits, bad_data=self.bad_data)  # fmt: skip
        captions = [text for batch in dataset for text in batch.get("text", [])]
        if not captions:
            raise MetadataError(f"{self.root / META_FILE}: split {split!r} has no captions")
        return captions

    # ------------------------------------------------------------------------------------------------------------------
    # The training position travels in checkpoints (LightningDataModule state hooks)
    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.num_training_batches in (0, float("inf")):
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        position = TrainPosition(trainer.current_epoch, int(done), int(trainer.num_training_batches),
                                 self.world_size, self.num_workers, self.batch_size, self._plan_batches)  # fmt: skip
        return {"train_position": asdict(position)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_position" in state_dict:
            self._resume_position = TrainPosition(**state_dict["train_position"])

    def val_dataloader(self) -> ShardLoader:
        return self._loader(self._dataset(self.val_split, "eval", self.val_batch_size, "val_split"))

    def test_dataloader(self) -> ShardLoader:
        return self._loader(self._dataset(self.test_split, "eval", self.val_batch_size, "test_split"))

    def predict_dataloader(self) -> DataLoader:
        """Class-balanced labels in fixed batches with fixed seeds (:mod:`lit_nat.data.labels`): Lightning deals
        whole batches to ranks, so the images do not depend on the number of devices."""
        return generation_loader(self.predict_num_samples, self.predict_batch_size, self.predict_seed, self.num_classes)


def generation_loader(
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    num_classes: int | None = None,
    labels: list[int] | None = None,
    skip: set[int] | None = None,
    prompts: list[str] | None = None,
) -> DataLoader:
    """A DataLoader over :class:`~lit_nat.data.labels.GenerationBatches` (items are whole batches), without the
    batches in ``skip`` (already generated by an interrupted run)."""
    if num_samples < 1:
        raise ValueError(f"the number of samples to generate must be >= 1, got {num_samples}")
    dataset = GenerationBatches(num_samples, batch_size, seed, num_classes=num_classes, labels=labels, skip=skip,
                                prompts=prompts)  # fmt: skip
    return DataLoader(dataset, batch_size=None, shuffle=False)
