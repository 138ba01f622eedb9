"""``ScheduleSearch``: AutoNAT's generation-strategy search (Sec. 4.2) run inside ``fit``, between epochs.

Hook: ``on_train_epoch_end``. It fires exactly once per epoch on every rank, never during the sanity check or a
``validate`` run, also when there is no validation loop, and ``pl_module.log`` is allowed there. In Lightning 2.x the
epoch-end validation has already run when it fires, so that validation reports the schedule the epoch trained with and
the next one the newly searched schedule. A ModelCheckpoint written at that validation holds the pre-update module
schedule *and* the pre-update search state, so a resume from it redoes this update: the two never disagree.

Evaluator: the :class:`GenerativeEvaluation` already in ``trainer.callbacks`` (or one passed in). Reusing it means
the search minimises exactly the FID that validation reports (same extractor, reference statistics, fixed labels and
per-batch seeds, i.e. common random numbers) and loads the extractor once. ``num_samples`` may lower the images per
search evaluation (each update costs up to 4T - 1 evaluations) without changing the validation FID.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.io import atomic_write_json
from lit_nat.schedule import GenerationSchedule
from lit_nat.search.gradient import StrategySearch, UpdateRecord
from lit_nat.search.strategy import SearchSpace, default_groups


class ScheduleSearch(L.Callback):
    """Every ``every_n_epochs`` epochs: one projected-SGD update of the generation schedule by FD gradients of FID.

    Args:
        every_n_epochs: run an update at the end of every n-th training epoch.
        max_updates: stop updating after this many applied updates (None: never).
        momentum: SGD momentum (official 0.5).
        ratio_step: FD step of the mask ratios (official 0.01).
        ratio_lr: learning rate of the mask ratios (official 1e-3).
        other_step: FD step of temperatures and guidance (official 0.1).
        other_lr: learning rate of temperatures and guidance (official 0.1).
        num_samples: images per search evaluation (None: the evaluator's own ``num_samples``).
        evaluation: the evaluator to use (None: the ``GenerativeEvaluation`` found in ``trainer.callbacks``).
        output_dir: folder, relative to the run's log directory, for the strategy YAML files.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_updates: int | None = None,
        momentum: float = 0.5,
        ratio_step: float = 0.01,
        ratio_lr: float = 1e-3,
        other_step: float = 0.1,
        other_lr: float = 0.1,
        num_samples: int | None = None,
        evaluation: GenerativeEvaluation | None = None,
        output_dir: str = "searched_strategies",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"ScheduleSearch: every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_samples is not None and num_samples < 2:
            raise ValueError(f"ScheduleSearch: num_samples must be >= 2 (a covariance), got {num_samples}")
        self.every_n_epochs = every_n_epochs
        self.max_updates = max_updates
        self.momentum = momentum
        self.groups = default_groups(ratio_step, ratio_lr, other_step, other_lr)
        self.num_samples = num_samples
        self.evaluation = evaluation
        self.output_dir = output_dir
        self.search: StrategySearch | None = None
        self._pending_state: dict[str, Any] | None = None  # loaded before the module's schedule (T) is known
        self.last: UpdateRecord | None = None

    # ------------------------------------------------------------------------------------------------------------------
    def _evaluator(self, trainer: L.Trainer) -> GenerativeEvaluation:
        if self.evaluation is not None:
            return self.evaluation
        found = [cb for cb in trainer.callbacks if isinstance(cb, GenerativeEvaluation)]
        if not found:
            raise ValueError("ScheduleSearch needs a GenerativeEvaluation callback (or evaluation=...) to measure FID")
        return found[0]

    def _ensure_search(self, pl_module: L.LightningModule) -> StrategySearch:
        if self.search is None:
            schedule: GenerationSchedule = pl_module.schedule
            space = SearchSpace(schedule.steps, self.groups)
            self.search = StrategySearch(space, space.to_vector(schedule), self.momentum)
            if self._pending_state is not None:  # a resumed fit continues from the checkpointed state
                self.search.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.search

    def objective(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        """F(schedule) = the evaluator's FID with this search's number of samples (every rank must call it)."""
        evaluator = self._evaluator(trainer)

        def fid(schedule: GenerationSchedule) -> float:
            saved = evaluator.num_samples
            evaluator.num_samples = self.num_samples or saved  # only the plan reads it; restored at once
            try:
                return float(evaluator.evaluate(trainer, pl_module, schedule=schedule)["fid"])
            finally:
                evaluator.num_samples = saved

        return fid

    # ------------------------------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        search = self._ensure_search(pl_module)
        if self.max_updates is not None and search.updates >= self.max_updates:
            return
        images_per_eval = self.num_samples or self._evaluator(trainer).num_samples
        start = time.perf_counter()
        record = search.step(self.objective(trainer, pl_module))
        record.seconds = time.perf_counter() - start
        search.history[-1]["seconds"] = record.seconds
        search.history[-1].update(epoch=trainer.current_epoch, global_step=trainer.global_step)
        self.last = record
        if record.skipped:
            rank_zero_warn(f"ScheduleSearch: update skipped, schedule unchanged ({record.reason})")
        else:
            pl_module.set_schedule(search.schedule)
        self._log(pl_module, record)
        self._write(trainer, record)
        rank_zero_info(
            f"ScheduleSearch: update {search.updates} FID {record.fid:.4f} |grad| {record.grad_norm:.4g} "
            f"({record.evaluations} evaluations x {images_per_eval} images, {record.seconds:.1f} s)"
        )

    def _log(self, pl_module: L.LightningModule, record: UpdateRecord) -> None:
        search = self.search
        # every rank holds the same synced values, so no sync_dist; NaN grad_norm marks a skipped update
        values = {"search/fid": record.fid, "search/grad_norm": record.grad_norm, "search/updates": search.updates,
                  "search/best_fid": search.best_fid, "search/evaluations": record.evaluations}  # fmt: skip
        values.update({f"search/xi/{name}": float(v) for name, v in zip(search.space.names, search.xi)})
        for key, value in values.items():
            if math.isfinite(value):
                pl_module.log(key, float(value), sync_dist=False, on_step=False, on_epoch=True)

    def _write(self, trainer: L.Trainer, record: UpdateRecord) -> None:
        """``search_{k}.yaml`` (ours), ``stp_{k}.yaml`` (official), ``best.yaml`` and ``history.json`` (rank 0)."""
        folder = Path(trainer.log_dir or trainer.default_root_dir) / self.output_dir  # every rank: log_dir broadcasts
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        search = self.search
        k = search.updates
        if not record.skipped:
            search.schedule.save(folder / f"search_{k}.yaml")
            search.schedule.save(folder / f"stp_{k}.yaml", official=True)
        if search.best_xi is not None:
            best = search.space.to_schedule(search.best_xi, name=f"best (FID {search.best_fid:.4f})")
            best.save(folder / "best.yaml")
        atomic_write_json(folder / "history.json", {"best_fid": search.best_fid, "names": search.space.names,
                                                    "history": search.history}, indent=1)  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.search is None:
            return dict(self._pending_state or {})
        return self.search.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # T comes from the module's schedule, known only once the fit starts: keep the state until then
        self.search, self._pending_state = None, dict(state_dict) if state_dict else None
