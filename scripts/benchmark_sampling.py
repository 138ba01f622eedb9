"""Sampling throughput, now ``python -m lit_nat benchmark --cases sampling`` (this script forwards to it).

    python scripts/benchmark_sampling.py --arch enat-l autonat-l --batch 50 256 --device cuda --dtype bf16

is ``python -m lit_nat benchmark --cases sampling --arch enat-l autonat-l --batch 50 256 --device cuda --dtype
bf16``; the old ``--iters N`` is ``--repeats N`` (the median of N timed calls, not their mean). See
``python -m lit_nat benchmark --help`` for the other cases (matmul peak, train, decode, draw).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.commands.cli import entry  # noqa: E402

if __name__ == "__main__":
    args = ["--repeats" if arg == "--iters" else arg for arg in sys.argv[1:]]
    has_cases = "--cases" in args
    sys.argv = [sys.argv[0], "benchmark", *([] if has_cases else ["--cases", "sampling"]), *args]
    entry()
