"""``python -m lit_nat autonat``: AutoNAT's alternating optimisation (Sec. 4.1, Algorithm 1) as a resumable driver.

One *round* of Algorithm 1:

1. **generation** (OptimizeGenerationStrategy(p(r))): the generation-strategy search (the ``search`` subcommand,
   :func:`~lit_nat.commands.search.run_search`) on the current best checkpoint, starting from the current schedule;
   its ``best.yaml`` becomes the round's schedule.
2. **training** (OptimizeTrainingStrategy(schedule)): :class:`~lit_nat.search.line_search.BetaLineSearch` over
   (alpha, beta), starting from the current point. Scoring a candidate = one fit with
   ``--model.mask_ratio_law beta --model.mask_ratio_params {alpha: a, beta: b} --model.schedule <round schedule>``
   for the budget given by the extra fit arguments, scored by the FID of its last validation (``eval_report.json``
   of its :class:`~lit_nat.callbacks.GenerativeEvaluation`).
3. **evaluate**: F_new = the FID of the best candidate (TrainModel(p(r)) and Evaluate(...) of Algorithm 1: the best
   candidate *is* a model trained with p(r) for the budget, evaluated with the round's schedule); its checkpoint is
   the next round's. Stop when ``|F_new - F_prev| <= epsilon`` (F_prev = inf before the first round) or after
   ``max_rounds`` rounds.

State: everything is in ``OUT/autonat_state.json`` (rewritten atomically after every step and every candidate), so
running the same command again resumes without recomputing anything saved: a finished generation search is not run
again (an interrupted one resumes from its own ``state.json``), scored candidates are cache hits of the line search
(the walk is replayed from them), and a candidate fit that finished but was not yet recorded is detected by its
``DONE`` marker and report file; a half-finished one (no marker) is resumed from its last checkpoint, and a SLURM
candidate job still running is waited for (:mod:`lit_nat.search.launchers`). One driver per ``OUT`` at a time.

Layout under ``OUT``: ``rounds/r{k}/search/`` (the generation search of round k) and
``candidates/r{k}/a{alpha}_b{beta}/`` (one fit per candidate; per round, as the schedule differs between rounds).

Both steps are injectable (``generation=``, ``train=``), so the loop can be driven by synthetic functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_nat.core.io import atomic_write_json, json_safe
from lit_nat.search.launchers import (
    Train,
    fmt,
)
from lit_nat.search.line_search import BetaLineSearch, key, snap

STATE_FILE = "autonat_state.json"


#: generation(round, checkpoint, start_schedule, out_dir) -> path of the searched schedule
Generation = Callable[[int, "str | None", "str | None", Path], str]


def candidate_dir(out: Path, round_index: int, alpha: float, beta: float) -> Path:
    return Path(out) / "candidates" / f"r{round_index}" / f"a{fmt(alpha)}_b{fmt(beta)}"


# ----------------------------------------------------------------------------------------------------------------------
class AutoNAT:
    """Algorithm 1 as a resumable state machine over ``out/autonat_state.json`` (see the module docstring).

    Args:
        out: output folder.
        generation: the generation step (see :data:`Generation`).
        train: trains and scores a candidate (see :data:`Train`).
        checkpoint: the starting model (trained with Beta(alpha, beta)); None: round 0 first trains one
            (``candidates/init/``) with the config's schedule.
        schedule: the starting generation schedule (None: the checkpoint's).
        alpha, beta: the starting Beta law of the training mask ratio.
        epsilon: stop once ``|F_new - F_prev| <= epsilon``.
        max_rounds: stop after this many rounds.
        line_search: keyword arguments of :class:`BetaLineSearch` (factor, refinements, tolerance, lower, upper,
            max_evaluations); alpha and beta are the round's starting point.
    """

    def __init__(
        self,
        out: str | Path,
        generation: Generation,
        train: Train,
        checkpoint: str | None = None,
        schedule: str | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        epsilon: float = 0.1,
        max_rounds: int = 3,
        line_search: dict[str, Any] | None = None,
    ) -> None:
        if epsilon < 0 or max_rounds < 1:
            raise ValueError(f"autonat: need epsilon >= 0 and max_rounds >= 1, got {epsilon}, {max_rounds}")
        self.out, self.generation, self.train = Path(out), generation, train
        self.line_search = dict(line_search or {})
        BetaLineSearch(alpha=alpha, beta=beta, **self.line_search)  # bad settings fail before any work
        self.path = self.out / STATE_FILE
        start = {"checkpoint": checkpoint, "schedule": schedule, "alpha": snap(alpha), "beta": snap(beta)}
        settings = {"epsilon": float(epsilon), "max_rounds": int(max_rounds), "line_search": self.line_search}
        if self.path.exists():
            self.state = json.loads(self.path.read_text())
            if self.state["start"] != start:
                raise ValueError(
                    f"autonat: {self.path} was started from {self.state['start']}, not {start}; "
                    "pass another --out for a new run"
                )
            if self.state["settings"]["line_search"] != self.line_search:
                raise ValueError(f"autonat: {self.path} used other line-search settings; pass another --out")
            self.state["settings"].update(epsilon=float(epsilon), max_rounds=int(max_rounds))  # may be changed
        else:
            self.state = {"start": start, "settings": settings, "current": {**start, "fid": None},
                          "f_prev": None, "rounds": [], "status": "running"}  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------------
    def save(self) -> None:
        atomic_write_json(self.path, self.state, indent=1)  # a crash never leaves a half-written state

    def _initial_checkpoint(self) -> None:
        """No starting checkpoint: train one with the starting law and the config's schedule."""
        current = self.state["current"]
        if current["checkpoint"] is not None:
            return
        result = self.train(current["alpha"], current["beta"], current["schedule"], self.out / "candidates" / "init")
        if result.checkpoint is None:
            raise RuntimeError("autonat: the initial fit saved no checkpoint (enable checkpointing in the config)")
        current.update(checkpoint=result.checkpoint, fid=json_safe(result.fid))
        self.save()

    def _training(self, index: int, record: dict[str, Any]) -> None:
        """OptimizeTrainingStrategy: the line search from the current point, every candidate saved in ``record``."""
        candidates: list[dict[str, Any]] = record.setdefault("candidates", [])
        start = record["start"]
        search = BetaLineSearch(alpha=start["alpha"], beta=start["beta"], **self.line_search)
        search.load_state_dict({"evaluations": [{k: c[k] for k in ("alpha", "beta", "score")} for c in candidates]})
        schedule = record["schedule"]

        def score(alpha: float, beta: float) -> float:
            run_dir = candidate_dir(self.out, index, alpha, beta)
            report(f"round {index}: training candidate {len(candidates) + 1}, Beta({alpha:.4g}, {beta:.4g}) -> "
                   f"{run_dir}")
            result = self.train(alpha, beta, schedule, run_dir)
            fid = float(result.fid)
            report(f"round {index}: candidate Beta({alpha:.4g}, {beta:.4g}): FID {fid:.4f}")
            candidates.append({"alpha": snap(alpha), "beta": snap(beta), "score": fid if math.isfinite(fid) else None,
                               "checkpoint": result.checkpoint, "run_dir": str(run_dir)})  # fmt: skip
            self.save()
            return fid

        result = search.run(score)
        best = next((c for c in candidates if key(c["alpha"], c["beta"]) == key(result.alpha, result.beta)), None)
        if best is None or not math.isfinite(result.score):
            raise RuntimeError(f"autonat: round {index}: no candidate reached a finite FID")
        record["line_search"] = {
            "converged": result.converged,
            "path": [list(p) for p in result.path],
            "failed": [list(p) for p in result.failed],
            "evaluations": result.total_evaluations,
        }
        record["result"] = {"alpha": best["alpha"], "beta": best["beta"], "fid": best["score"],
                            "checkpoint": best["checkpoint"], "schedule": schedule}  # fmt: skip

    def step(self) -> bool:
        """Advance by one phase (generation, training or evaluation); returns False once the run has stopped."""
        state = self.state
        if state["status"] != "running":
            return False
        self._initial_checkpoint()
        rounds, current = state["rounds"], state["current"]
        if not rounds or rounds[-1]["phase"] == "done":
            index = len(rounds)
            rounds.append({"round": index, "phase": "generation", "start": dict(current)})
            self.save()
        record = rounds[-1]
        index = record["round"]
        if record["phase"] == "generation":
            start = record["start"]
            out = self.out / "rounds" / f"r{index}" / "search"
            report(f"round {index}: searching the generation strategy of {start['checkpoint']} -> {out}")
            record["schedule"] = str(self.generation(index, start["checkpoint"], start["schedule"], out))
            record["phase"] = "training"
        elif record["phase"] == "training":
            self._training(index, record)
            record["phase"] = "evaluate"
        elif record["phase"] == "evaluate":
            f_new = float(record["result"]["fid"])
            f_prev = math.inf if state["f_prev"] is None else float(state["f_prev"])
            delta = abs(f_new - f_prev)
            record.update(f_new=f_new, f_prev=state["f_prev"], delta=json_safe(delta), phase="done")  # inf: null
            state["current"] = {k: record["result"][k] for k in ("alpha", "beta", "checkpoint", "schedule", "fid")}
            state["f_prev"] = f_new
            if delta <= state["settings"]["epsilon"]:
                state["status"] = "converged"
            elif len(rounds) >= state["settings"]["max_rounds"]:
                state["status"] = "max_rounds"
            report(f"round {index}: F {f_prev:.4f} -> {f_new:.4f} (|dF| {delta:.4f}), "
                   f"Beta({record['result']['alpha']:.4g}, {record['result']['beta']:.4g}), {state['status']}")
        self.save()
        return state["status"] == "running"

    def run(self) -> dict[str, Any]:
        """Run (or resume) until convergence or ``max_rounds``; returns the state (as saved)."""
        if self.state["status"] == "max_rounds" and len(self.state["rounds"]) < self.state["settings"]["max_rounds"]:
            self.state["status"] = "running"  # a larger --max_rounds continues a run stopped by the round limit
        while self.step():
            pass
        self.save()
        return json_safe(self.state)


def report(line: str) -> None:
    """Where Algorithm 1 stands (round, phase, candidate), between the child commands' own progress bars."""
    print(f"autonat: {line}", flush=True)
