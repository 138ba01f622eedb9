"""Shell scripts are valid bash and agree with the CLI they drive."""

import subprocess
from pathlib import Path

import pytest

from lit_nat.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*REPO.glob("scripts/*.sh"), *REPO.glob("scripts/slurm/*.sbatch"), REPO / ".ci/run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_fit_overrides_are_accepted_by_the_cli(capsys):
    text = (REPO / "scripts/slurm/fit.sbatch").read_text()
    commands = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "srun" in commands and "torchrun" not in commands and "#SBATCH --ntasks-per-node" in text
    # the exact trainer overrides the script passes parse against the flagship config
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs/autonat_l.yaml"),
                "--trainer.num_nodes=2",
                "--trainer.devices=8",
                "--trainer.logger.init_args.version=12345",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "num_nodes: 2" in printed and "version: 12345" in printed
