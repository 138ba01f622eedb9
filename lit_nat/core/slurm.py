"""SLURM from Python: this job's id, requeueing it, asking the scheduler about other jobs (``squeue``/``sacct``), and
the sbatch scripts users edit and submit (``scripts/slurm/`` at the top of the repository: ``fit``, ``tokenize``,
``autonat_candidate``).

Every call goes through a command prefix that tests replace with fake tools; nothing here needs SLURM to import.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: job states after which a job never runs again (sacct's names; ``CANCELLED by 123`` is reduced to its first word)
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "REVOKED", "TIMEOUT",
})  # fmt: skip
#: states of a job that is queued or running (squeue's names)
LIVE_STATES = frozenset({
    "CONFIGURING", "COMPLETING", "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED", "SUSPENDED",
})  # fmt: skip


#: the one home of the sbatch scripts: the repository's ``scripts/slurm/``, where users edit them before submitting
SLURM_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"


def sbatch_script(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The path of an sbatch script (``fit.sbatch``, ``tokenize.sbatch``, ``autonat_candidate.sbatch``) in ``folder``
    (default: the repository's ``scripts/slurm/``). A package installed without its repository has no such folder:
    copy the script from the repository and pass its path (``autonat --sbatch_script``)."""
    path = Path(folder or SLURM_SCRIPTS) / name
    if not path.is_file():
        there = sorted(p.name for p in path.parent.glob("*.sbatch"))
        raise FileNotFoundError(
            f"no sbatch script {name!r} in {path.parent} (found: {there}); pass the path of your copy of "
            f"scripts/slurm/{name} from the lit_nat repository"
        )
    return path


def current_job_id() -> str | None:
    """This process's SLURM job id (``<array job>_<task>`` for an array task), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job_id: str, scontrol: Sequence[str] = ("scontrol",)) -> bool:
    """``scontrol requeue JOB``; returns whether it succeeded (a failure is reported, never raised)."""
    try:
        done = subprocess.run([*scontrol, "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"lit_nat: could not requeue SLURM job {job_id}: {err}", flush=True)
        return False
    if done.returncode != 0:
        print(f"lit_nat: scontrol requeue {job_id} failed ({done.returncode}): {done.stderr.strip()}", flush=True)
    return done.returncode == 0


def parse_job_id(sbatch_output: str) -> str:
    """The job id from ``sbatch`` output: ``--parsable`` (``123`` or ``123;cluster``) or ``Submitted batch job 123``."""
    text = sbatch_output.strip()
    last = text.split()[-1] if text else ""
    job_id = last.split(";")[0]
    if not job_id or not job_id.replace("_", "").isdigit():
        raise ValueError(f"cannot read a job id from sbatch's output {sbatch_output!r}")
    return job_id


def job_state(job_id: str, squeue: Sequence[str] = ("squeue",), sacct: Sequence[str] = ("sacct",)) -> str | None:
    """The job's state: squeue's while it is queued or running, else sacct's final state; None if neither knows it
    (e.g. accounting is off and the job left the queue)."""
    try:
        out = subprocess.run([*squeue, "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0].strip().upper()
        out = subprocess.run([*sacct, "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0].strip().upper()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None


def cancel(job_id: str, scancel: Sequence[str] = ("scancel",)) -> None:
    """``scancel JOB`` (errors reported, not raised)."""
    try:
        subprocess.run([*scancel, job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"lit_nat: could not cancel SLURM job {job_id}: {err}", flush=True)
