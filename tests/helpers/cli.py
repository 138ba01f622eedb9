"""``python -m lit_nat ...`` in a child process, as a user runs it: the tests that kill, interrupt or fill the disk
under a real command use this one runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_lit_nat(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lit_nat ARGS`` from the repository (importable without installing), capturing its text."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lit_nat", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def command(name: str):
    """``python -m lit_nat NAME ...`` in this process, as a function of its options: ``command("tokenize")(argv)``."""
    from lit_nat.commands.cli import run_command

    return lambda argv: run_command(name, [str(a) for a in argv])
