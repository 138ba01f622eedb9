"""Where a sampling call's time goes: ``torch.profiler`` over one decoding call of a registry backbone (random weights,
guided ENAT schedule), operators sorted by their own time, with their share of the call.

    python scripts/profile_sampling.py --arch enat-l --batch 8 --steps 8 --precision bf16-true

The numbers behind docs/measurements.md's "where a bf16 call goes". ``--inference_mode true`` runs the loop as
Lightning's predict does, to see autocast's weight casts repeat (count the ``aten::copy_`` rows).
``--activations true`` instead times the GELU flavours alone on one MLP hidden tensor of the call (rows x 4 x width):
tanh against erf, bf16 against fp32 data, eager against ``torch.compile``, the best of 7 interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.generation.decoding import generate, make_generator  # noqa: E402
from lit_nat.generation.precision import PRECISIONS, autocast_for, cast_for_sampling, sampling_context  # noqa: E402
from lit_nat.generation.schedule import GenerationSchedule  # noqa: E402
from lit_nat.models import build_backbone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="enat-l")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", default="bf16-true", choices=list(PRECISIONS))
    parser.add_argument("--inference_mode", default="false", choices=["true", "false"])
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    parser.add_argument("--activations", default="false", choices=["true", "false"])
    parser.add_argument("--compare_inference_mode", default="false", choices=["true", "false"],
                        help="wall time of calls in inference mode and under no_grad, interleaved, no profiler")
    args = parser.parse_args()
    if args.activations == "true":
        return time_activations(args.arch, rows=args.batch * 2 * 100)
    torch.manual_seed(0)
    backbone = cast_for_sampling(build_backbone(args.arch, codebook_size=1024, grid_size=16, num_classes=1000).eval(),
                                 args.precision)  # fmt: skip
    labels, schedule = torch.arange(args.batch) % 1000, GenerationSchedule.enat(args.steps)
    def context() -> contextlib.AbstractContextManager:
        if args.inference_mode == "true":  # as Lightning's predict (compare_modes flips it)
            return _inference(args.precision)
        return sampling_context("cpu", args.precision)

    def run() -> None:
        with context():
            generate(backbone, labels, schedule, make_generator(0, "cpu"), num_tokens=backbone.num_tokens,
                     mask_id=backbone.mask_id, null_condition=backbone.null_class)  # fmt: skip

    if args.compare_inference_mode == "true":
        return compare_modes(run, args)
    run()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.arch}, batch {args.batch}, T = {args.steps}, {args.precision}: {seconds:.2f} s per call\n")
    print("| operator | calls | own time (s) | share |\n|---|---|---|---|")
    for event in events[: args.rows]:
        share = event.self_cpu_time_total / total
        print(f"| {event.key} | {event.count} | {event.self_cpu_time_total / 1e6:.3f} | {share:.1%} |")


def compare_modes(run: Callable[[], None], args: argparse.Namespace, calls: int = 4) -> None:
    """Seconds per call with ``--inference_mode`` true and false, alternating, after one warm call of each."""
    seconds: dict[str, list[float]] = {"true": [], "false": []}
    for index in range(calls + 1):
        for mode in seconds:
            args.inference_mode = mode
            start = time.perf_counter()
            run()
            if index:  # the first round warms
                seconds[mode].append(time.perf_counter() - start)
    for mode, values in seconds.items():
        label = "inference mode" if mode == "true" else "no_grad"
        print(f"{label}: {' '.join(f'{v:.2f}' for v in values)} s per call (best {min(values):.2f})")


def time_activations(arch: str, rows: int) -> None:
    """Milliseconds of each GELU flavour on a ``(rows, 4 * width)`` tensor (about the visible rows of one guided ENAT
    step at batch B: 2B rows of 100 tokens)."""
    with torch.device("meta"):
        width = build_backbone(arch, codebook_size=16, grid_size=2, num_classes=2).width
    data = {"bf16": torch.randn(rows, 4 * width).bfloat16()}
    data["fp32"] = data["bf16"].float()
    cases = {f"{flavour} GELU, {dtype}": (partial(F.gelu, approximate=flavour), x)
             for flavour in ("tanh", "none") for dtype, x in data.items()}  # fmt: skip
    compiled = torch.compile(partial(F.gelu, approximate="tanh"), dynamic=False)
    cases["tanh GELU, bf16, torch.compile"] = (compiled, data["bf16"])
    cases["tanh GELU as x * sigmoid(2z), bf16, torch.compile (one fused loop)"] = (
        torch.compile(gelu_tanh_by_sigmoid, dynamic=False), data["bf16"])  # fmt: skip
    best = {name: float("inf") for name in cases}
    for fn, x in cases.values():
        fn(x)  # warm (and compile)
    for _ in range(7):
        for name, (fn, x) in cases.items():
            start = time.perf_counter()
            fn(x)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"| GELU on ({rows}, {4 * width}) | ms |\n|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.2f} |")


def gelu_tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """tanh-GELU rewritten with 0.5 (1 + tanh z) = sigmoid(2z), in fp32 inside, as a candidate fused kernel."""
    xf = x.float()
    z2 = 1.5957691216057308 * (xf + 0.044715 * xf * xf * xf)  # 2 * sqrt(2 / pi) * (x + 0.044715 x^3)
    return (xf * torch.sigmoid(z2)).to(x.dtype)


def _inference(precision: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast_for("cpu", precision))
    return stack


if __name__ == "__main__":
    main()
