"""Callbacks that keep a fit safe: one live fit per run directory, and preemption that saves the current step.

``NATTrainer`` adds both to every run (unless the config lists its own), so a user gets them without asking.

Preemption. SLURM and most schedulers send SIGTERM before they kill a job (and ``--signal=USR1@90`` sends SIGUSR1
before the time limit). Lightning records a SIGTERM, broadcasts it so every rank stops after the same batch, and
raises ``SIGTERMException`` there; by itself it then exits with status 0 and saves nothing. :class:`Preemption` turns
that into: a checkpoint of the current step (written atomically), a requeue of the job under SLURM, and a non-zero
exit (143) from the command line. SIGUSR1 takes the same path: its handler only re-raises SIGTERM, so the checkpoint is
taken at a batch boundary on every rank (Lightning's own SIGUSR1 handler saves from inside the signal handler, i.e.
possibly in the middle of an optimiser step, and keeps training). Ctrl-C (SIGINT) during ``fit`` takes it too, so it
saves the current step like SIGTERM (Lightning would otherwise catch the ``KeyboardInterrupt`` wherever it lands, even
in the middle of a step, save nothing and exit 1); the command line then exits 130, and a second Ctrl-C interrupts at
once. Resuming from that checkpoint is exact (see
:class:`~lit_nat.data.TokenShardDataModule` and :func:`~lit_nat.training.objective.seed_training_step`).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_nat.core import slurm
from lit_nat.core.io import DirectoryLock


class RunDirectoryLock(L.Callback):
    """Refuse to ``fit`` into a run directory (``trainer.default_root_dir``) that another live fit is using.

    Two fits in one directory would interleave checkpoints and logs (last writer wins). The lock
    (:class:`~lit_nat.core.io.DirectoryLock`) is taken by global rank 0 before anything is written and released at the
    end; the kernel releases it if the process dies, so a killed run never blocks its own resume.
    """

    def __init__(self) -> None:
        self.lock: DirectoryLock | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.lock is None:
            self.lock = DirectoryLock(trainer.default_root_dir, "lit_nat fit").acquire()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A failed fit does not reach the teardown hooks; in a notebook or a test the process lives on, and its
        # next fit in the same directory would find the directory "in use by this process".
        self.teardown(trainer, pl_module, "fit")


def hpc_checkpoint_path(directory: str | os.PathLike) -> Path:
    """The next ``hpc_ckpt_N.ckpt`` in ``directory``: the file Lightning resumes a requeued SLURM job from."""
    directory = Path(directory)
    numbers = [int(m.group(1)) for p in directory.glob("hpc_ckpt_*.ckpt") if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt",
                                                                                               p.name))]  # fmt: skip
    return directory / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class Preemption(L.Callback):
    """On SIGTERM (or SIGUSR1) during ``fit``: save the current step, requeue under SLURM, exit non-zero.

    The checkpoint goes to ``<default_root_dir>/hpc_ckpt_N.ckpt`` under SLURM (the requeued job resumes from it by
    itself, as after Lightning's own requeue), otherwise to the ``last.ckpt`` of the first ``ModelCheckpoint`` with
    ``save_last`` (or ``<default_root_dir>/preempted.ckpt``); resume with ``--ckpt_path <that file>``.

    Args:
        requeue: under SLURM, requeue the job after saving (``scontrol requeue``).
        scontrol: the scontrol command (tests substitute a fake one).
    """

    def __init__(self, requeue: bool = True, scontrol: str = "scontrol") -> None:
        self.requeue = requeue
        self.scontrol = scontrol
        self.saved: Path | None = None
        self._previous_usr1: Any = None
        self._previous_int: Any = None

    # SIGUSR1 -> SIGTERM: one path, synchronised by Lightning at a batch boundary on every rank
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and hasattr(signal, "SIGUSR1"):
            # Installed before Lightning registers its handlers, which then leaves SIGUSR1 to us.
            self._previous_usr1 = signal.signal(signal.SIGUSR1, _usr1_to_sigterm)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Ctrl-C -> the SIGTERM path only once Lightning's SIGTERM handler is in place (it is registered after setup)
        self._previous_int = signal.signal(signal.SIGINT, self._sigint_to_sigterm)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        if stage == "fit" and self._previous_int is not None:
            signal.signal(signal.SIGINT, self._previous_int)
            self._previous_int = None

    def _sigint_to_sigterm(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C of a fit: the SIGTERM path (stop at a batch boundary, save, exit 130); the handler before
        ours is put back, so a second Ctrl-C raises KeyboardInterrupt at once."""
        global _stop_signal
        previous = self._previous_int if self._previous_int is not None else signal.default_int_handler
        signal.signal(signal.SIGINT, previous)
        self._previous_int = None
        if not callable(signal.getsignal(signal.SIGTERM)):  # Lightning's handler is gone (the run is ending): a
            raise KeyboardInterrupt  # SIGTERM would kill the process; interrupt as a plain Ctrl-C does
        _stop_signal = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        if SLURMEnvironment.detect():
            return hpc_checkpoint_path(trainer.default_root_dir)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "preempted.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it (Lightning stopped all of them after the same batch)
        self.saved = path
        requeued = False
        job = slurm.current_job_id() if SLURMEnvironment.detect() else None
        if trainer.is_global_zero and self.requeue and job is not None:
            requeued = slurm.requeue(job, (self.scontrol,))
        rank_zero_info(
            f"lit_nat: stopped by {stop_signal_name()} after step {trainer.global_step}: saved {path}"
            + (f"; requeued SLURM job {job}" if requeued else "; resume with --ckpt_path " + str(path))
        )


#: the signal that stopped this process's run: a Ctrl-C turned into the SIGTERM path says SIGINT (signal handlers are
#: per process, so is this record); read by the command line for its last line and exit status
_stop_signal = "SIGTERM"


def stop_signal_name() -> str:
    """``"SIGINT"`` if a Ctrl-C stopped the run through the SIGTERM path, else ``"SIGTERM"``."""
    return _stop_signal


def raise_if_stopped(trainer: L.Trainer, synced: bool = True) -> None:
    """Raise Lightning's ``SIGTERMException`` if a SIGTERM arrived. Long work inside a hook (a FID evaluation, a
    schedule search, sampling) calls this between batches, so SIGTERM stops it within seconds instead of after hours
    (Lightning itself checks only between training and validation batches).

    ``synced``: decide on every rank together (one tiny all-reduce under DDP), for callers that call it equally often
    on every rank; otherwise each rank looks at its own flag (a scheduler signals every task of a job)."""
    flag = bool(trainer.received_sigterm)
    if synced and trainer.world_size > 1:
        total = trainer.strategy.reduce(torch.tensor(float(flag), device=trainer.strategy.root_device), reduce_op="sum")
        flag = bool(total > 0)
    if flag:
        raise SIGTERMException()


def _usr1_to_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
