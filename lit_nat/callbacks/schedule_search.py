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

The search itself (objective, update, files) is a :class:`~lit_nat.search.session.SearchSession`, the same object the
``search`` command uses; this callback only decides when it steps and logs what it did.

At the start of ``fit`` (``setup``) it finds its evaluator, so a config without one fails before training; with the
evaluation switched off (``--evaluation.enabled false``) the search is off too, and says so. When training starts it
prints what one update costs (:func:`lit_nat.callbacks.cost.print_search_cost`). ``enabled: false``
(``--schedule_search.enabled false``) turns it off alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_nat.callbacks.cost import print_search_cost
from lit_nat.callbacks.evaluation import GenerativeEvaluation, find_evaluation
from lit_nat.core.progress import trainer_shows_progress
from lit_nat.search.gradient import StrategySearch, UpdateRecord
from lit_nat.search.session import SearchSession, SearchSettings

#: the callback's own key beside the search state in a checkpoint
EPOCHS_ENDED = "epochs_ended"

class ScheduleSearch(L.Callback):
    """Every ``every_n_epochs`` epochs: one projected-SGD update of the generation schedule by FD gradients of FID.

    Args:
        every_n_epochs: run an update at the end of every n-th training epoch.
        max_updates: stop updating after this many applied updates (None: never).
        settings: the search's hyper-parameters (momentum, finite-difference steps, learning rates, images per
            evaluation; default: the official values), the same :class:`~lit_nat.search.SearchSettings` as the
            ``search`` command's.
        evaluation: the evaluator to use (None: the ``GenerativeEvaluation`` found in ``trainer.callbacks``).
        output_dir: folder, relative to the run's log directory, for the strategy files and ``state.json``.
        enabled: False turns the callback off (``--schedule_search.enabled false`` for a config's ``schedule_search:``
            section): the schedule stays the config's (or the checkpoint's).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_updates: int | None = None,
        settings: SearchSettings | None = None,
        evaluation: GenerativeEvaluation | None = None,
        output_dir: str = "searched_strategies",
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.enabled = enabled
        if every_n_epochs < 1:
            raise ValueError(f"ScheduleSearch: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.max_updates = max_updates
        settings = settings or SearchSettings()
        # no FID cache: the model trains between updates, so an old FID of a point is stale
        self.session = SearchSession(settings, evaluator=evaluation)
        self.output_dir = output_dir
        self._pending_state: dict[str, Any] | None = None  # loaded before the module's schedule (T) is known
        self.epochs_ended: int | None = 0  # epochs whose end this search has seen (checkpointed)
        self.last: UpdateRecord | None = None

    @property
    def search(self) -> StrategySearch | None:
        return self.session.search

    # ------------------------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit" or self.session.evaluator is not None:
            return
        self.session.evaluator = find_evaluation(trainer.callbacks)
        if self.session.evaluator is not None:
            return
        if any(isinstance(cb, GenerativeEvaluation) for cb in trainer.callbacks):
            self.enabled = False
            rank_zero_info("ScheduleSearch: off, because the evaluation whose FID it minimises is off "
                           "(evaluation.enabled false)")  # fmt: skip
            return
        raise ValueError("ScheduleSearch needs a GenerativeEvaluation (a config's evaluation: section, one in "
                         "trainer.callbacks, or evaluation=...) for the FID it minimises")  # fmt: skip

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            images = self.session.images_per_evaluation()
            print_search_cost(self.session.evaluator, trainer, pl_module, images, self.every_n_epochs,
                              self.max_updates)  # fmt: skip
        # A checkpoint saved at an epoch's last batch (ModelCheckpoint's every_n_train_steps, a preemption) comes
        # before that epoch's end; Lightning resumes it inside the next epoch without calling the end (or the next
        # start). Take the update it missed now: the weights are those the uninterrupted run updated with.
        if self.epochs_ended is not None and self.epochs_ended < trainer.current_epoch:
            self.end_epoch(trainer, pl_module, trainer.current_epoch - 1)

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> SearchSession:
        """The session, bound to this run: its evaluator, output folder, progress setting and (restored) search."""
        session = self.session
        if session.evaluator is None:
            session.evaluator = find_evaluation(trainer.callbacks)
            if session.evaluator is None:
                raise ValueError("ScheduleSearch needs a GenerativeEvaluation callback (or evaluation=...) for FID")
        # every rank: log_dir broadcasts; only rank 0 writes
        session.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / self.output_dir
        session.show_progress = trainer_shows_progress(trainer)
        if session.search is None:
            if self._pending_state is not None:  # a resumed fit continues from the checkpointed state
                session.restore(self._pending_state)
                self._pending_state = None
            else:
                session.start(pl_module.schedule)
        return session

    # ------------------------------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end_epoch(trainer, pl_module, trainer.current_epoch)

    def end_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        """The end of ``epoch``: every ``every_n_epochs``-th, one update (until ``max_updates``)."""
        self.epochs_ended = epoch + 1
        if not self.enabled or (epoch + 1) % self.every_n_epochs:
            return
        session = self.prepare(trainer, pl_module)
        search = session.search
        if self.max_updates is not None and search.updates >= self.max_updates:
            return
        record, _ = session.step(trainer, pl_module)
        search.history[-1].update(epoch=epoch, global_step=trainer.global_step)
        self.last = record
        if record.skipped:
            rank_zero_warn(f"ScheduleSearch: update skipped, schedule unchanged ({record.reason})")
        else:
            pl_module.set_schedule(search.schedule)
        self._log(pl_module, record)
        session.write(trainer, new_point=not record.skipped)
        rank_zero_info(
            f"ScheduleSearch: update {search.updates} FID {record.fid:.4f} |grad| {record.grad_norm:.4g} "
            f"({record.evaluations} evaluations x {session.images_per_evaluation()} images, {record.seconds:.1f} s)"
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

    # ------------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = dict(self._pending_state or {}) if self.search is None else self.search.state_dict()
        return state if self.epochs_ended is None else {**state, EPOCHS_ENDED: self.epochs_ended}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # T comes from the module's schedule, known only once the fit starts: keep the state until then
        state = dict(state_dict or {})
        self.epochs_ended = state.pop(EPOCHS_ENDED, None)  # None (an older checkpoint): nothing is taken again
        self.session.search, self._pending_state = None, state or None
