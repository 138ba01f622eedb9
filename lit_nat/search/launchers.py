"""How the Algorithm 1 driver runs its jobs: candidate fits (locally or as SLURM jobs) and the generation search.

Every job runs in its own directory and is *resumed*, never deleted: a candidate that did not finish (the driver or
the job was killed) is run again in the same directory from its last checkpoint, and a SLURM job that is still
queued or running when the driver comes back is waited for, not resubmitted. A job that ends without its ``DONE``
marker (time limit, ``scancel``, node failure, out of memory, failed fit) is a :class:`~lit_nat.core.errors.JobError`
naming its state and log; a job that outlives ``timeout`` is cancelled.

Local children get the driver's SIGTERM/SIGINT forwarded (a fit then saves its current step), and the driver stops
with :class:`~lit_nat.core.errors.Stopped` once the child has exited; rerunning the command resumes.

Why not submitit: it pickles a Python callable into its own job folder and script, while a candidate here is a plain
``lit_nat fit`` command line run by an editable sbatch script (``scripts/slurm/autonat_candidate.sbatch``) that
users tune for their cluster; the job-state checks it would bring are the ``squeue``/``sacct`` calls of
:mod:`lit_nat.core.slurm`.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lit_nat.core import slurm
from lit_nat.core.errors import JobError, Stopped
from lit_nat.core.io import atomic_write_json, atomic_write_text
from lit_nat.search.line_search import snap

REPORT_FILE = "eval_report.json"
DONE_FILE = "DONE"  # written by the launcher (local) or the sbatch script (slurm) once the fit exited with status 0
FAILED_FILE = "FAILED"  # written by the sbatch script when the fit failed (its content: the exit status)
SUBMITTED_FILE = "SUBMITTED"  # the SLURM job id of the candidate's latest submission (JSON)
SBATCH_SCRIPT = "autonat_candidate.sbatch"  # in scripts/slurm/ (found when a launcher is made, not at import)


@dataclass
class CandidateResult:
    """What a trained candidate gives the driver: its FID (NaN: diverged) and its checkpoint (None: none saved)."""

    fid: float
    checkpoint: str | None


def fmt(value: float) -> str:
    return f"{snap(value):.10g}"


# ----------------------------------------------------------------------------------------------------------------------
# Candidate fits: arguments, markers, report, checkpoint
def run_dir_overrides(config: str | Path, run_dir: Path) -> list[str]:
    """Send a fit's outputs into ``run_dir``: the Trainer's root and, when the config names a logger class with init
    args (the shipped configs' TensorBoardLogger), the logger's save_dir, where eval_report.json is written."""
    args = [f"--trainer.default_root_dir={run_dir}"]
    try:
        logger = ((yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {}).get("logger")
    except (OSError, yaml.YAMLError):
        logger = None
    if isinstance(logger, dict) and "class_path" in logger:
        args.append(f"--trainer.logger.init_args.save_dir={run_dir}")
    return args


def fit_overrides(alpha: float, beta: float, schedule: str | None) -> list[str]:
    """The fit arguments that make a candidate: its Beta law and the round's generation schedule."""
    args = ["--model.mask_ratio_law=beta", f"--model.mask_ratio_params={{alpha: {fmt(alpha)}, beta: {fmt(beta)}}}"]
    if schedule is not None:
        # a schedule file carries every value: preset parameters of the config must not be combined with it
        args += [f"--model.schedule={schedule}", "--model.schedule_params=null"]
    return args


def find_report(run_dir: Path) -> Path | None:
    found = sorted(Path(run_dir).rglob(REPORT_FILE), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def find_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint under ``run_dir``: ``last.ckpt`` at the end of a fit, or the ``hpc_ckpt_N.ckpt`` /
    ``last.ckpt`` a preempted one saved at its last step."""
    found = list(Path(run_dir).rglob("*.ckpt"))
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def finished(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE_FILE).exists() and find_report(run_dir) is not None


def resume_args(run_dir: Path) -> list[str]:
    """``--ckpt_path`` of an unfinished candidate's last checkpoint (a resumed fit is exact), or nothing."""
    checkpoint = find_checkpoint(run_dir)
    return [f"--ckpt_path={checkpoint}"] if checkpoint else []


def read_result(run_dir: Path) -> CandidateResult:
    """The result of a finished candidate: FID of its last validation (``eval_report.json``) and its checkpoint."""
    report = find_report(run_dir)
    if report is None:
        raise JobError(
            f"autonat: the fit in {run_dir} finished without {REPORT_FILE}: its config needs a GenerativeEvaluation "
            "callback and a validation at the end of the budget (e.g. --trainer.val_check_interval / "
            "check_val_every_n_epoch matching --trainer.max_steps / max_epochs)"
        )
    fid = json.loads(report.read_text()).get("fid")
    return CandidateResult(float("nan") if fid is None else float(fid), find_checkpoint(run_dir))


def run_child(command: Sequence[str]) -> int:
    """Run ``command`` to its end, forwarding SIGTERM/SIGINT to it; raise :class:`Stopped` if one arrived."""
    child = subprocess.Popen(list(command))
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Stopped(f"autonat: stopped by signal {received[0]} while running {shlex.join(command)} (it exited with "
                      f"{status}); rerun the same command to resume")  # fmt: skip
    return status


class LocalLauncher:
    """Trains candidates one after another as ``python -m lit_nat fit --config CONFIG <overrides> <fit_args>``.

    Args:
        config: the fit config (it must have a GenerativeEvaluation callback).
        fit_args: extra fit arguments (the budget, e.g. ``--trainer.max_steps=2000``), after the candidate's.
        command: the command prefix (default ``[sys.executable, "-m", "lit_nat"]``).
    """

    def __init__(self, config: str, fit_args: Sequence[str] = (), command: Sequence[str] | None = None) -> None:
        self.config, self.fit_args = str(config), list(fit_args)
        self.command = list(command) if command is not None else [sys.executable, "-m", "lit_nat"]

    def arguments(self, alpha: float, beta: float, schedule: str | None, run_dir: Path) -> list[str]:
        return [f"--config={self.config}", *run_dir_overrides(self.config, run_dir),
                *fit_overrides(alpha, beta, schedule), *self.fit_args]  # fmt: skip

    def __call__(self, alpha: float, beta: float, schedule: str | None, run_dir: Path) -> CandidateResult:
        run_dir = Path(run_dir)
        if finished(run_dir):
            return read_result(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # an unfinished run resumes from its last checkpoint
        command = [*self.command, "fit", *self.arguments(alpha, beta, schedule, run_dir), *resume_args(run_dir)]
        print(f"autonat: candidate alpha={fmt(alpha)} beta={fmt(beta)}: {shlex.join(command)}", flush=True)
        status = run_child(command)
        if status != 0:
            raise JobError(f"autonat: candidate fit failed (exit status {status}): {shlex.join(command)}")
        atomic_write_text(run_dir / DONE_FILE, "0\n")
        return read_result(run_dir)


class SlurmLauncher(LocalLauncher):
    """Submits each candidate with ``sbatch --parsable [sbatch_args] autonat_candidate.sbatch CONFIG RUN_DIR
    <overrides>`` and waits for it: every ``poll`` seconds it looks for the ``DONE``/``FAILED`` markers and asks
    SLURM for the job's state, so a job that ended without a marker (time limit, ``scancel``, node failure, out of
    memory) is reported with that state instead of being waited for forever. After ``timeout`` seconds (None: no
    limit) the job is cancelled. The SLURM commands are arguments so tests can substitute fake ones.
    """

    def __init__(
        self,
        config: str,
        fit_args: Sequence[str] = (),
        sbatch: Sequence[str] | str = "sbatch",
        sbatch_args: Sequence[str] = (),
        script: str | Path | None = None,
        poll: float = 60.0,
        timeout: float | None = None,
        squeue: str = "squeue",
        sacct: str = "sacct",
        scancel: str = "scancel",
        unknown_grace: int = 5,
    ) -> None:
        super().__init__(config, fit_args)
        self.sbatch = shlex.split(sbatch) if isinstance(sbatch, str) else list(sbatch)
        self.sbatch_args = list(sbatch_args)
        script = Path(script) if script is not None else slurm.sbatch_script(SBATCH_SCRIPT)
        if not script.is_file():
            raise FileNotFoundError(f"--sbatch_script {script}: no such file (the candidate's sbatch script)")
        self.script = str(script)
        self.poll, self.timeout = float(poll), timeout
        self.squeue, self.sacct, self.scancel = [squeue], [sacct], [scancel]
        self.unknown_grace = unknown_grace  # polls without any word of the job before it counts as lost

    def _state(self, job: str) -> str | None:
        return slurm.job_state(job, self.squeue, self.sacct)

    def _submit(self, alpha: float, beta: float, schedule: str | None, run_dir: Path) -> str:
        name = f"autonat_{run_dir.parent.name}_{run_dir.name}"
        command = [*self.sbatch, "--parsable", f"--job-name={name}", f"--output={run_dir / 'slurm-%j.out'}",
                   *self.sbatch_args, self.script, self.config, str(run_dir),
                   *run_dir_overrides(self.config, run_dir)[1:], *fit_overrides(alpha, beta, schedule),
                   *self.fit_args, *resume_args(run_dir)]  # fmt: skip
        print(f"autonat: submitting {shlex.join(command)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise JobError(f"autonat: sbatch failed ({done.returncode}): {done.stderr.strip()}")
        job = slurm.parse_job_id(done.stdout)
        atomic_write_json(run_dir / SUBMITTED_FILE, {"job_id": job, "submitted": time.time()})
        return job

    def _previous_job(self, run_dir: Path) -> tuple[str, str] | None:
        """``(job, state)`` of an earlier submission that is still queued or running (the driver was restarted)."""
        path = run_dir / SUBMITTED_FILE
        if not path.exists():
            return None
        job = str(json.loads(path.read_text()).get("job_id", ""))
        state = self._state(job) if job else None
        return (job, state) if state in slurm.LIVE_STATES else None

    def __call__(self, alpha: float, beta: float, schedule: str | None, run_dir: Path) -> CandidateResult:
        run_dir = Path(run_dir)
        if finished(run_dir):
            return read_result(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = self._previous_job(run_dir)
        if previous is not None:
            job, state = previous
            print(f"autonat: waiting for candidate job {job} (still {state}) in {run_dir}", flush=True)
        else:  # a new job; an earlier one that ended unfinished left its checkpoints, so this one resumes
            (run_dir / FAILED_FILE).unlink(missing_ok=True)
            job = self._submit(alpha, beta, schedule, run_dir)
        self._wait(job, run_dir)
        return read_result(run_dir)

    def _wait(self, job: str, run_dir: Path) -> None:
        start, unknown = time.monotonic(), 0
        while not (run_dir / DONE_FILE).exists():
            if (run_dir / FAILED_FILE).exists():
                status = (run_dir / FAILED_FILE).read_text().strip()
                raise JobError(f"autonat: candidate job {job} failed (exit status {status}), see {run_dir}/slurm-*.out")
            state = self._state(job)
            unknown = unknown + 1 if state is None else 0
            if (state in slurm.FINAL_STATES or unknown > self.unknown_grace) and not (run_dir / DONE_FILE).exists():
                raise JobError(f"autonat: candidate job {job} ended as {state or 'unknown to squeue and sacct'} "
                               f"without finishing; see {run_dir}/slurm-{job}.out. Rerun to resume it")  # fmt: skip
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                slurm.cancel(job, self.scancel)
                raise JobError(f"autonat: candidate job {job} ran over --timeout {self.timeout} s and was cancelled; "
                               f"rerun to resume it from its last checkpoint ({run_dir})")  # fmt: skip
            time.sleep(self.poll)


class SearchStep:
    """The generation step as a subprocess: ``python -m lit_nat search --config CONFIG --ckpt_path CKPT
    --out OUT [--schedule START] <search_args>``; returns ``OUT/best.yaml``. The search resumes itself from
    ``OUT/state.json`` if it was interrupted."""

    def __init__(self, config: str, search_args: Sequence[str] = (), command: Sequence[str] | None = None) -> None:
        self.config, self.search_args = str(config), list(search_args)
        self.command = list(command) if command is not None else [sys.executable, "-m", "lit_nat"]

    def __call__(self, round_index: int, checkpoint: str | None, schedule: str | None, out: Path) -> str:
        command = [*self.command, "search", f"--config={self.config}", f"--out={out}"]
        if checkpoint is not None:
            command.append(f"--ckpt_path={checkpoint}")
        if schedule is not None:
            command.append(f"--schedule={schedule}")
        command += self.search_args
        print(f"autonat: round {round_index} generation search: {shlex.join(command)}", flush=True)
        status = run_child(command)
        if status != 0:
            raise JobError(f"autonat: generation search failed (exit status {status}): {shlex.join(command)}")
        best = Path(out) / "best.yaml"
        if not best.exists():
            raise JobError(f"autonat: the generation search wrote no {best} (no finite FID?)")
        return str(best)


#: train(alpha, beta, schedule, run_dir) -> CandidateResult
Train = Callable[[float, float, "str | None", Path], CandidateResult]
