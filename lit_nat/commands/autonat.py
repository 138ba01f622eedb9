"""``python -m lit_nat autonat``: AutoNAT's Algorithm 1 (:class:`lit_nat.search.AutoNAT`) from the command line."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

from lit_nat.core.errors import UsageError
from lit_nat.core.io import DirectoryLock
from lit_nat.search.alternating import AutoNAT
from lit_nat.search.launchers import LocalLauncher, SearchStep, SlurmLauncher


def autonat(fit_config: str, out: str, ckpt_path: str | None = None, schedule: str | None = None,
            alpha: float = 1.0, beta: float = 1.0, epsilon: float = 0.1, max_rounds: int = 3, factor: float = 2.0,
            refinements: int = 1, tolerance: float = 0.0, max_evaluations: int | None = None, search_args: str = "",
            fit_args: str = "", launcher: Literal["local", "slurm"] = "local", sbatch: str = "sbatch",
            sbatch_args: str = "", sbatch_script: str | None = None, poll: float = 60.0,
            timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
    """AutoNAT's alternating optimisation (Algorithm 1): a generation-strategy search, then a line search over the
    Beta(alpha, beta) training law (one fit per candidate), until |F_new - F_prev| <= epsilon. Running the same
    command again resumes from OUT/autonat_state.json.

    Args:
        fit_config: the fit config of every candidate (with an evaluation: section: the FID it minimises).
        out: output folder (state, searches, candidate runs).
        ckpt_path: starting checkpoint (default: train one first).
        schedule: starting generation schedule (default: the checkpoint's).
        alpha: starting alpha of the Beta training law.
        beta: starting beta of the Beta training law.
        epsilon: stop when a round improves FID by at most this.
        max_rounds: stop after this many rounds (a larger value continues a stopped run).
        factor: line search: multiplicative grid step.
        refinements: line search: step refinements.
        tolerance: line search: minimal FID improvement.
        max_evaluations: line search: candidates per round.
        search_args: options of every search (one string), e.g. '--updates 10 --num_samples 5000'.
        fit_args: options of every candidate fit (one string): the budget, e.g. '--trainer.max_steps 2000'.
        launcher: where candidate fits run: here, one after another (local), or as SLURM jobs (slurm).
        sbatch: slurm: the submit command.
        sbatch_args: slurm: sbatch options (one string), e.g. '--gres=gpu:8'.
        sbatch_script: slurm: the candidate script (default: the repository's scripts/slurm/autonat_candidate.sbatch).
        poll: slurm: seconds between checks of a candidate job.
        timeout: slurm: cancel a candidate job after this many seconds and stop (rerunning resumes it); default: no
            limit (a job that ends unfinished is still reported).
    """
    for flag, path in (("--fit_config", fit_config), ("--ckpt_path", ckpt_path)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"autonat: {flag} {path}: no such file")  # before any candidate is launched
    fits = shlex.split(fit_args)
    if launcher == "local":
        train: Any = LocalLauncher(fit_config, fits)
    else:
        train = SlurmLauncher(fit_config, fits, sbatch=sbatch, sbatch_args=shlex.split(sbatch_args),
                              script=sbatch_script, poll=poll, timeout=timeout)  # fmt: skip
    line_search = {"factor": factor, "refinements": refinements, "tolerance": tolerance,
                   "max_evaluations": max_evaluations}  # fmt: skip
    checkpoint = None if ckpt_path is None else os.path.abspath(ckpt_path)
    driver = AutoNAT(out, SearchStep(fit_config, shlex.split(search_args)), train, checkpoint=checkpoint,
                     schedule=schedule, alpha=alpha, beta=beta, epsilon=epsilon, max_rounds=max_rounds,
                     line_search=line_search)  # fmt: skip
    with DirectoryLock(out, "lit_nat autonat"):  # one live driver per output folder
        return driver.run()
