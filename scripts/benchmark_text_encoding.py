"""What on-the-fly text encoding costs a text-to-image training step, against cached text-encoder states.

Builds a CLIP ViT-L/14-sized text tower with random weights (12 layers, width 768, 77 tokens: the architecture of
``openai/clip-vit-large-patch14``'s text encoder, from its config alone, nothing downloaded) and a text-conditioned
AutoNAT-S, then times training steps (forward, backward, AdamW) on random tokens with (a) the prompts' states given,
as cached shards provide them, and (b) the prompts encoded by the frozen tower inside every step. Prints one JSON line
per setting; the difference is the cost of not caching (CC3M's ~390 GB of CLIP-L states).

    python scripts/benchmark_text_encoding.py [--batch 8] [--steps 3] [--device cpu] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.conditioning import CLIPTextEncoder, save_random_clip  # noqa: E402
from lit_nat.data.shards import encode_text_states  # noqa: E402
from lit_nat.training.module import NATModule  # noqa: E402

PROMPT = "a red double decker bus driving down a city street next to a tall building"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--arch", default="autonat-s")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_clip(Path(tmp) / "clip")  # CLIP-L's text tower, random
        encoder = CLIPTextEncoder(str(folder), dtype=args.dtype).to(args.device)
        config = encoder.config()
        model = NATModule(arch=args.arch, codebook_size=1024, grid_size=16, num_classes=1, text_encoder=config)
        model = model.to(args.device)
        optimizer = torch.optim.AdamW(model.backbone.parameters(), lr=1e-4)
        ids = torch.randint(0, 1024, (args.batch, 256), device=args.device)
        prompts = [PROMPT] * args.batch
        cached = encoder.encode(prompts)
        params = sum(p.numel() for p in encoder.parameters())

        def step(on_the_fly: bool) -> None:
            condition = encoder.encode(prompts) if on_the_fly else cached
            masked = ids.masked_fill(torch.rand(ids.shape, device=args.device) < 0.7, model.mask_id)
            logits, _ = model.backbone(masked, condition)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        encoder.encode(prompts)  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            encoder.encode(prompts)
        encode_rate = args.batch * args.steps / (time.perf_counter() - start)
        one = encoder.encode(["a cat"] * 5)  # an image's 5 COCO captions, as text.npz stores them
        stored = len(encode_text_states({"tokens": one.tokens, "mask": one.mask, "pooled": one.pooled}))
        print(json.dumps({"text_encoder_params_m": round(params / 1e6, 1), "device": args.device,
                          "text_dtype": args.dtype, "captions_per_s": round(encode_rate, 1),
                          "text_npz_bytes_per_caption": stored // 5}), flush=True)  # fmt: skip
        for on_the_fly in (False, True):
            step(on_the_fly)  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                step(on_the_fly)
            seconds = (time.perf_counter() - start) / args.steps
            print(json.dumps({"arch": args.arch, "batch": args.batch, "device": args.device, "text_dtype": args.dtype,
                              "text_encoder_params_m": round(params / 1e6, 1),
                              "text": "on the fly" if on_the_fly else "cached", "seconds_per_step": round(seconds, 3),
                              "images_per_s": round(args.batch / seconds, 2)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
