"""What reliability costs, in numbers (the README's "Reliability" figures).

- resume: how fast a resumed epoch skips the batches consumed before the kill (raw tar reading, no decoding), in
  samples/s, on synthetic shards of the ImageNet-256 token format (256 uint16 ids + label, 2,560 B per sample);
- the non-finite guard: the fused gradient norm + one host read per optimiser step, for a backbone of the registry;
- checkpoints: writing one (online + EMA weights + AdamW moments) atomically with lit_nat vs Lightning's own writer.

    python scripts/benchmark_reliability.py [--arch autonat-s] [--samples 20000] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save

from lit_nat.checkpointing import save_checkpoint_file
from lit_nat.data import ShardWriter, TokenShardDataset, read_metadata
from lit_nat.models import build_backbone


def resume_skip_rate(root: Path, samples: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    tokenizer = {"name": "vqgan", "checkpoint": None, "image_size": 256}
    with ShardWriter(root, "train", codebook_size=1024, grid_size=(16, 16), num_classes=1000,
                     tokenizer_config=tokenizer, samples_per_shard=5000) as writer:  # fmt: skip
        for i in range(samples):
            writer.write(rng.integers(0, 1024, 256), int(rng.integers(1000)))
    info = read_metadata(root).splits["train"]
    batch = 128
    dataset = TokenShardDataset(root, [s.name for s in info.shards], info.shard_sizes, batch_size=batch,
                                shuffle_buffer=1000)  # fmt: skip
    batches = len(dataset)
    out = {}
    for label, skip in (("skipped", batches), ("decoded", 0)):
        dataset.set_epoch(0, skip)
        start = time.perf_counter()
        yielded = sum(1 for _ in dataset)
        seconds = time.perf_counter() - start
        assert yielded == batches - skip
        out[f"{label}_samples_per_s"] = round(batches * batch / seconds)
    return out


def guard_cost(arch: str, device: str, repeats: int = 20) -> dict[str, float]:
    backbone = build_backbone(arch, codebook_size=1024, grid_size=16, num_classes=1000).to(device)
    for p in backbone.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in backbone.parameters()]
    bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    seconds = (time.perf_counter() - start) / repeats
    return {"parameters_m": round(sum(p.numel() for p in grads) / 1e6, 1), "guard_ms_per_step": round(1e3 * seconds, 2)}


def checkpoint_write(arch: str, folder: Path) -> dict[str, float]:
    backbone = build_backbone(arch, codebook_size=1024, grid_size=16, num_classes=1000)
    weights = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state = {**weights, **{f"ema_backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}}
    moments = {i: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.tensor(1.0)}
               for i, p in enumerate(backbone.parameters())}  # fmt: skip
    checkpoint = {"state_dict": state, "optimizer_states": [{"state": moments}], "global_step": 1}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    size = buffer.tell()
    out = {"checkpoint_mb": round(size / 2**20)}
    for label, write in (("lit_nat_atomic_s", save_checkpoint_file), ("lightning_s", _atomic_save)):
        path = folder / f"{label}.ckpt"
        start = time.perf_counter()
        write(checkpoint, path)
        out[label] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="autonat-s")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = Path(tmp)
        print({"resume": resume_skip_rate(tmp / "shards", args.samples)})
        print({"guard": {"arch": args.arch, "device": args.device, **guard_cost(args.arch, args.device)}})
        print({"checkpoint": {"arch": args.arch, **checkpoint_write(args.arch, tmp)}})


if __name__ == "__main__":
    main()
