"""Where a sampling call's time goes: ``torch.profiler`` over one decoding call of a registry backbone (random weights,
guided ENAT schedule), operators sorted by their own time, with their share of the call.

    python scripts/profile_sampling.py --arch enat-l --batch 8 --steps 8 --precision bf16-true

The numbers behind docs/measurements.md's "where a bf16 call goes". ``--inference_mode true`` runs the loop as
Lightning's predict does, to see autocast's weight casts repeat (count the ``aten::copy_`` rows).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
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
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = cast_for_sampling(build_backbone(args.arch, codebook_size=1024, grid_size=16, num_classes=1000).eval(),
                                 args.precision)  # fmt: skip
    labels, schedule = torch.arange(args.batch) % 1000, GenerationSchedule.enat(args.steps)
    def context() -> contextlib.AbstractContextManager:
        if args.inference_mode == "true":  # as Lightning's predict: inference mode, then autocast
            return _inference(args.precision)
        return sampling_context("cpu", args.precision)

    def run() -> None:
        with context():
            generate(backbone, labels, schedule, make_generator(0, "cpu"), num_tokens=backbone.num_tokens,
                     mask_id=backbone.mask_id, null_condition=backbone.null_class)  # fmt: skip

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


def _inference(precision: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast_for("cpu", precision))
    return stack


if __name__ == "__main__":
    main()
