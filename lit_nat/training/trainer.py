"""``NATTrainer``: the Lightning Trainer of every lit_nat command, with durable checkpoints and preemption."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO

from lit_nat.callbacks.model_size import ModelSize
from lit_nat.callbacks.reliability import Preemption, RunDirectoryLock
from lit_nat.core.checkpointing import DurableCheckpointIO


class NATTrainer(L.Trainer):
    """The Lightning Trainer; every run also gets, unless the arguments already hold one of the same kind: durable
    checkpoint files (:class:`~lit_nat.core.checkpointing.DurableCheckpointIO`: atomic, never with non-finite
    weights, damaged files named on load), one live fit per run directory
    (:class:`~lit_nat.callbacks.RunDirectoryLock`) and a checkpoint of the
    current step on SIGTERM/SIGUSR1 (:class:`~lit_nat.callbacks.Preemption`); and one line about the model instead of
    Lightning's per-layer summary (``--trainer.enable_model_summary true`` brings the table back).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(DurableCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        # first, so the run directory is locked before any other callback writes into it (e.g. the saved config)
        defaults = [cb() for cb in (RunDirectoryLock, Preemption) if not any(isinstance(c, cb) for c in callbacks)]
        kwargs["callbacks"] = [*defaults, *callbacks]
        if kwargs.get("enable_model_summary") is None:  # one line (ModelSize), not a per-layer table with FLOPs 0
            kwargs["enable_model_summary"] = False
            kwargs["callbacks"].append(ModelSize())
        super().__init__(*args, **kwargs)
