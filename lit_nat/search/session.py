"""One generation-strategy search session, shared by the ``fit`` callback and the ``search`` command.

:class:`SearchSettings` holds the search's hyper-parameters (listed once: the callback, the command and ``autonat``
take them from here). :class:`SearchSession` owns one :class:`~lit_nat.search.gradient.StrategySearch` and everything
around it that both callers need: the FID objective through a
:class:`~lit_nat.callbacks.evaluation.GenerativeEvaluation` (with the search's own number of images per evaluation),
an optional FID cache keyed by xi (the command's: its model is fixed, so a point is never evaluated twice; inside
``fit`` the model changes between updates, so nothing is cached), a progress bar of FID evaluations per update, and
the files: ``search_{k}.yaml`` (ours), ``stp_{k}.yaml`` (official format; only for the ``confidence`` policy, the
one that format can express), ``best.yaml`` and ``state.json``.

``state.json`` has one schema for both callers: ``search`` (xi, momentum buffer, updates, best, history), ``names``
(the coordinates of xi), ``cache`` (xi key -> FID, non-finite as null) and ``fingerprint`` (what the cached FIDs
depend on; empty inside ``fit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from lit_nat.core.io import atomic_write_json
from lit_nat.core.progress import progress
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.search.gradient import StrategySearch, UpdateRecord
from lit_nat.search.strategy import KEPT_FIELDS, SearchSpace, default_groups

STATE_FILE = "state.json"


def xi_key(xi: np.ndarray) -> str:
    """The cache key of a point: its coordinates to 12 significant digits."""
    return ",".join(f"{float(v):.12g}" for v in xi)


@dataclass(frozen=True)
class SearchSettings:
    """Hyper-parameters of the finite-difference schedule search (defaults: the official code's).

    Args:
        momentum: SGD momentum (official 0.5).
        ratio_step: forward-difference step of the mask ratios (official 0.01).
        ratio_lr: learning rate of the mask ratios (official 1e-3).
        other_step: forward-difference step of temperatures and guidance (official 0.1).
        other_lr: learning rate of temperatures and guidance (official 0.1).
        num_samples: images per FID evaluation (None: the evaluator's own ``num_samples``).
        backtrack: halve a step that does not lower the FID, up to this many times (0, the official search: never;
            the new point is then evaluated once per try). For few steps T, where the fixed step overshoots.
    """

    momentum: float = 0.5
    ratio_step: float = 0.01
    ratio_lr: float = 1e-3
    other_step: float = 0.1
    other_lr: float = 0.1
    num_samples: int | None = None
    backtrack: int = 0

    def __post_init__(self) -> None:
        if self.backtrack < 0:
            raise ValueError(f"search: backtrack must be >= 0 (halvings of a step), got {self.backtrack}")
        if self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"search: num_samples must be >= 2 (a covariance), got {self.num_samples}")
        for name in ("ratio_step", "ratio_lr", "other_step", "other_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"search: {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"search: momentum must be in [0, 1), got {self.momentum}")

    def space(self, steps: int, **kept: str) -> SearchSpace:
        groups = default_groups(self.ratio_step, self.ratio_lr, self.other_step, self.other_lr)
        return SearchSpace(steps, groups, **kept)

    def start(self, schedule: GenerationSchedule) -> StrategySearch:
        """A new search at ``schedule``'s point (its reveal policy and token draw kept)."""
        space = self.space(schedule.steps, **{key: getattr(schedule, key) for key in KEPT_FIELDS})
        return StrategySearch(space, space.to_vector(schedule), self.momentum)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchSession:
    """One search against one evaluator (see the module docstring).

    Args:
        settings: the search's hyper-parameters.
        out_dir: folder of the strategy files and ``state.json`` (may be set later, e.g. once a run's log dir is known).
        evaluator: the FID objective (may be set later).
        cache: keep every FID by xi (only valid while the sampled model does not change).
        show_progress: a bar of FID evaluations per update (rank 0 only).
    """

    def __init__(self, settings: SearchSettings, out_dir: str | Path | None = None, evaluator: Any = None,
                 cache: bool = False, show_progress: bool = False) -> None:  # fmt: skip
        self.settings, self.evaluator = settings, evaluator
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.cache: dict[str, float] | None = {} if cache else None
        self.show_progress = show_progress
        self.fingerprint: dict[str, Any] = {}
        self.search: StrategySearch | None = None
        self._bar = None

    # ------------------------------------------------------------------------------------------------------------------
    def start(self, schedule: GenerationSchedule) -> StrategySearch:
        self.search = self.settings.start(schedule)
        return self.search

    def restore(self, state: dict[str, Any]) -> StrategySearch:
        """Continue from a ``state.json`` payload (or a checkpoint's search state, which is its ``search`` part)."""
        search_state = dict(state.get("search", state))
        if search_state.get("best_fid") is None:  # JSON null: no finite FID yet
            search_state["best_fid"] = math.inf
        kept = {key: str(search_state[key]) for key in KEPT_FIELDS if key in search_state}  # older states: defaults
        space = self.settings.space(int(search_state["steps"]), **kept)
        self.search = StrategySearch(space, np.asarray(search_state["xi"], dtype=np.float64), self.settings.momentum)
        self.search.load_state_dict(search_state)
        if self.cache is not None:
            self.cache = {k: (math.nan if v is None else float(v)) for k, v in state.get("cache", {}).items()}
        return self.search

    def cached(self, xi: np.ndarray) -> float | None:
        return None if self.cache is None else self.cache.get(xi_key(xi))

    # ------------------------------------------------------------------------------------------------------------------
    def objective(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float] | None = None
                  ) -> Callable[[GenerationSchedule], float]:  # fmt: skip
        """F(schedule) = the evaluator's FID with the session's images per evaluation (every rank must call it).

        The FID alone is measured (no IS, no CLIP score: most evaluations are finite-difference probes), unless a
        ``metrics`` dict is given, which then receives the evaluator's other metrics of the evaluations it makes.
        """
        evaluator, space = self.evaluator, self.search.space

        def fid(schedule: GenerationSchedule) -> float:
            if metrics is not None:
                metrics.clear()  # only the point just asked for (a backtracking try replaces the previous one's)
            key = xi_key(space.to_vector(schedule))
            value = None if self.cache is None else self.cache.get(key)
            if value is None:
                saved = evaluator.num_samples
                evaluator.num_samples = self.settings.num_samples or saved  # only the plan reads it
                try:
                    result = evaluator.evaluate(trainer, pl_module, schedule=schedule, fid_only=metrics is None)
                    value = float(result["fid"])
                finally:
                    evaluator.num_samples = saved
                if metrics is not None:
                    metrics.update({k: result[k] for k in ("inception_score", "clip_score") if result[k] is not None})
                if self.cache is not None:
                    self.cache[key] = value
                    self.write_state(trainer)  # a kill loses at most the evaluation in progress
            if self._bar is not None:
                if self._bar.total is not None and self._bar.n >= self._bar.total:
                    self._bar.total += 1  # a backtracking halving: one evaluation more than planned
                self._bar.update(1)
            return value

        return fid

    def images_per_evaluation(self) -> int:
        return self.settings.num_samples or self.evaluator.num_samples

    def step(self, trainer: L.Trainer, pl_module: L.LightningModule, evaluate_new_point: bool = False
             ) -> tuple[UpdateRecord, float]:  # fmt: skip
        """One projected-SGD update (with a bar of its FID evaluations); with ``evaluate_new_point`` also the FID of
        the point it moves to (the official standalone search does, and it becomes the next update's base), with the
        evaluator's other metrics of that point (e.g. ``clip_score_after``) in the history. Returns the record and that
        FID (NaN when not evaluated or when the update was skipped)."""
        search, fid, backtrack = self.search, self.objective(trainer, pl_module), self.settings.backtrack
        extras: dict[str, float] = {}
        measure = self.objective(trainer, pl_module, extras) if evaluate_new_point else None
        # forward differences, the base point unless known, the new point if measured (backtracking: one per try)
        total = search.space.size + int(self.cached(search.xi) is None) + int(evaluate_new_point or backtrack > 0)
        self._bar = progress(total, f"update {search.updates + 1}", unit="FID", enabled=self.show_progress)
        try:
            with self._bar:
                record = search.step(fid, base=self.cached(search.xi), backtrack=backtrack, measure=measure)
        finally:
            self._bar = None
        if record.step_scale > 0:  # the metrics of the point moved to (none when it stayed at the base)
            search.history[-1].update({f"{name}_after": value for name, value in extras.items()})
        return record, math.nan if record.fid_after is None else record.fid_after

    # ------------------------------------------------------------------------------------------------------------------
    def write(self, trainer: L.Trainer, new_point: bool = True) -> None:
        """Rank 0: the current point's strategy files (when ``new_point``), ``best.yaml`` and ``state.json``."""
        if not trainer.is_global_zero:
            return
        search, folder = self.search, self.out_dir
        folder.mkdir(parents=True, exist_ok=True)
        if new_point:
            search.schedule.save(folder / f"search_{search.updates}.yaml")
            if search.schedule.reveal == "confidence":  # the official format has no reveal policy
                search.schedule.save(folder / f"stp_{search.updates}.yaml", official=True)
        best_xi, best_fid = search.best_xi, search.best_fid
        if best_xi is None:  # only the starting point is known
            known = self.cached(search.xi)
            best_xi, best_fid = search.xi, math.nan if known is None else known
        if math.isfinite(best_fid):
            search.space.to_schedule(best_xi, name=f"best (FID {best_fid:.4f})").save(folder / "best.yaml")
        self.write_state(trainer)

    def state(self) -> dict[str, Any]:
        search = self.search
        return {"search": search.state_dict(), "names": search.space.names, "settings": self.settings.to_dict(),
                "fingerprint": self.fingerprint, "cache": self.cache or {}}  # fmt: skip

    def write_state(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            atomic_write_json(self.out_dir / STATE_FILE, self.state(), indent=1)  # non-finite FIDs become null
