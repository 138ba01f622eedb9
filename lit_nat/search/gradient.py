"""Forward-difference gradients of an objective F(schedule) (e.g. FID) and projected SGD with momentum on xi.

One update (:meth:`StrategySearch.step`) costs 1 + (4T - 2) evaluations of F at most (the base point, then one
perturbed coordinate at a time, as the official search), fewer when a coordinate is pinned by its neighbours. With
common random numbers (fixed labels and per-batch seeds, as :class:`GenerativeEvaluation` does) F is deterministic,
so a difference measures the effect of the coordinate and not sampling noise.

The optimiser is ``torch.optim.SGD(momentum=m, dampening=0, nesterov=False)`` in float64 numpy (no weight decay):
``buf = m * buf + g`` (``buf = g`` at the first update), ``xi = project(xi - lr * buf)`` with a learning rate per
coordinate. An update with any non-finite evaluation is skipped: xi and the momentum buffer stay as they were.

Backtracking (``backtrack = n > 0``, not in the official search): the step's new point is evaluated, and while its F is
above the base point's the step is halved (up to n times); if no halving helps, xi stays and the update is
recorded as ``no descent``. With a deterministic F the accepted point's value is the next update's base, so a search
that never backtracks costs no more evaluations. It is for few steps T, where each coordinate is a large share of
the schedule and the official fixed step overshoots (seen at T = 4 on the digits: every first update made FID worse).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.search.strategy import SearchSpace

Objective = Callable[[GenerationSchedule], float]


@dataclass
class GradientEstimate:
    """Result of :func:`estimate_gradient`; ``grad`` is None when an evaluation was not finite."""

    base: float
    grad: np.ndarray | None
    steps: np.ndarray  # the perturbation actually applied per coordinate (0: pinned, not evaluated)
    values: np.ndarray  # F at each perturbed point (NaN where not evaluated)
    evaluations: int
    failed: str | None = None  # which evaluation was not finite


def estimate_gradient(
    objective: Objective, space: SearchSpace, xi: np.ndarray, base: float | None = None
) -> GradientEstimate:
    """Forward differences, one coordinate at a time, each perturbation kept inside the feasible set.

    Coordinate i moves by ``+fd_step`` clamped to :meth:`SearchSpace.coordinate_bounds`; if there is no room upward
    (a ratio at 0.99 or tied with its predecessor) it moves downward instead; if there is no room either way it is
    pinned and gets 0 without an evaluation. The difference is divided by the step actually taken. The first
    non-finite evaluation stops the estimate (the rest would be wasted work on a skipped update).

    Args:
        objective: F(schedule) -> float, lower is better.
        space: the search space (layout, FD steps, bounds).
        xi: the feasible point to differentiate at.
        base: F(xi) if already known (deterministic F only), else it is evaluated.
    """
    xi = space.check(xi)
    evaluations = 0
    steps, values = np.zeros(space.size), np.full(space.size, np.nan)
    if base is None:
        base = float(objective(space.to_schedule(xi, name="search base")))
        evaluations += 1
    if not math.isfinite(base):
        return GradientEstimate(base, None, steps, values, evaluations, failed="base point")
    grad = np.zeros(space.size)
    for i in range(space.size):
        lower, upper = space.coordinate_bounds(xi, i)
        step = min(xi[i] + space.fd_steps[i], upper) - xi[i]
        if step <= 0:  # no room upward: a backward difference
            step = max(xi[i] - space.fd_steps[i], lower) - xi[i]
        if step == 0:
            continue  # pinned between its neighbours; its block still moves through them
        point = xi.copy()
        point[i] += step
        value = float(objective(space.to_schedule(point, name=f"search {space.names[i]}")))
        evaluations += 1
        steps[i], values[i] = step, value
        if not math.isfinite(value):
            return GradientEstimate(base, None, steps, values, evaluations, failed=space.names[i])
        grad[i] = (value - base) / step
    return GradientEstimate(base, grad, steps, values, evaluations)


@dataclass
class UpdateRecord:
    """One update of :class:`StrategySearch` (also what the callback logs and checkpoints)."""

    update: int  # updates applied before this one
    xi: list[float]  # xi after the update (unchanged when skipped)
    fid: float  # F at the point the gradient was taken (the xi before the update)
    grad_norm: float  # NaN when skipped
    evaluations: int
    seconds: float
    skipped: bool = False
    reason: str | None = None
    fid_after: float | None = None  # F at xi after the update, where measured (stayed at the base: the base's F)
    step_scale: float = 1.0  # the fraction of the momentum step taken (backtracking halves it)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StrategySearch:
    """Projected SGD with momentum on xi; plain state, so a checkpoint can carry it.

    Args:
        space: the search space.
        xi: the current point (projected on construction).
        momentum: SGD momentum (official: 0.5).
        buffer: momentum buffer (None until the first applied update, as torch's SGD).
    """

    space: SearchSpace
    xi: np.ndarray
    momentum: float = 0.5
    buffer: np.ndarray | None = None
    updates: int = 0
    best_xi: np.ndarray | None = None
    best_fid: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.xi = self.space.project(self.xi)

    @property
    def schedule(self) -> GenerationSchedule:
        return self.space.to_schedule(self.xi, name=f"searched update {self.updates}")

    def step(self, objective: Objective, base: float | None = None, backtrack: int = 0,
             measure: Objective | None = None) -> UpdateRecord:  # fmt: skip
        """Estimate the gradient at xi, take one projected momentum step, record it (skipped on a NaN); with
        ``backtrack`` > 0 the step is halved while the new point's F is above the base's (module docstring).

        ``measure`` evaluates the point moved to (e.g. an objective that also records other metrics; backtracking's
        tries use it, else ``objective``): with it, or with backtracking, the record's ``fid_after`` is F there."""
        start = time.perf_counter()
        estimate = estimate_gradient(objective, self.space, self.xi, base)
        self.arrive(self.xi, estimate.base)  # the best point seen may be the base point
        if estimate.grad is None:
            record = UpdateRecord(self.updates, self.xi.tolist(), estimate.base, math.nan, estimate.evaluations,
                                  time.perf_counter() - start, skipped=True,
                                  reason=f"non-finite objective at {estimate.failed}")  # fmt: skip
        else:
            grad = estimate.grad
            self.buffer = grad.copy() if self.buffer is None else self.momentum * self.buffer + grad
            self.updates += 1  # (before the move: a measured new point is named "searched update k+1")
            scale, after, tries = self.descend(measure or objective, estimate.base, backtrack, measure is not None)
            record = UpdateRecord(self.updates - 1, self.xi.tolist(), estimate.base, float(np.linalg.norm(grad)),
                                  estimate.evaluations + tries, time.perf_counter() - start, fid_after=after,
                                  step_scale=scale, reason=None if scale else "no descent")  # fmt: skip
        self.history.append(record.to_dict())
        return record

    def descend(self, measure: Objective, base: float, backtrack: int, evaluate: bool
                ) -> tuple[float, float | None, int]:  # fmt: skip
        """Move xi along the momentum step: the whole step without backtracking (``measure``-d when ``evaluate``);
        else the largest of the step, its half, ... (``backtrack`` halvings) whose F is not above ``base``, or nowhere.
        Returns (the fraction of the step taken, 0 for none; F at the point xi is then, None when not measured;
        evaluations made)."""
        direction = self.space.lrs * self.buffer
        if backtrack <= 0:
            self.xi = self.space.project(self.xi - direction)
            if not evaluate:
                return 1.0, None, 0
            value = float(measure(self.schedule))
            self.arrive(self.xi, value)
            return 1.0, value, 1
        for tries in range(1, backtrack + 2):
            scale = 0.5 ** (tries - 1)
            point = self.space.project(self.xi - scale * direction)
            value = float(measure(self.space.to_schedule(point, name=f"search step x{scale:g}")))
            if math.isfinite(value) and value <= base:  # a tie moves on (a plateau of FID is no reason to stop)
                self.xi = point
                self.arrive(point, value)
                return scale, value, tries
        self.buffer = None  # a direction that found no descent carries no momentum into the next update
        return 0.0, base, backtrack + 1  # xi stays at the base point

    def arrive(self, xi: np.ndarray, value: float) -> None:
        """Note F at a point the search stands on (the best point is one the search has stood on)."""
        if math.isfinite(value) and value < self.best_fid:
            self.best_fid, self.best_xi = value, xi.copy()

    # ------------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats): safe for ``torch.load(weights_only=True)`` and YAML/JSON."""
        return {
            "steps": self.space.steps,
            **self.space.kept,
            "xi": self.xi.tolist(),
            "momentum_buffer": None if self.buffer is None else self.buffer.tolist(),
            "updates": self.updates,
            "best_xi": None if self.best_xi is None else self.best_xi.tolist(),
            "best_fid": self.best_fid,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["steps"]) != self.space.steps:
            raise ValueError(
                f"schedule search state is for T = {state['steps']} steps but this search has T = {self.space.steps}"
            )
        self.xi = self.space.check(state["xi"]).copy()
        buffer = state.get("momentum_buffer")
        self.buffer = None if buffer is None else self.space.check(buffer).copy()
        self.updates = int(state.get("updates", 0))
        best = state.get("best_xi")
        self.best_xi = None if best is None else self.space.check(best).copy()
        self.best_fid = float(state.get("best_fid", math.inf))
        self.history = list(state.get("history", []))
