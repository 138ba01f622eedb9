"""``python -m lit_nat search``: the generation-strategy search on a trained checkpoint (official ``--mode search``).

How it runs: :meth:`NATTrainer.search <lit_nat.trainer.NATTrainer.search>` starts a ``validate`` run limited to one
batch with :class:`SearchRunner` as an extra callback, which runs the whole search in ``on_validation_start``. At that
point Lightning has restored the checkpoint exactly as ``validate`` does (the module's full state dict, so the EMA
backbone that :meth:`NATModule.generate` samples with, and the checkpoint's schedule), moved the module to the device
and set up the (DDP) strategy, so every rank takes part in the evaluator's all-gathers. The
:class:`GenerativeEvaluation` of the config's callbacks is taken out of the run (it would otherwise spend one FID
evaluation on the checkpoint's schedule at the end of the batch) and used directly as the objective.

Objective: F(schedule) = the evaluator's FID (fixed labels and per-batch seeds: common random numbers, so F of a fixed
model is deterministic). Every value is cached by xi, so nothing is evaluated twice; after each applied update the FID
of the new point is evaluated (as the official search does) and becomes the next update's ``base=``.

Output under ``out`` (rank 0), after every update: ``search_{k}.yaml`` (ours), ``stp_{k}.yaml`` (official format;
``k = 0`` is the starting point), ``best.yaml`` and ``state.json`` (the :class:`StrategySearch` state: xi, momentum
buffer, history, best; the FID cache; and what the FIDs depend on). Running the same command again resumes from
``state.json``; ``updates`` is the *total* number of updates, so a finished search is a no-op and a larger
``--updates`` continues it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.checkpointing import weights_digest
from lit_nat.errors import UsageError
from lit_nat.io import DirectoryLock, atomic_write_json
from lit_nat.schedule import GenerationSchedule
from lit_nat.search.gradient import StrategySearch
from lit_nat.search.strategy import SearchSpace, default_groups

STATE_FILE = "state.json"


def xi_key(xi: np.ndarray) -> str:
    return ",".join(f"{float(v):.12g}" for v in xi)


class SearchRunner(L.Callback):
    """Runs the search once the checkpoint is restored (see the module docstring).

    Args:
        evaluator: the FID objective.
        out_dir: output folder (state and strategy files).
        updates: total number of applied updates to reach.
        schedule: starting schedule (None: the checkpoint's); must have the resumed state's T when resuming.
        num_samples: images per FID evaluation (None: the evaluator's).
        momentum: SGD momentum (official 0.5).
        groups: the four blocks with their FD steps and learning rates.
        checkpoint: the checkpoint path (recorded; a resume with another checkpoint is an error).
    """

    def __init__(
        self,
        evaluator: GenerativeEvaluation,
        out_dir: str | Path,
        updates: int,
        schedule: GenerationSchedule | None,
        num_samples: int | None,
        momentum: float,
        groups: tuple,
        checkpoint: str | None,
    ) -> None:
        super().__init__()
        self.evaluator, self.out_dir, self.updates = evaluator, Path(out_dir), updates
        self.schedule, self.num_samples, self.momentum, self.groups = schedule, num_samples, momentum, groups
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
        self.search: StrategySearch | None = None
        self.cache: dict[str, float] = {}
        self.evaluations = 0  # new evaluations in this run
        self.done = False
        self._fingerprint: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------------------
    def fingerprint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """What the cached FIDs depend on besides xi: the sampled weights and the reference statistics by *content*
        (a checkpoint replaced at the same path, or other statistics under the same name, do not match), and the
        evaluation's settings."""
        ev = self.evaluator
        if ev.fid is None:
            ev.build(trainer, pl_module)
        reference = hashlib.sha256()
        for array in (ev.reference.mu, ev.reference.sigma):
            reference.update(np.ascontiguousarray(array, np.float64).tobytes())
        return {"checkpoint": self.checkpoint, "weights": weights_digest(pl_module.ema_backbone.state_dict()),
                "reference_stats": reference.hexdigest()[:32], "num_samples": self.num_samples or ev.num_samples,
                "batch_size": ev.batch_size, "seed": ev.seed, "extractor": ev.extractor_name}  # fmt: skip

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> StrategySearch:
        self._fingerprint = self.fingerprint(trainer, pl_module)
        path = self.out_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.exists() else None
        if state is None:
            schedule = self.schedule or pl_module.schedule
            pl_module.set_schedule(schedule)  # validated against the model (T <= tokens)
            space = SearchSpace(schedule.steps, self.groups)
            return StrategySearch(space, space.to_vector(schedule), self.momentum)
        steps = int(state["search"]["steps"])
        if self.schedule is not None and self.schedule.steps != steps:
            raise ValueError(
                f"search: --schedule has {self.schedule.steps} steps but the state to resume ({path}) is for T = "
                f"{steps}; drop --schedule to resume, or pass another --out for a {self.schedule.steps}-step search"
            )
        saved, now = state.get("fingerprint", {}), self._fingerprint
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed:
            raise UsageError(
                f"search: cannot resume {path}: its FIDs were measured with other weights, statistics or settings "
                f"(saved, now): {changed}; pass another --out for a new search"
            )
        space = SearchSpace(steps, self.groups)
        search = StrategySearch(space, np.asarray(state["search"]["xi"]), self.momentum)
        if state["search"].get("best_fid") is None:  # JSON null: no finite FID yet
            state["search"]["best_fid"] = math.inf
        search.load_state_dict(state["search"])
        if self.schedule is not None:
            rank_zero_info("search: resuming, so --schedule (same T) only served as a check; the state's xi is used")
        self.cache = {k: (math.nan if v is None else float(v)) for k, v in state.get("cache", {}).items()}
        rank_zero_info(f"search: resuming {path} at update {search.updates} ({len(self.cache)} cached FIDs)")
        return search

    def fid(self, trainer: L.Trainer, pl_module: L.LightningModule):
        evaluator, space = self.evaluator, self.search.space

        def objective(schedule: GenerationSchedule) -> float:
            key = xi_key(space.to_vector(schedule))
            if key not in self.cache:
                saved = evaluator.num_samples
                evaluator.num_samples = self.num_samples or saved
                try:
                    self.cache[key] = float(evaluator.evaluate(trainer, pl_module, schedule=schedule)["fid"])
                finally:
                    evaluator.num_samples = saved
                self.evaluations += 1
                self._write_state(trainer)  # a kill loses at most the evaluation in progress
            return self.cache[key]

        return objective

    # ------------------------------------------------------------------------------------------------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done:
            return
        self.done = True
        self.search = search = self._start(trainer, pl_module)
        fid = self.fid(trainer, pl_module)
        if search.updates == 0 and not search.history:  # the starting point, as the official stp_0
            fid(search.schedule)
            self._write(trainer, initial=True)
        while search.updates < self.updates:
            base = self.cache.get(xi_key(search.xi))
            record = search.step(fid, base=base)
            if record.skipped:  # F is deterministic: the same point would fail again
                self._write(trainer)
                rank_zero_warn(f"search: update skipped ({record.reason}); stopping at update {search.updates}")
                break
            after = fid(search.schedule)  # the new point's FID (official: "evaluate the new base, save")
            search.history[-1]["fid_after"] = after
            if math.isfinite(after) and after < search.best_fid:
                search.best_fid, search.best_xi = after, search.xi.copy()
            self._write(trainer)
            rank_zero_info(
                f"search: update {search.updates} FID {record.fid:.4f} -> {after:.4f} |grad| {record.grad_norm:.4g} "
                f"(best {search.best_fid:.4f}, {record.evaluations} evaluations)"
            )
        if not trainer.is_global_zero:
            return
        if search.updates >= self.updates:
            rank_zero_info(f"search: {search.updates} updates done, best FID {search.best_fid:.4f} -> {self.out_dir}")

    def _write(self, trainer: L.Trainer, initial: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        search, folder = self.search, self.out_dir
        folder.mkdir(parents=True, exist_ok=True)
        k = search.updates
        if initial or search.history and not search.history[-1].get("skipped"):
            search.schedule.save(folder / f"search_{k}.yaml")
            search.schedule.save(folder / f"stp_{k}.yaml", official=True)
        best_xi, best_fid = search.best_xi, search.best_fid
        if best_xi is None:  # only the starting point is known
            best_xi, best_fid = search.xi, self.cache.get(xi_key(search.xi), math.nan)
        if math.isfinite(best_fid):
            search.space.to_schedule(best_xi, name=f"best (FID {best_fid:.4f})").save(folder / "best.yaml")
        self._write_state(trainer)

    def _write_state(self, trainer: L.Trainer) -> None:
        """``state.json``: the search (xi, momentum, history, best), the FID cache and the fingerprint (rank 0)."""
        if not trainer.is_global_zero:
            return
        state = {"search": self.search.state_dict(), "names": self.search.space.names,
                 "fingerprint": self._fingerprint, "cache": self.cache}  # fmt: skip
        atomic_write_json(self.out_dir / STATE_FILE, state, indent=1)  # non-finite FIDs are written as null


def run_search(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    ckpt_path: str | None,
    updates: int,
    schedule: str | None,
    num_samples: int | None,
    momentum: float,
    ratio_step: float,
    ratio_lr: float,
    other_step: float,
    other_lr: float,
    out: str,
) -> dict[str, Any]:
    """The body of :meth:`NATTrainer.search`; returns the final state (as written to ``out/state.json``)."""
    if updates < 0:
        raise ValueError(f"search: updates must be >= 0, got {updates}")
    if num_samples is not None and num_samples < 2:
        raise ValueError(f"search: num_samples must be >= 2 (a covariance), got {num_samples}")
    if datamodule is None:
        raise ValueError("search: needs the data module of the config (the validate run that loads the checkpoint)")
    parsed = GenerationSchedule.preset(schedule) if schedule else None  # bad files fail before any work
    found = [cb for cb in trainer.callbacks if isinstance(cb, GenerativeEvaluation)]
    if not found:
        raise ValueError(
            "search: no GenerativeEvaluation in trainer.callbacks; add one to the config (e.g. "
            "--trainer.callbacks+=lit_nat.callbacks.GenerativeEvaluation ...) to define the FID it minimises"
        )
    if ckpt_path is None:
        rank_zero_warn("search: no --ckpt_path; searching on the model's initial (untrained) weights")
    evaluator = found[0]
    runner = SearchRunner(evaluator, out, updates, parsed, num_samples, momentum,
                          default_groups(ratio_step, ratio_lr, other_step, other_lr), ckpt_path)  # fmt: skip
    limit = trainer.limit_val_batches
    index = trainer.callbacks.index(evaluator)
    trainer.callbacks.remove(evaluator)  # its own end-of-validation FID would be one wasted evaluation
    trainer.callbacks.append(runner)
    trainer.limit_val_batches = 1  # the validation hooks need one batch; the search runs before it
    # one live search per output folder (rank 0 writes it); released when the search ends or the process dies
    lock = DirectoryLock(out, "lit_nat search").acquire() if trainer.is_global_zero else None
    try:
        with warnings.catch_warnings():  # Lightning asks for the callback taken out above: it is used directly
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")
            trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    finally:
        if lock is not None:
            lock.release()
        trainer.limit_val_batches = limit
        trainer.callbacks.remove(runner)
        trainer.callbacks.insert(index, evaluator)
    if not runner.done:
        raise RuntimeError("search: the validate run ended before the search ran (no validation batch?)")
    return runner.search.state_dict()
