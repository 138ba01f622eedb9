"""Callbacks that play a hostile environment inside a real ``fit``: kill the process at a step, record every batch."""

from __future__ import annotations

import hashlib
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Send ``signal`` to this process once ``global_step`` reaches ``step`` (after that step's optimiser update), as a
    scheduler or an operator would -- once: ``marker`` is created first, and a run that finds it is not killed."""

    def __init__(self, step: int, marker: str, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.marker = marker
        self.signum = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), self.signum)


class BatchLog(L.Callback):
    """Append ``<global_step> <epoch> <batch_idx> <sha256 of ids and labels>`` for every training batch to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha256(batch["ids"].cpu().numpy().tobytes() + batch["label"].cpu().numpy().tobytes())
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {trainer.current_epoch} {batch_idx} {digest.hexdigest()[:16]}\n")
