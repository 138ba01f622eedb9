"""AutoNAT's training-strategy search (Sec. 4.3): greedy coordinate line search over the Beta(alpha, beta) law of the
training mask ratio, as a pure, resumable algorithm over an objective ``score(alpha, beta) -> float`` (lower is
better; in practice "train a candidate for a budget, then FID with the current generation strategy").

Algorithm (the paper's "line search on one parameter with the other fixed, then the other, until no improvement"):

- The grid is multiplicative (alpha, beta > 0 and the law is scale-like in them): from the current point a coordinate
  moves by factors ``f`` or ``1/f`` (``f = factor``, default 2), clamped to ``[lower, upper]``.
- Line search of one coordinate: step up while each step improves the best score by more than ``tolerance``; if the
  very first step up does not improve, step down the same way. For an objective unimodal along the line this stops
  at a grid point next to the line's minimum.
- A *pass* searches alpha, then beta. Passes repeat until a whole pass improves nothing; then the step is refined to
  ``sqrt(f)`` (the grid's resolution halves on the log scale) and passes resume, ``refinements`` times. The final
  resolution is ``factor ** (1 / 2**refinements)`` (default 2 ** (1/2) ~ 1.41): a golden-section search would
  need fewer evaluations on a smooth objective, but it assumes a bracket and an exact unimodal objective, while a grid
  walk tolerates the noise of FID after a training budget and reuses every point it has seen.
- Every point is rounded to 10 significant digits, so the same grid point always has the same key, and every score
  is cached by ``(alpha, beta)``: a point is never evaluated twice.
- Resuming: the walk is a deterministic function of the scores, so the state is just the settings and the cache
  (:meth:`BetaLineSearch.state_dict`, JSON). A resumed run replays the walk from the cache and only evaluates
  points that were never scored; :meth:`run` writes the state file after every new evaluation.
- NaN/inf scores (a diverged training run) count as the worst possible score: the walk never moves onto such a
  point; they are kept in the cache (as ``null`` in JSON) and reported in :attr:`LineSearchResult.failed`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nat.core.io import atomic_write_json

Score = Callable[[float, float], float]
PARAMETERS = ("alpha", "beta")


def snap(value: float) -> float:
    """The grid value of ``value``: 10 significant digits, so repeated multiplications land on the same key."""
    return float(f"{value:.10g}")


def key(alpha: float, beta: float) -> str:
    return f"{snap(alpha):.10g},{snap(beta):.10g}"


@dataclass
class LineSearchResult:
    """Outcome of :meth:`BetaLineSearch.run`."""

    alpha: float
    beta: float
    score: float
    converged: bool  # False: stopped by max_evaluations
    # alpha, beta, score: the best point ever scored (with tolerance > 0 possibly one the walk did not move onto)
    evaluations: int  # new evaluations in this run (cache hits excluded)
    total_evaluations: int  # distinct points ever scored
    failed: list[tuple[float, float]] = field(default_factory=list)  # points whose score was NaN/inf
    path: list[tuple[float, float, float]] = field(default_factory=list)  # accepted points (alpha, beta, score)


class _Budget(Exception):
    pass


class BetaLineSearch:
    """Greedy coordinate line search over (alpha, beta) > 0; see the module docstring.

    Args:
        alpha: initial alpha (Beta(1, 1) is the uniform law).
        beta: initial beta.
        factor: multiplicative grid step (> 1).
        refinements: how many times the step is square-rooted once a pass improves nothing.
        tolerance: an improvement counts only if it lowers the best score by more than this (absolute).
        lower: smallest value of either parameter.
        upper: largest value of either parameter.
        max_evaluations: stop (``converged=False``) once this many distinct points are scored (None: no limit).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        factor: float = 2.0,
        refinements: int = 1,
        tolerance: float = 0.0,
        lower: float = 1e-2,
        upper: float = 1e3,
        max_evaluations: int | None = None,
    ) -> None:
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"BetaLineSearch: alpha and beta must be > 0, got {alpha}, {beta}")
        if not factor > 1:
            raise ValueError(f"BetaLineSearch: factor must be > 1, got {factor}")
        if refinements < 0 or tolerance < 0:
            raise ValueError("BetaLineSearch: refinements and tolerance must be >= 0")
        if not 0 < lower <= min(alpha, beta) <= max(alpha, beta) <= upper:
            raise ValueError(f"BetaLineSearch: need 0 < lower <= alpha, beta <= upper, got {lower}, {upper}")
        self.alpha, self.beta = snap(alpha), snap(beta)
        self.factor, self.refinements, self.tolerance = float(factor), int(refinements), float(tolerance)
        self.lower, self.upper = float(lower), float(upper)
        self.max_evaluations = max_evaluations
        self.cache: dict[str, float] = {}  # key(alpha, beta) -> score (NaN kept as NaN)
        self.order: list[str] = []  # keys in evaluation order (for the JSON record)
        self.calls = 0  # new evaluations in this object's lifetime

    # ------------------------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "factor": self.factor, "refinements": self.refinements,
                "tolerance": self.tolerance, "lower": self.lower, "upper": self.upper,
                "max_evaluations": self.max_evaluations}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Settings and every evaluation, JSON-safe (a non-finite score is ``null``)."""
        evaluations = []
        for k in self.order:
            a, b = (float(v) for v in k.split(","))
            s = self.cache[k]
            evaluations.append({"alpha": a, "beta": b, "score": s if math.isfinite(s) else None})
        best = self.best()
        return {"settings": self.settings(), "evaluations": evaluations,
                "best": None if best is None else {"alpha": best[0], "beta": best[1], "score": best[2]}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the cache of a saved state (the settings of this object are kept: the cache is valid for any)."""
        for entry in state.get("evaluations", []):
            score = entry["score"]
            self._record(entry["alpha"], entry["beta"], math.nan if score is None else float(score))

    @classmethod
    def from_state(cls, state: dict[str, Any], **overrides: Any) -> BetaLineSearch:
        search = cls(**{**state["settings"], **overrides})
        search.load_state_dict(state)
        return search

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.state_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> BetaLineSearch:
        return cls.from_state(json.loads(Path(path).read_text()), **overrides)

    # ------------------------------------------------------------------------------------------------------------------
    def _record(self, alpha: float, beta: float, score: float) -> None:
        k = key(alpha, beta)
        if k not in self.cache:
            self.order.append(k)
        self.cache[k] = score

    def best(self) -> tuple[float, float, float] | None:
        finite = [(s, k) for k, s in self.cache.items() if math.isfinite(s)]
        if not finite:
            return None
        s, k = min(finite, key=lambda item: (item[0], self.order.index(item[1])))
        a, b = (float(v) for v in k.split(","))
        return a, b, s

    def failed(self) -> list[tuple[float, float]]:
        return [tuple(float(v) for v in k.split(",")) for k in self.order if not math.isfinite(self.cache[k])]

    def _evaluate(self, score: Score, alpha: float, beta: float, save_to: Path | None) -> float:
        """The cached score, or a new evaluation (saved at once); non-finite scores come back as +inf."""
        k = key(alpha, beta)
        if k not in self.cache:
            if self.max_evaluations is not None and len(self.cache) >= self.max_evaluations:
                raise _Budget
            value = float(score(snap(alpha), snap(beta)))
            self.calls += 1
            self._record(alpha, beta, value if math.isfinite(value) else math.nan)
            if save_to is not None:
                self.save(save_to)
        value = self.cache[k]
        return value if math.isfinite(value) else math.inf

    def _move(self, point: tuple[float, float], axis: int, factor: float) -> tuple[float, float] | None:
        moved = list(point)
        moved[axis] = snap(min(max(point[axis] * factor, self.lower), self.upper))
        return None if moved[axis] == point[axis] else (moved[0], moved[1])

    def run(self, score: Score, state_path: str | Path | None = None) -> LineSearchResult:
        """Search from the initial point (replaying cached points for free); writes ``state_path`` after every new
        evaluation. Returns the best point found."""
        save_to = Path(state_path) if state_path is not None else None
        start_calls = self.calls
        point = (self.alpha, self.beta)
        path: list[tuple[float, float, float]] = []
        converged = False
        try:
            current = self._evaluate(score, *point, save_to)
            path.append((*point, current))
            factor = self.factor
            for level in range(self.refinements + 1):
                if level:
                    factor = math.sqrt(factor)
                while True:  # passes at this resolution
                    improved = False
                    for axis in (0, 1):
                        for direction in (factor, 1 / factor):
                            moved_any = False
                            while (candidate := self._move(point, axis, direction)) is not None:
                                value = self._evaluate(score, *candidate, save_to)
                                if not value < current - self.tolerance:
                                    break
                                point, current, moved_any = candidate, value, True
                                path.append((*point, current))
                            if moved_any:  # improved upward: no need to look downward
                                improved = True
                                break
                    if not improved:
                        break
            converged = True
        except _Budget:
            pass
        best = self.best()
        alpha, beta, best_score = best if best is not None else (point[0], point[1], math.nan)
        return LineSearchResult(alpha, beta, best_score, converged, self.calls - start_calls, len(self.cache),
                                self.failed(), path)  # fmt: skip
