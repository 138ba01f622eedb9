"""Sampling throughput (images/s, warm-up excluded) of the decoding loop for registry backbones.

    python scripts/benchmark_sampling.py --arch enat-l autonat-l --batch 50 256 --device cuda --dtype bf16

Weights are random (throughput does not depend on them); the token space is ImageNet-256's (1024 codes, 16x16,
1000 classes) unless given. For ENAT backbones the table also has the same model run without feature reuse. The
guided ENAT schedule is used for every model, so all rows run two backbone rows per image at every step. The VQ
decoder is not included.
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import build_backbone
from lit_nat.models.flops import WithoutReuse

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def images_per_second(backbone, batch: int, steps: int, device: str, dtype: torch.dtype, warmup: int, iters: int):
    schedule = GenerationSchedule.enat(steps)
    labels = torch.arange(batch, device=device) % backbone.num_classes
    generator = make_generator(0, device)

    def run() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            generate(
                backbone,
                labels,
                schedule,
                generator,
                num_tokens=backbone.num_tokens,
                mask_id=backbone.mask_id,
                null_condition=backbone.null_class,
            )

    for _ in range(warmup):
        run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["enat-s", "autonat-s"], help="registry names")
    parser.add_argument("--batch", nargs="+", type=int, default=[8], help="images per call")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--grid_size", type=int, default=16)
    parser.add_argument("--codebook_size", type=int, default=1024)
    parser.add_argument("--num_classes", type=int, default=1000)
    args = parser.parse_args()

    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device_name}; dtype {args.dtype}; T = {args.steps}; guided; VQ decoder excluded")
    print("| backbone | batch | images/s |\n|---|---|---|")
    for arch in args.arch:
        backbone = (
            build_backbone(
                arch, codebook_size=args.codebook_size, grid_size=args.grid_size, num_classes=args.num_classes
            )
            .to(args.device)
            .eval()
        )
        variants = {arch: backbone}
        if getattr(backbone, "supports_reuse", False):
            variants[f"{arch} (no reuse)"] = WithoutReuse(backbone)
        for name, model in variants.items():
            for batch in args.batch:
                rate = images_per_second(
                    model, batch, args.steps, args.device, DTYPES[args.dtype], args.warmup, args.iters
                )
                print(f"| {name} | {batch} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
