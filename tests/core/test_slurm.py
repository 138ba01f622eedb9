"""scripts/slurm/fit.sbatch: its overrides parse for every shipped config, and a preempted job that SLURM requeues
resumes from the hpc checkpoint of its step, logs into the same TensorBoard run, and ends bit-identical to a job that
was never preempted.

The requeue test runs the real sbatch script with a fake ``srun`` (runs the command once, locally) and a fake
``scontrol`` (records its arguments) on PATH and the variables SLURM sets, so Lightning's SLURM environment and
lit_nat's Preemption callback handle SIGUSR1 as on a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_nat.commands.cli import main
from tests.conftest import FIT_CONFIGS, write_random_shards
from tests.helpers.checks import assert_same_training_state
from tests.helpers.tiny import UVIT_ARCH

REPO = Path(__file__).resolve().parents[2]
FIT_SBATCH = REPO / "scripts" / "slurm" / "fit.sbatch"
JOB_ID = "4242"


def script_overrides() -> list[str]:
    """The ``--trainer.*=`` options fit.sbatch passes, with example values in place of the shell variables."""
    text = FIT_SBATCH.read_text()
    keys = re.findall(r"(--trainer\.[a-z_.]+)=", text)
    assert {"--trainer.num_nodes", "--trainer.devices", "--trainer.default_root_dir"} <= set(keys)
    values = {"--trainer.num_nodes": "2", "--trainer.devices": "8", "--trainer.logger.init_args.version": JOB_ID}
    return [f"{k}={values.get(k, 'runs/slurm/' + JOB_ID)}" for k in keys]


@pytest.mark.parametrize("config", FIT_CONFIGS, ids=[c.stem for c in FIT_CONFIGS])
def test_fit_sbatch_overrides_parse_for_every_config(config, capsys):
    text = FIT_SBATCH.read_text()
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "srun" in commands and "torchrun" not in commands
    assert "#SBATCH --requeue" in text and re.search(r"#SBATCH --signal=SIGUSR1@\d+", text)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *script_overrides(), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["num_nodes"] == 2 and str(printed["trainer"]["devices"]) == "8"
    assert printed["trainer"]["logger"]["init_args"]["version"] == int(JOB_ID)


def fake_tools(bin_dir: Path, record: Path) -> None:
    bin_dir.mkdir()
    # srun: drop its own options, run the command once (one task)
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {record}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes_into_the_same_run(tmp_path):
    shards = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3, sizes={"train": 64})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "limit_val_batches": 0, "enable_progress_bar": False,
                    "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "elsewhere"), "name": "tensorboard"}},
                    "callbacks": [{"class_path": "tests.helpers.probes.KillAtStep",
                                   "init_args": {"step": 3, "signal_name": "SIGUSR1",
                                                 "marker": str(tmp_path / "preempted")}}]},
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ARCH},
        "data": {"root": str(shards), "batch_size": 16, "num_workers": 0},
    }))  # fmt: skip
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.log"
    fake_tools(bin_dir, record)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(REPO), LIT_NAT_PYTHON=sys.executable,
               LIT_NAT_RUN_ROOT=str(tmp_path / "runs"), SLURM_JOB_ID=JOB_ID, SLURM_JOB_NAME="lit_nat",
               SLURM_NNODES="1", SLURM_NTASKS_PER_NODE="1", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_NODEID="0", SLURM_NODELIST="localhost")  # fmt: skip

    def sbatch(restart: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(FIT_SBATCH), str(config)], cwd=REPO, capture_output=True, text=True,
                              env={**env, "SLURM_RESTART_COUNT": str(restart)}, timeout=300)  # fmt: skip

    first = sbatch(0)
    run_dir = tmp_path / "runs" / JOB_ID
    assert first.returncode == 143, first.stdout + first.stderr
    assert (run_dir / "hpc_ckpt_1.ckpt").exists()  # saved at the batch boundary of SIGUSR1, into the job's run dir
    assert record.read_text().split() == ["requeue", JOB_ID]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 3

    second = sbatch(1)  # the requeued job: same id, same run dir
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert f"Restored all states from the checkpoint at {run_dir / 'hpc_ckpt_1.ckpt'}" in output
    versions = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert versions == [f"version_{JOB_ID}"]  # one TensorBoard run for both attempts, none under the config's save_dir
    assert not (tmp_path / "elsewhere").exists()
    (final,) = (run_dir / "tensorboard" / f"version_{JOB_ID}" / "checkpoints").glob("*.ckpt")
    last = torch.load(final, weights_only=False)
    assert last["global_step"] == 8 and last["epoch"] == 1  # 2 epochs x 4 batches: resumed, not restarted

    # a new submission (another job id) starts fresh in its own run dir, and is never preempted (the marker exists):
    # the preempted-and-requeued job ended with exactly its weights, EMA and optimiser state
    third = subprocess.run(["bash", str(FIT_SBATCH), str(config)], cwd=REPO, capture_output=True, text=True,
                           env={**env, "SLURM_JOB_ID": "4243", "SLURM_RESTART_COUNT": "1"}, timeout=300)  # fmt: skip
    assert third.returncode == 0 and "Restored all states" not in third.stdout + third.stderr
    (fresh,) = (tmp_path / "runs" / "4243" / "tensorboard" / "version_4243" / "checkpoints").glob("*.ckpt")
    assert_same_training_state(last, torch.load(fresh, weights_only=False))


def test_the_sbatch_scripts_live_in_scripts_slurm_and_nowhere_else(tmp_path):
    """One home for the scripts users edit: the launcher finds them in scripts/slurm/, or takes the path of a copy."""
    from lit_nat.core.slurm import SLURM_SCRIPTS, sbatch_script
    from lit_nat.search.launchers import SlurmLauncher

    names = {"fit.sbatch", "tokenize.sbatch", "autonat_candidate.sbatch"}
    assert SLURM_SCRIPTS == REPO / "scripts" / "slurm"
    assert {p.name for p in SLURM_SCRIPTS.glob("*.sbatch")} == names
    assert not list((REPO / "lit_nat").rglob("*.sbatch"))  # no second, hand-kept copy inside the package
    assert SlurmLauncher("cfg.yaml").script == str(SLURM_SCRIPTS / "autonat_candidate.sbatch")
    copy = tmp_path / "my_candidate.sbatch"
    copy.write_text("#!/bin/bash\n")
    assert SlurmLauncher("cfg.yaml", script=copy).script == str(copy)
    with pytest.raises(FileNotFoundError, match="--sbatch_script .*nope.sbatch: no such file"):
        SlurmLauncher("cfg.yaml", script=tmp_path / "nope.sbatch")
    with pytest.raises(FileNotFoundError, match=r"'nope.sbatch' in .*scripts/slurm .*found: \['autonat"):
        sbatch_script("nope.sbatch")
