"""AutoNAT's alternating driver (Algorithm 1): convergence, resume without recomputation, state file, launchers."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lit_nat.commands.cli import COMMANDS, main
from lit_nat.core.errors import JobError
from lit_nat.search.alternating import STATE_FILE, AutoNAT, candidate_dir
from lit_nat.search.launchers import DONE_FILE, CandidateResult, LocalLauncher, SlurmLauncher

REPO = Path(__file__).resolve().parents[2]
OFFSETS = [1.0, 0.3, 0.25, 0.25, 0.25]  # FID floor of the schedule searched in round k


class FakeGeneration:
    """The generation step: round k's schedule file carries k; records what it was given."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple[int, str | None, str | None]] = []
        self.fail_at = fail_at

    def __call__(self, index, checkpoint, schedule, out):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt("crash in the generation step")
        self.calls.append((index, checkpoint, schedule))
        out.mkdir(parents=True, exist_ok=True)
        (out / "best.yaml").write_text(f"{index}\n")
        return str(out / "best.yaml")


class FakeTrainer:
    """A 'fit' whose FID is (log a/4)^2 + (log b/2)^2 + the floor of the schedule it was given."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[tuple[float, float, str | None, Path]] = []
        self.fail_after = fail_after

    def __call__(self, alpha, beta, schedule, run_dir):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt("crash in a candidate fit")
        self.calls.append((alpha, beta, schedule, run_dir))
        offset = 2.0 if schedule is None else OFFSETS[int(Path(schedule).read_text())]
        fid = math.log(alpha / 4) ** 2 + math.log(beta / 2) ** 2 + offset
        return CandidateResult(fid, str(run_dir / "last.ckpt"))


LINE = {"factor": 2.0, "refinements": 0}


def driver(out, gen, train, **kwargs):
    kwargs = {"checkpoint": "init.ckpt", "epsilon": 0.1, "max_rounds": 5, "line_search": LINE, **kwargs}
    return AutoNAT(out, gen, train, **kwargs)


def test_converges_hands_the_schedule_to_candidates_and_writes_the_state(tmp_path):
    gen, train = FakeGeneration(), FakeTrainer()
    state = driver(tmp_path, gen, train).run()
    # F: 1.0 -> 0.3 (|dF| 0.7) -> 0.25 (0.05 <= 0.1): converged after 3 rounds
    assert state["status"] == "converged" and len(state["rounds"]) == 3
    assert [r["f_new"] for r in state["rounds"]] == pytest.approx([1.0, 0.3, 0.25])
    assert state["rounds"][0]["f_prev"] is None and state["rounds"][2]["delta"] == pytest.approx(0.05)
    assert (state["current"]["alpha"], state["current"]["beta"]) == (4.0, 2.0)
    # round k's generation search starts from the previous round's best checkpoint and schedule
    assert gen.calls[0] == (0, "init.ckpt", None)
    for k in (1, 2):
        previous = state["rounds"][k - 1]["result"]
        assert gen.calls[k] == (k, previous["checkpoint"], previous["schedule"])
        assert previous["checkpoint"] == str(candidate_dir(tmp_path, k - 1, 4, 2) / "last.ckpt")
    # every candidate fit of round k got round k's searched schedule and its own run directory
    for alpha, beta, schedule, run_dir in train.calls:
        k = int(Path(schedule).read_text())
        assert schedule == state["rounds"][k]["schedule"] and run_dir == candidate_dir(tmp_path, k, alpha, beta)
    # round 0 walks from (1, 1); later rounds start at (4, 2) and need only its neighbours
    assert len(train.calls) == sum(len(r["candidates"]) for r in state["rounds"])
    assert len(state["rounds"][1]["candidates"]) == 5
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved == json.loads(json.dumps(state)) and not (tmp_path / (STATE_FILE + ".tmp")).exists()
    assert all(r["phase"] == "done" and r["line_search"]["converged"] for r in saved["rounds"])
    # a finished run is a no-op
    gen2, train2 = FakeGeneration(), FakeTrainer()
    assert driver(tmp_path, gen2, train2).run() == saved and gen2.calls == train2.calls == []


def test_stops_at_max_rounds_and_a_larger_limit_continues(tmp_path):
    gen, train = FakeGeneration(), FakeTrainer()
    state = driver(tmp_path, gen, train, epsilon=0.0, max_rounds=2).run()
    assert state["status"] == "max_rounds" and len(state["rounds"]) == 2
    state = driver(tmp_path, gen, train, epsilon=0.0, max_rounds=3).run()
    assert len(state["rounds"]) == 3 and len(gen.calls) == 3
    with pytest.raises(ValueError, match="started from"):
        driver(tmp_path, gen, train, alpha=2.0)


@pytest.mark.parametrize("crash", ["fit", "generation"])
def test_resume_after_a_crash_recomputes_nothing_saved(tmp_path, crash):
    reference = driver(tmp_path / "ref", FakeGeneration(), FakeTrainer()).run()
    total = sum(len(r["candidates"]) for r in reference["rounds"])
    out = tmp_path / "run"
    gens, trains = [], []
    for attempt in range(20):  # crash after every few calls until the run finishes
        gen = FakeGeneration(fail_at=1 if crash == "generation" else None)
        train = FakeTrainer(fail_after=3 if crash == "fit" else None)
        gens.append(gen)
        trains.append(train)
        try:
            state = driver(out, gen, train).run()
            break
        except KeyboardInterrupt:
            assert json.loads((out / STATE_FILE).read_text())["status"] == "running"
    else:
        pytest.fail("never finished")
    assert attempt > 0
    assert sum(len(t.calls) for t in trains) == total  # every candidate trained exactly once
    assert sum(len(g.calls) for g in gens) == len(reference["rounds"])  # every search run exactly once
    strip = lambda s: json.loads(json.dumps(s).replace(str(tmp_path / "ref"), str(out)))  # noqa: E731
    assert state == strip(reference)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers with a fake `python -m lit_nat fit` (and a fake sbatch running the real candidate script)
FAKE_FIT = r"""
import json, math, os, sys
from pathlib import Path
args = [a for a in sys.argv[1:] if a not in ("-m", "lit_nat")]
assert args[0] == "fit", args
opts = dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
if "--config" in args:
    opts["config"] = args[args.index("--config") + 1]
root = Path(opts["trainer.default_root_dir"])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(opts) + "\n")
if os.environ.get("FAKE_FAIL"):
    sys.exit(3)
params = opts["model.mask_ratio_params"].strip("{}").split(",")
a, b = (float(p.split(":")[1]) for p in params)
logs = root / "lightning_logs" / "version_0"
logs.mkdir(parents=True, exist_ok=True)
(logs / "checkpoints").mkdir(exist_ok=True)
(logs / "checkpoints" / "last.ckpt").write_text("")
(logs / "eval_report.json").write_text(json.dumps({"fid": math.log(a / 4) ** 2 + math.log(b) ** 2}))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("SLURM_NNODES", raising=False)
    return script, log


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_local_launcher_args_markers_and_half_finished_resume(tmp_path, fake, monkeypatch):
    script, log = fake
    launcher = LocalLauncher("cfg.yaml", ["--trainer.max_steps=2"], command=[sys.executable, str(script)])
    run_dir = tmp_path / "cand"
    result = launcher(2.0, 1.0, "sched.yaml", run_dir)
    assert result.fid == pytest.approx(math.log(0.5) ** 2) and result.checkpoint.endswith("last.ckpt")
    (opts,) = logged(log)
    assert opts["config"] == "cfg.yaml" and opts["trainer.max_steps"] == "2" and opts["model.schedule"] == "sched.yaml"
    assert opts["model.schedule_params"] == "null"  # found by a real run: presets' params clash with a file
    assert opts["model.mask_ratio_law"] == "beta" and opts["model.mask_ratio_params"] == "{alpha: 2, beta: 1}"
    assert (run_dir / DONE_FILE).exists() and "ckpt_path" not in opts
    assert launcher(2.0, 1.0, "sched.yaml", run_dir).fid == result.fid and len(logged(log)) == 1  # finished: reused
    (run_dir / DONE_FILE).unlink()  # half-finished (killed after a checkpoint): resumed in place, nothing deleted
    (run_dir / "keep").write_text("")
    launcher(2.0, 1.0, "sched.yaml", run_dir)
    assert len(logged(log)) == 2 and logged(log)[1]["ckpt_path"] == result.checkpoint and (run_dir / "keep").exists()
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(JobError, match="exit status 3"):
        launcher(1.0, 1.0, None, tmp_path / "bad")


def slurm_tools(tmp_path: Path, states: list[str], sbatch_runs_job: bool = True, job: str = "42") -> dict[str, str]:
    """Fake sbatch (optionally runs the job script at once, prints the job id), squeue (prints the next of ``states``
    on each call, '' = not queued), sacct (prints its argument file's content) and scancel (records its call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    run = 'bash "$@" >/dev/null 2>&1 || true\n' if sbatch_runs_job else ""
    tools = {
        "sbatch": f'#!/bin/bash\necho "$@" >> {tmp_path}/sbatch.log\nwhile [[ $1 == --* ]]; do shift; done\n{run}'
                  f"echo {job}\n",
        "squeue": f"#!/bin/bash\nhead -n1 {tmp_path}/states; tail -n +2 {tmp_path}/states > {tmp_path}/s.tmp; "
                  f"[ -s {tmp_path}/s.tmp ] && mv {tmp_path}/s.tmp {tmp_path}/states; exit 0\n",
        "sacct": f"#!/bin/bash\ncat {tmp_path}/sacct 2>/dev/null; exit 0\n",
        "scancel": f'#!/bin/bash\necho "$@" >> {tmp_path}/scancel.log\n',
    }  # fmt: skip
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {name: str(bin_dir / name) for name in tools}


def slurm_launcher(tools: dict[str, str], **kw) -> SlurmLauncher:
    return SlurmLauncher("cfg.yaml", ["--trainer.max_steps=2"], sbatch=tools["sbatch"], squeue=tools["squeue"],
                         sacct=tools["sacct"], scancel=tools["scancel"], poll=0.01, **kw)  # fmt: skip


@pytest.fixture
def fake_python(tmp_path, fake, monkeypatch):
    script, log = fake
    python = tmp_path / "python"
    python.write_text(f'#!/bin/bash\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("LIT_NAT_PYTHON", str(python))
    return log


def test_slurm_launcher_with_a_fake_sbatch_runs_the_candidate_script(tmp_path, fake_python, monkeypatch):
    tools = slurm_tools(tmp_path, [""])
    result = slurm_launcher(tools, timeout=30)(4.0, 1.0, "s.yaml", tmp_path / "cand")
    assert result.fid == pytest.approx(0.0)
    assert json.loads((tmp_path / "cand" / "SUBMITTED").read_text())["job_id"] == "42"
    assert "--parsable" in (tmp_path / "sbatch.log").read_text()
    (opts,) = logged(fake_python)
    assert opts["model.schedule"] == "s.yaml" and opts["trainer.default_root_dir"] == str(tmp_path / "cand")
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(JobError, match="exit status 3"):
        slurm_launcher(tools)(1.0, 1.0, None, tmp_path / "bad")


@pytest.mark.parametrize("final", ["TIMEOUT", "CANCELLED by 1234", "NODE_FAIL", "OUT_OF_MEMORY"])
def test_slurm_job_that_ends_without_finishing_is_reported_not_awaited(tmp_path, final):
    tools = slurm_tools(tmp_path, ["PENDING", "RUNNING", ""], sbatch_runs_job=False, job="43")
    (tmp_path / "sacct").write_text(final + "\n")
    with pytest.raises(JobError, match=f"job 43 ended as {final.split()[0]} without finishing"):
        slurm_launcher(tools)(1.0, 1.0, None, tmp_path / "cand")


def test_slurm_job_over_the_timeout_is_cancelled(tmp_path):
    tools = slurm_tools(tmp_path, ["RUNNING"], sbatch_runs_job=False, job="44")
    with pytest.raises(JobError, match="ran over --timeout"):
        slurm_launcher(tools, timeout=0.05)(1.0, 1.0, None, tmp_path / "cand")
    assert (tmp_path / "scancel.log").read_text().split() == ["44"]


def test_a_restarted_driver_waits_for_the_live_job_and_deletes_nothing(tmp_path, fake_python):
    run_dir = tmp_path / "cand"
    run_dir.mkdir()
    (run_dir / "SUBMITTED").write_text(json.dumps({"job_id": "45"}))
    (run_dir / "written-by-the-job").write_text("")
    # the job is still running when the driver comes back, and finishes while it waits
    tools = slurm_tools(tmp_path, ["RUNNING", "RUNNING", "RUNNING", "RUNNING"], job="99")
    finisher = tmp_path / "bin" / "squeue"
    finisher.write_text(finisher.read_text().replace("exit 0", f"""n=$(cat {tmp_path}/n 2>/dev/null || echo 0)
echo $((n+1)) > {tmp_path}/n
if [ $n -ge 2 ]; then
  mkdir -p {run_dir}/v; echo '{{"fid": 1.5}}' > {run_dir}/v/eval_report.json; echo 0 > {run_dir}/DONE
fi
exit 0"""))  # fmt: skip
    result = slurm_launcher(tools)(1.0, 1.0, None, run_dir)
    assert result.fid == 1.5 and not (tmp_path / "sbatch.log").exists()  # waited; nothing was submitted again
    assert (run_dir / "written-by-the-job").exists()


def test_the_driver_with_the_local_launcher(tmp_path, fake):
    script, log = fake
    train = LocalLauncher("cfg.yaml", command=[sys.executable, str(script)])
    gen = FakeGeneration()
    state = AutoNAT(tmp_path / "out", gen, train, alpha=2.0, beta=1.0, max_rounds=1,
                    line_search={"factor": 2.0, "refinements": 0, "max_evaluations": 3}).run()  # fmt: skip
    initial = state["rounds"][0]["start"]["checkpoint"]
    assert state["status"] == "max_rounds" and gen.calls == [(0, initial, None)]
    runs = logged(log)
    # no starting checkpoint: an initial fit with the starting law and the config's schedule, then the candidates
    assert "model.schedule" not in runs[0] and runs[0]["trainer.default_root_dir"].endswith("candidates/init")
    assert all(r["model.schedule"] == state["rounds"][0]["schedule"] for r in runs[1:]) and len(runs) == 4
    assert initial.startswith(str(tmp_path / "out" / "candidates" / "init")) and initial.endswith("last.ckpt")
    assert (state["current"]["alpha"], state["current"]["beta"]) == (4.0, 1.0)


def test_cli_has_the_autonat_command(capsys):
    assert COMMANDS["autonat"].function is not None
    with pytest.raises(SystemExit) as exit_info:
        main(["autonat", "--help"])
    assert exit_info.value.code == 0 and "--epsilon" in capsys.readouterr().out
    subprocess.run(["bash", "-n", str(REPO / "scripts/slurm/autonat_candidate.sbatch")], check=True)
    assert os.path.exists(REPO / "scripts/slurm/autonat_candidate.sbatch")


def test_a_stopped_driver_forwards_the_signal_to_its_child_and_stops(tmp_path):
    import signal
    import threading

    from lit_nat.core.errors import Stopped
    from lit_nat.search.launchers import run_child

    marker = tmp_path / "child-got-sigterm"
    child = (f"import signal, sys, time\n"
             f"def bye(*_):\n    open({str(marker)!r}, 'w').close(); sys.exit(143)\n"
             f"signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n")  # fmt: skip
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(Stopped, match="(?s)stopped by signal 15 .* exited with 143.*rerun"):
            run_child([sys.executable, "-c", child])
    finally:
        timer.cancel()
    assert marker.exists() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler, None)


def test_autonat_refuses_a_missing_config_or_checkpoint_before_launching_anything(tmp_path):
    from lit_nat.core.errors import UsageError

    with pytest.raises(UsageError, match=f"--fit_config {tmp_path / 'nope.yaml'}: no such file"):
        main(["autonat", "--fit_config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    config = tmp_path / "c.yaml"
    config.write_text("model: {}\n")
    with pytest.raises(UsageError, match="--ckpt_path .*missing.ckpt: no such file"):
        main(["autonat", "--fit_config", str(config), "--ckpt_path", str(tmp_path / "missing.ckpt"),
              "--out", str(tmp_path / "run")])  # fmt: skip
    assert not (tmp_path / "run").exists()
