"""Throughput of lit_nat's decoding loop against diffusers' ``AmusedPipeline`` on the same aMUSEd weights and schedule.

Both sides load one local diffusers folder with *random* weights (written from configs, nothing downloaded) and run
aMUSEd's own strategy: 12 steps, cosine schedule, re-masking temperature 2 -> 0, guidance g = 10 (lit_nat's preset
``amused``: w = 9), the empty prompt as the unconditional branch. Timed per call, after one warm-up call: encoding the
prompts (and the empty prompt) with the CLIP text tower, then the 12 guided steps; tokens out (``output_type="latent"``
for the pipeline), so the VQ-GAN decode, identical on both sides, is left out. Settings run side by side in one process.

Sizes: ``reduced`` (default, for CPUs): aMUSEd-256's token space (16 x 16 tokens, 8,192 codes) and its CLIP-L/14 text
tower (12 layers, width 768), with a 4-layer, width-256 transformer instead of 22 layers of width 1,024; ``full``:
aMUSEd-256's transformer sizes (for a GPU). Prints one JSON line per setting and a Markdown table, plus the cost of one
search update: (4T - 2) forward differences + 1 new point = 47 FID evaluations at T = 12, each of ``--fid_samples``.

    python scripts/benchmark_amused.py [--size reduced|full] [--batches 4 8] [--dtypes fp32 bf16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.commands.benchmark_cases import median_seconds  # noqa: E402
from lit_nat.models.amused import AMUSED_256_TRANSFORMER, AMUSED_REDUCED_TRANSFORMER  # noqa: E402
from lit_nat.models.amused_folder import save_random_amused  # noqa: E402
from lit_nat.training.importer import amused_module  # noqa: E402

PROMPT = "a red double decker bus driving down a city street next to a tall building"
#: aMUSEd-256's transformer (its config.json) and a reduced one of the same layout for a quick look
SIZES = {"full": AMUSED_256_TRANSFORMER, "reduced": AMUSED_REDUCED_TRANSFORMER}


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call (benchmark's own timer)."""
    return median_seconds(fn, 1, repeats, torch.device(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="reduced", choices=sorted(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fid_samples", type=int, default=10_000, help="images per FID evaluation of the search")
    args = parser.parse_args()
    from diffusers import AmusedPipeline

    warnings.filterwarnings("ignore")  # the deprecated pipeline's notice, accelerate's advice
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_amused(Path(tmp) / "amused", grid=16, codebook=8192, vq_levels=5, text_width=768,
                                    text_layers=12, text_heads=12, transformer=SIZES[args.size])
        ours = amused_module(folder).to(args.device)
        params = sum(p.numel() for p in ours.backbone.parameters())
        for dtype in args.dtypes:
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            pipe = AmusedPipeline.from_pretrained(folder, torch_dtype=torch_dtype).to(args.device)
            pipe.set_progress_bar_config(disable=True)
            for batch in args.batches:
                prompts = [PROMPT] * batch

                def run_ours() -> None:
                    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if dtype == "bf16" \
                        else contextlib.nullcontext()  # fmt: skip
                    with torch.inference_mode(), autocast:  # as `sample --trainer.precision bf16-mixed`
                        ours.generate(prompts=prompts, seed=0)

                def run_pipeline() -> None:
                    generator = torch.Generator(args.device).manual_seed(0)
                    pipe(prompts, generator=generator, output_type="latent")  # 12 steps, g = 10, temperature (2, 0)

                seconds = {"lit_nat": timed(run_ours, args.repeats, args.device),
                           "AmusedPipeline": timed(run_pipeline, args.repeats, args.device)}  # fmt: skip
                row = {"size": args.size, "params": params, "device": args.device, "dtype": dtype, "batch": batch,
                       **{f"{k}_s": round(v, 3) for k, v in seconds.items()},
                       **{f"{k}_img_per_s": round(batch / v, 2) for k, v in seconds.items()},
                       "speedup": round(seconds["AmusedPipeline"] / seconds["lit_nat"], 2)}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| dtype | batch | lit_nat img/s | AmusedPipeline img/s | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['lit_nat_img_per_s']} | {r['AmusedPipeline_img_per_s']} | "
              f"{r['speedup']}x |")  # fmt: skip
    best = max(r["lit_nat_img_per_s"] for r in rows)
    images = 47 * args.fid_samples
    print(f"\nsearch update at T = 12: 47 FID evaluations x {args.fid_samples} images = {images:,} images; at "
          f"{best} img/s ({args.size}, {args.device}) {images / best / 3600:.1f} h")


if __name__ == "__main__":
    main()
