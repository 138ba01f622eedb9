"""Training-strategy search: greedy coordinate line search over Beta(alpha, beta), cache, JSON resume, NaN scores."""

from __future__ import annotations

import json
import math

import pytest

from lit_nat.search import BetaLineSearch


class Counted:
    """score(alpha, beta) that counts its calls and records the points asked for."""

    def __init__(self, fn):
        self.fn, self.calls, self.points = fn, 0, []

    def __call__(self, alpha: float, beta: float) -> float:
        self.calls += 1
        self.points.append((alpha, beta))
        return self.fn(alpha, beta)


def test_one_dimensional_convex_in_log_alpha():
    f = Counted(lambda a, b: (math.log(a) - math.log(3.0)) ** 2)  # beta has no effect
    search = BetaLineSearch(alpha=1.0, beta=1.0, factor=2.0, refinements=2)
    result = search.run(f)
    resolution = math.log(2.0) / 4  # 2 ** (1/4): the final grid step
    assert result.converged and abs(math.log(result.alpha) - math.log(3.0)) <= resolution / 2 + 1e-9
    assert result.beta == 1.0  # no improvement along beta: never moved
    assert f.calls == result.evaluations == result.total_evaluations == len(set(f.points))  # never recomputed
    assert result.failed == []


def test_separable_two_dimensional_objective_finds_beta_12_3():
    f = Counted(lambda a, b: (math.log(a / 12.0)) ** 2 + 2 * (math.log(b / 3.0)) ** 2)
    result = BetaLineSearch(factor=2.0, refinements=1).run(f)
    resolution = math.log(2.0) / 2
    assert result.converged
    assert abs(math.log(result.alpha / 12.0)) <= resolution / 2 + 1e-9
    assert abs(math.log(result.beta / 3.0)) <= resolution / 2 + 1e-9
    assert len(f.points) == len(set(f.points))
    scores = [s for _, _, s in result.path]
    assert scores == sorted(scores, reverse=True) and result.score == scores[-1]  # every accepted move improves


def test_bounds_and_tolerance():
    f = Counted(lambda a, b: -a)  # better and better upward: stops at the bound
    result = BetaLineSearch(upper=10.0, refinements=0).run(f)
    assert result.alpha == 10.0 and result.converged
    g = Counted(lambda a, b: 1.0 - 1e-4 * a)  # improvements below the tolerance are not moves
    result = BetaLineSearch(tolerance=1e-3, refinements=0).run(g)
    assert result.path == [(1.0, 1.0, g.fn(1.0, 1.0))] and g.calls == 5  # the start and its four neighbours
    assert (result.alpha, result.beta) == (2.0, 1.0)  # the result is the best point scored, moved onto or not


def test_resume_from_json_never_reevaluates_cached_points(tmp_path):
    def objective(a, b):
        return math.log(a / 6.0) ** 2 + math.log(b / 0.5) ** 2

    fresh = Counted(objective)
    reference = BetaLineSearch(refinements=1).run(fresh)

    class Crash(Exception):
        pass

    def crashing(a, b):
        if crashing.calls == 5:
            raise Crash
        crashing.calls += 1
        return objective(a, b)

    crashing.calls = 0
    state = tmp_path / "state.json"
    with pytest.raises(Crash):
        BetaLineSearch(refinements=1).run(crashing, state_path=state)
    saved = json.loads(state.read_text())
    assert len(saved["evaluations"]) == 5 and saved["settings"]["refinements"] == 1

    resumed_f = Counted(objective)
    resumed = BetaLineSearch.load(state)
    result = resumed.run(resumed_f, state_path=state)
    assert resumed_f.calls == fresh.calls - 5 == result.evaluations  # only the points never scored
    assert not set(resumed_f.points) & {(e["alpha"], e["beta"]) for e in saved["evaluations"]}
    assert (result.alpha, result.beta, result.score) == (reference.alpha, reference.beta, reference.score)
    assert result.total_evaluations == fresh.calls
    again = Counted(objective)
    assert BetaLineSearch.load(state).run(again).alpha == reference.alpha and again.calls == 0  # all cached

    # a budget stops early (not converged) and a later run with a larger budget continues
    partial = BetaLineSearch(refinements=1, max_evaluations=3)
    assert not partial.run(Counted(objective), state_path=tmp_path / "b.json").converged
    more = Counted(objective)
    result = BetaLineSearch.load(tmp_path / "b.json", max_evaluations=None).run(more)
    assert result.converged and more.calls == fresh.calls - 3


def test_nan_scores_are_worst_and_reported(tmp_path):
    def objective(a, b):
        if a > 5.0:  # e.g. a training run that diverged
            return float("nan")
        return math.log(a / 20.0) ** 2 + math.log(b / 2.0) ** 2  # the true optimum lies in the NaN region

    f = Counted(objective)
    search = BetaLineSearch(refinements=0)
    result = search.run(f, state_path=tmp_path / "s.json")
    assert result.converged and result.alpha == 4.0 and result.beta == 2.0 and math.isfinite(result.score)
    assert result.failed == [(8.0, 1.0)] or all(a > 5 for a, _ in result.failed)
    assert result.failed and len(f.points) == len(set(f.points))
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and json.loads(text)["best"]["alpha"] == 4.0  # strict JSON: null for a NaN score
    reloaded = BetaLineSearch.load(tmp_path / "s.json")
    assert reloaded.failed() == result.failed
    g = Counted(objective)
    assert reloaded.run(g).alpha == 4.0 and g.calls == 0  # NaN points are cached too, never retried

    nan_start = Counted(lambda a, b: float("nan") if (a, b) == (1.0, 1.0) else a + b)
    result = BetaLineSearch(refinements=0, lower=0.25).run(nan_start)
    assert result.failed == [(1.0, 1.0)] and result.alpha == 0.25 and result.beta == 0.25


def test_invalid_settings():
    with pytest.raises(ValueError, match="> 0"):
        BetaLineSearch(alpha=0.0)
    with pytest.raises(ValueError, match="factor"):
        BetaLineSearch(factor=1.0)
