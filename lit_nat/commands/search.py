"""``python -m lit_nat search``: the generation-strategy search on a trained checkpoint (official ``--mode search``).

How it runs: :func:`search` starts a ``validate`` run limited to one
batch with :class:`SearchRunner` as an extra callback, which runs the whole search in ``on_validation_start``. At that
point Lightning has restored the checkpoint exactly as ``validate`` does (the module's full state dict, so the EMA
backbone that :meth:`NATModule.generate` samples with, and the checkpoint's schedule), moved the module to the device
and set up the (DDP) strategy, so every rank takes part in the evaluator's all-gathers. The
:class:`GenerativeEvaluation` of the config's callbacks is taken out of the run (it would otherwise spend one FID
evaluation on the checkpoint's schedule at the end of the batch) and used directly as the objective.

Objective: F(schedule) = the evaluator's FID (fixed labels and per-batch seeds: common random numbers, so F of a fixed
model is deterministic). Every value is cached by xi, so nothing is evaluated twice; after each applied update the FID
of the new point is evaluated (as the official search does) and becomes the next update's ``base=``.

Output under ``out`` (rank 0), after every update, written by the :class:`~lit_nat.search.session.SearchSession` that
the ``fit`` callback uses too: ``search_{k}.yaml`` (ours), ``stp_{k}.yaml`` (official format; ``k = 0`` is the starting
point), ``best.yaml`` and ``state.json`` (the :class:`StrategySearch` state: xi, momentum buffer, history, best; the
FID cache; and what the FIDs depend on). Running the same command again resumes from
``state.json``; ``updates`` is the *total* number of updates, so a finished search is a no-op and a larger
``--updates`` continues it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_nat.callbacks.evaluation import GenerativeEvaluation, find_evaluation
from lit_nat.core.checkpointing import weights_digest
from lit_nat.core.errors import UsageError
from lit_nat.core.io import DirectoryLock, changed_entries
from lit_nat.core.progress import progress, trainer_shows_progress
from lit_nat.data import TokenShardDataModule
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.search.gradient import StrategySearch
from lit_nat.search.session import STATE_FILE, SearchSession, SearchSettings
from lit_nat.training.loading import AssetLocations
from lit_nat.training.lora import AdapterSet
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer

__all__ = ["STATE_FILE", "SearchRunner", "run_search", "search"]


class SearchRunner(L.Callback):
    """Runs the search once the checkpoint is restored (see the module docstring).

    Args:
        evaluator: the FID objective.
        out_dir: output folder (state and strategy files).
        updates: total number of applied updates to reach.
        schedule: starting schedule (None: the checkpoint's); must have the resumed state's T when resuming.
        settings: the search's hyper-parameters.
        checkpoint: the checkpoint path (recorded; a resume with another checkpoint is an error).
    """

    def __init__(self, evaluator: GenerativeEvaluation, out_dir: str | Path, updates: int,
                 schedule: GenerationSchedule | None, settings: SearchSettings,
                 checkpoint: str | None) -> None:  # fmt: skip
        super().__init__()
        self.session = SearchSession(settings, out_dir, evaluator, cache=True)  # the model is fixed: cache every FID
        self.updates, self.schedule = updates, schedule
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
        self.done = False

    @property
    def search(self) -> StrategySearch | None:
        return self.session.search

    # ------------------------------------------------------------------------------------------------------------------
    def fingerprint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """What the cached FIDs depend on besides xi: the sampled weights and the reference statistics by *content*
        (a checkpoint replaced at the same path, or other statistics under the same name, do not match), and the
        evaluation's settings."""
        ev = self.session.evaluator
        if ev.fid is None:
            ev.build(trainer, pl_module)
        reference = hashlib.sha256()
        for array in (ev.reference.mu, ev.reference.sigma):
            reference.update(np.ascontiguousarray(array, np.float64).tobytes())
        return {"checkpoint": self.checkpoint, "weights": weights_digest(pl_module.ema_backbone.state_dict()),
                "reference_stats": reference.hexdigest()[:32], "num_samples": self.session.images_per_evaluation(),
                "batch_size": ev.batch_size, "seed": ev.seed, "extractor": ev.extractor_name}  # fmt: skip

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> StrategySearch:
        session = self.session
        session.fingerprint = now = self.fingerprint(trainer, pl_module)
        path = session.out_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.exists() else None
        if state is None:
            schedule = self.schedule or pl_module.schedule
            pl_module.set_schedule(schedule)  # validated against the model (T <= tokens)
            return session.start(schedule)
        steps = int(state["search"]["steps"])
        if self.schedule is not None and self.schedule.steps != steps:
            raise ValueError(
                f"search: --schedule has {self.schedule.steps} steps but the state to resume ({path}) is for T = "
                f"{steps}; drop --schedule to resume, or pass another --out for a {self.schedule.steps}-step search"
            )
        changed = changed_entries(state.get("fingerprint", {}), now)
        if changed:
            raise UsageError(
                f"search: cannot resume {path}: its FIDs were measured with other weights, statistics or settings "
                f"(saved, now): {changed}; pass another --out for a new search"
            )
        search = session.restore(state)
        if self.schedule is not None:
            rank_zero_info("search: resuming, so --schedule (same T) only served as a check; the state's xi is used")
        rank_zero_info(f"search: resuming {path} at update {search.updates} ({len(session.cache)} cached FIDs)")
        return search

    # ------------------------------------------------------------------------------------------------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done:
            return
        self.done = True
        session = self.session
        search = self._start(trainer, pl_module)
        if search.updates == 0 and not search.history:  # the starting point, as the official stp_0
            session.objective(trainer, pl_module)(search.schedule)
            session.write(trainer)
        with progress(self.updates, "search", unit="update", enabled=session.show_progress, initial=search.updates,
                      leave=True) as bar:  # fmt: skip
            while search.updates < self.updates:
                record, after = session.step(trainer, pl_module, evaluate_new_point=True)
                session.write(trainer, new_point=not record.skipped)
                if record.skipped:  # F is deterministic: the same point would fail again
                    rank_zero_warn(f"search: update skipped ({record.reason}); stopping at update {search.updates}")
                    break
                clip = search.history[-1].get("clip_score_after")
                rank_zero_info(
                    f"search: update {search.updates} FID {record.fid:.4f} -> {after:.4f} |grad| "
                    f"{record.grad_norm:.4g} (best {search.best_fid:.4f}, {record.evaluations} evaluations)"
                    + ("" if clip is None else f", CLIP score {clip:.2f}")
                )
                bar.update(1)
                bar.set_postfix(fid=f"{after:.4f}", best=f"{search.best_fid:.4f}")
        if search.updates >= self.updates:
            done = f"{search.updates} updates done, best FID {search.best_fid:.4f}"
            rank_zero_info(f"search: {done} -> {session.out_dir}")


def search(trainer: NATTrainer, model: NATModule, datamodule: TokenShardDataModule, ckpt_path: str | None = None,
           updates: int = 10, schedule: str | None = None, out: str = "search",
           settings: SearchSettings = SearchSettings(), assets: AssetLocations = AssetLocations(),
           adapters: AdapterSet = AdapterSet()) -> dict[str, Any]:  # fmt: skip
    """Generation-strategy search (AutoNAT Sec. 4.2, the official --mode search) on a trained checkpoint.

    Projected momentum SGD on the schedule with forward-difference gradients of the FID of the config's evaluation:
    section (common random numbers). Writes out/search_{k}.yaml, out/stp_{k}.yaml (official format), out/best.yaml
    and out/state.json after every update; the same command again resumes from out/state.json, and
    --print_config saves the whole search (config, checkpoint, settings) as one YAML to rerun. LoRA --adapters are
    merged into the checkpoint's weights first (the search's record of the weights covers them).

    Args:
        ckpt_path: checkpoint to search on (lit_nat's or imported official weights).
        updates: total number of SGD updates (a resumed search continues up to this count).
        schedule: starting schedule: a schedule YAML (ours or official) or a preset name; default: the
            checkpoint's. When resuming it must have the saved search's number of steps.
        out: output folder (state and strategy files).
    """
    assets.apply(model)
    with adapters.merged_in(trainer):
        return run_search(trainer, model, datamodule, ckpt_path, updates, schedule, settings, out)


def run_search(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None,
               ckpt_path: str | None, updates: int, schedule: str | None, settings: SearchSettings,
               out: str) -> dict[str, Any]:  # fmt: skip
    """:func:`search` once the model's assets are in place; returns the final search state (``out/state.json``)."""
    if updates < 0:
        raise ValueError(f"search: updates must be >= 0, got {updates}")
    if datamodule is None:
        raise ValueError("search: needs the data module of the config (the validate run that loads the checkpoint)")
    parsed = GenerationSchedule.preset(schedule) if schedule else None  # bad files fail before any work
    evaluator = find_evaluation(trainer.callbacks)  # a config's evaluation: section or one in trainer.callbacks
    if evaluator is None:
        raise ValueError(
            "search: no GenerativeEvaluation enabled; the config needs one (its evaluation: section with enabled: "
            "true, or one in trainer.callbacks) to define the FID it minimises"
        )
    if ckpt_path is None:
        rank_zero_warn("search: no --ckpt_path; searching on the model's initial (untrained) weights")
    runner = SearchRunner(evaluator, out, updates, parsed, settings, ckpt_path)
    index = trainer.callbacks.index(evaluator)
    trainer.callbacks.remove(evaluator)  # its own end-of-validation FID would be one wasted evaluation
    trainer.callbacks.append(runner)
    # the search shows its own bars (updates, FID evaluations, images), not an idle "Validation" bar around them
    runner.session.show_progress = evaluator.show_progress = trainer_shows_progress(trainer)
    bar_callback, limit = trainer.progress_bar_callback, trainer.limit_val_batches
    if bar_callback is not None:
        trainer.callbacks.remove(bar_callback)
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
        evaluator.show_progress = None
        if bar_callback is not None:
            trainer.callbacks.append(bar_callback)
    if not runner.done:
        raise RuntimeError("search: the validate run ended before the search ran (no validation batch?)")
    return runner.search.state_dict()
