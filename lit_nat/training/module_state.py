"""A :class:`~lit_nat.training.module.NATModule`'s state beside its weights: the data's tokenizer, built lazily and
never part of the ``state_dict``, and what the module's checkpoints carry and how a restored one is adopted.

A checkpoint holds the current generation schedule (``generation_schedule``, possibly found by a schedule search)
and portable hyper-parameters: the schedule by value and the assets pinned to their digests, so the checkpoint
alone rebuilds the model on another machine (:mod:`lit_nat.training.loading`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.conditioning.text import pinned as pinned_text_encoder
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.tokenizers import Tokenizer, tokenizer_from_config
from lit_nat.tokenizers import pinned as pinned_tokenizer
from lit_nat.tokenizers import relocate as relocate_tokenizer
from lit_nat.training.lora import restore_lora_state, save_lora_state


class LazyTokenizer:
    """The data's tokenizer as a module holds it: its config (from ``meta.json``), built into a :class:`Tokenizer` on
    first use. A plain object, not an ``nn.Module``: as a child of the module the tokenizer's weights (a VQGAN) would
    enter the NAT's ``state_dict`` and every checkpoint."""

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = config
        self._built: Tokenizer | None = None

    def on(self, device: torch.device) -> Tokenizer | None:
        """The tokenizer on ``device`` (built now if needed), or None without a config."""
        if self._built is None and self.config is not None:
            self._built = tokenizer_from_config(self.config)
        if self._built is not None:
            self._built.to(device)  # a no-op unless the module moved since
        return self._built

    def relocate(self, checkpoint: str) -> None:
        """Point the recorded weights elsewhere (``--tokenizer_checkpoint``); built again, and checked, on first use."""
        self.config = relocate_tokenizer(self.config, checkpoint)
        self._built = None

    def adopt_digest(self, recorded: dict[str, Any] | None) -> None:
        """A run from a config builds its tokenizer from the data's ``meta.json``, which records no digest; the
        checkpoint being restored (``recorded``: its tokenizer config) does. Adopt it, so the file the tokenizer is
        built from (the data's, or ``--tokenizer_checkpoint``) is checked against the one the weights were trained
        with."""
        mine = self.config
        if not mine or not isinstance(recorded, dict) or not recorded.get("sha256") or mine.get("sha256"):
            return
        if mine.get("name") == recorded.get("name") and mine.get("checkpoint") is not None:
            self.config = {**mine, "sha256": recorded["sha256"]}
            self._built = None  # built again, and checked, on first use


def portable_hyperparameters(hyper: dict[str, Any], schedule: GenerationSchedule) -> dict[str, Any]:
    """What a checkpoint's ``hyper_parameters`` change to so that they rebuild the model anywhere: the current
    schedule by value (no schedule file needed), the tokenizer and the text encoder with their files' digests."""
    return {
        "schedule": schedule.to_dict(),
        "schedule_params": None,
        "tokenizer": pinned_tokenizer(hyper.get("tokenizer")),
        "text_encoder": pinned_text_encoder(hyper.get("text_encoder")),
    }


def restored_schedule(saved: dict[str, Any], current: GenerationSchedule, source: str) -> GenerationSchedule:
    """The schedule a module runs after loading a checkpoint that saved ``saved``: the checkpoint's (the schedule the
    model was trained or searched with) unless ``source`` is ``config``; a line says when they differ."""
    checkpoint = GenerationSchedule.from_dict(saved, source="checkpoint")
    if source == "config":
        rank_zero_info(f"generation schedule: {current.name!r} of the config (schedule_source=config), "
                       f"not the checkpoint's {checkpoint.name!r}")  # fmt: skip
        return current
    if checkpoint.to_dict() != current.to_dict():
        rank_zero_info(
            f"generation schedule: the checkpoint's {checkpoint.name!r} ({checkpoint.steps} steps) replaces the "
            f"config's {current.name!r}; --model.schedule_source=config keeps the config's"
        )
    return checkpoint


def save_module_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """What a NATModule's checkpoint carries beside its weights: the current schedule, portable hyper-parameters and
    the training counters (the run's seed, replaced samples, the non-finite guard); a LoRA model keeps only its
    adapters and its base's identity (:mod:`lit_nat.training.lora`)."""
    checkpoint["generation_schedule"] = module.schedule.to_dict()
    if isinstance(checkpoint.get("hyper_parameters"), dict):  # portable: schedule by value, assets with digests
        hyper = checkpoint["hyper_parameters"]
        hyper.update(portable_hyperparameters(hyper, module.schedule))
    checkpoint["lit_nat_training"] = {"train_seed": module._train_seed, "bad_samples": module.bad_samples,
                                      "nonfinite": module.nonfinite_guard.state_dict()}  # fmt: skip
    if module.lora:
        save_lora_state(checkpoint, module.lora)


def restore_module_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """Adopt what :func:`save_module_state` wrote (before the weights are loaded: a LoRA checkpoint's ``state_dict``
    is completed here with the base the module holds)."""
    training = checkpoint.get("lit_nat_training") or {}
    module._train_seed = training.get("train_seed", module._train_seed)
    module.bad_samples = int(training.get("bad_samples", 0))
    module.nonfinite_guard.load_state_dict(training.get("nonfinite", {}))
    module._tokenizer.adopt_digest((checkpoint.get("hyper_parameters") or {}).get("tokenizer"))
    if "generation_schedule" in checkpoint:
        module.schedule = restored_schedule(checkpoint["generation_schedule"], module.schedule, module.schedule_source)
    if module.lora:
        restore_lora_state(module, checkpoint, module.lora)


def check_batch_ids(batch: dict[str, torch.Tensor], num_tokens: int) -> None:
    """A batch's ``ids`` are ``(B, N)`` with the model's N tokens, or a ValueError that says what to check."""
    ids = batch["ids"]
    if ids.ndim != 2 or ids.shape[1] != num_tokens:
        raise ValueError(
            f"batch ids have shape {tuple(ids.shape)}, expected (B, {num_tokens}); "
            "does the data's grid match the model's grid_size?"
        )
