"""Two compile modes of ``benchmark``'s sampling call, timed in pairs: each call of mode B right after one of mode A,
the peak probe before each pair and after the last, so that this machine's speed changes (it switches between two
levels within seconds) fall on both modes alike. Prints one JSON line: both modes' images/s within the pairs, the
median of the per-pair ratios B / A in speed, and the probes' median and range.

    python scripts/pair_compile_modes.py --arch enat-l --dtype bf16 --modes false freeze --repeats 7

The numbers behind docs/measurements.md's "compile freeze" paired rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.commands import benchmark_cases as cases  # noqa: E402
from lit_nat.commands.benchmark import BenchmarkRequest, arch_target, matmul_size  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="enat-l")
    parser.add_argument("--arch_overrides", type=json.loads, default=None, help='JSON, e.g. \'{"width": 32}\'')
    parser.add_argument("--dtype", default="bf16", choices=sorted(cases.DTYPES))
    parser.add_argument("--modes", nargs=2, default=["false", "freeze"], metavar=("A", "B"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--draw", default="gumbel", choices=["gumbel", "inverse_cdf"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--matmul_size", type=int, default=None, help="the probe's side (default: benchmark's)")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    request = BenchmarkRequest(arch=[args.arch], arch_overrides=args.arch_overrides, matmul_size=args.matmul_size)
    target = arch_target(args.arch, request, device)
    calls = [cases.sampling_call(target, batch=args.batch, steps=args.steps, dtype=args.dtype, compile=mode,
                                 reuse=True, draw=args.draw, device=device) for mode in args.modes]  # fmt: skip
    for call in calls:  # warm-up: compilation, caches
        call()
    probe = cases.matmul_probe(matmul_size(request, device), args.dtype, device)
    (first, second), peaks = cases.bracketed([lambda c=c: cases.seconds_of(c, device) for c in calls], probe,
                                             args.repeats)  # fmt: skip
    gflops, peak = cases.sampling_gflops(target, args.steps, True), statistics.median(peaks)
    speeds = [args.batch / statistics.median(t) for t in (first, second)]
    result = {"arch": args.arch, "dtype": args.dtype, "batch": args.batch, "steps": args.steps, "draw": args.draw,
              "modes": args.modes, "repeats": args.repeats, "images_per_s": [cases.significant(v) for v in speeds],
              "paired_speedup": cases.significant(statistics.median(a / b for a, b in zip(first, second))),
              "gflops_per_image": cases.significant(gflops, 7),
              "fraction_of_peak": [cases.significant(v * gflops / 1e3 / peak) for v in speeds],
              **cases.peak_summary(peaks)}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
