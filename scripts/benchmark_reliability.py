"""What reliability costs, in numbers (the figures of docs/measurements.md).

- resume: how fast a resumed epoch skips the batches consumed before the kill (raw tar reading, no decoding), in
  samples/s, on synthetic shards of the ImageNet-256 token format (256 uint16 ids + label, 2,560 B per sample);
- the non-finite guard: the fused gradient norm + one host read per optimiser step, for a backbone of the registry;
- checkpoints: writing one (online + EMA weights + AdamW moments) atomically with lit_nat vs Lightning's own writer,
  and reading it back: torch.load alone, the zip CRC check alone, and read_checkpoint (both);
- shard integrity: what checking a shard against its tokenize record (sha256, once per shard per process) costs next
  to reading it, on one shard of ``--shard_mb`` MB of the same format, from the page cache ("warm") and with the
  shard's pages evicted first ("cold": ``posix_fadvise(DONTNEED)`` on that file only).

    python scripts/benchmark_reliability.py [--arch autonat-s] [--samples 20000] [--device cpu] [--shard_mb 1024]
        [--cases resume guard checkpoint shard]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save

import lit_nat.core.io as io_module
from lit_nat.core.checkpointing import read_checkpoint, save_checkpoint_file
from lit_nat.core.io import file_sha256, verify_archive
from lit_nat.data import ShardWriter, TokenShardDataset, read_metadata
from lit_nat.data.integrity import _VERIFIED, record_of
from lit_nat.data.samples import read_range
from lit_nat.data.shards import make_sample
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
    out.update(checkpoint_read(folder / "lit_nat_atomic_s.ckpt"))
    return out


def checkpoint_read(path: Path) -> dict[str, float]:
    """Reading it back, warm (page cache): torch.load alone, the CRC check alone, and read_checkpoint (both)."""
    out = {}
    for label, read in (("torch_load_s", lambda: torch.load(path, map_location="cpu", weights_only=True)),
                        ("crc_check_s", lambda: verify_archive(path)),
                        ("read_checkpoint_s", lambda: read_checkpoint(path))):  # fmt: skip
        io_module._VERIFIED.clear()  # (the check is once per file per process: measure it every time)
        read()  # warm the page cache, then time
        io_module._VERIFIED.clear()
        start = time.perf_counter()
        read()
        out[label] = round(time.perf_counter() - start, 2)
    return out


def _tar_sample(sample: dict) -> bytes:
    """One sample's members as raw tar blocks (USTAR header, data padded to 512 B), as the shard format stores them."""
    out = b""
    for field, data in sample.items():
        if field != "__key__":
            info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
            info.size, info.mtime = len(data), 0
            out += info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + data + bytes(-len(data) % 512)
    return out


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (only this file's: nothing else on the machine is disturbed)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shard_integrity_cost(root: Path, megabytes: int) -> dict[str, float]:
    """MB/s of sha256 over a shard against reading it (raw bytes and the reader's tar parse), warm and cold."""
    rng = np.random.default_rng(0)
    space = {"num_tokens": 256, "codebook_size": 1024, "num_classes": 1000}
    block = b"".join(_tar_sample(make_sample(f"{i:09d}", rng.integers(0, 1024, 256), int(rng.integers(1000)), **space))
                     for i in range(4096))  # fmt: skip
    samples = megabytes * 2**20 // len(block) * 4096
    root.mkdir(parents=True)
    shard = root / "train-000000.tar"
    with open(shard, "wb") as f:  # a block of 4,096 samples again and again (a Python tar writer would take minutes)
        for _ in range(samples // 4096):
            f.write(block)
        f.write(bytes(1024))  # the end-of-archive blocks
    size, digest = file_sha256(shard)
    record = {"name": shard.name, "bytes": size, "sha256": digest, "num_images": samples, "num_samples": samples,
              "skipped": []}  # fmt: skip
    record_of(shard).write_text(json.dumps(record))
    mb = size / 2**20

    def raw_read() -> None:
        with open(shard, "rb") as f:
            while f.read(1 << 20):  # the reader's own chunk size
                pass

    def read() -> None:  # the reader's pass over every sample (tar parse, no decoding); checks the shard first
        for _ in read_range(shard, 0, samples):
            pass

    out: dict[str, float] = {"shard_mb": round(mb)}
    for cache in ("warm", "cold"):
        for label, fn in (("sha256", lambda: file_sha256(shard)), ("raw_read", raw_read)):
            _evict(shard) if cache == "cold" else raw_read()  # (warm: in the page cache)
            out[f"{cache}_{label}_mb_per_s"] = round(mb / _timed(fn))
    _evict(shard)
    _VERIFIED.clear()
    first = _timed(read)  # checked, then read: a process's first pass over the shard
    later = _timed(read)  # the verdict is cached: no second hash
    out.update(cold_first_read_with_check_s=round(first, 2), warm_later_read_s=round(later, 2),
               tar_read_mb_per_s=round(mb / later))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="autonat-s")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shard_mb", type=int, default=1024, help="size of the shard of the integrity case")
    parser.add_argument("--cases", nargs="+", default=["resume", "guard", "checkpoint", "shard"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = Path(tmp)
        if "resume" in args.cases:
            print({"resume": resume_skip_rate(tmp / "shards", args.samples)})
        if "guard" in args.cases:
            print({"guard": {"arch": args.arch, "device": args.device, **guard_cost(args.arch, args.device)}})
        if "checkpoint" in args.cases:
            print({"checkpoint": {"arch": args.arch, **checkpoint_write(args.arch, tmp)}})
        if "shard" in args.cases:
            print({"shard_integrity": shard_integrity_cost(tmp / "integrity", args.shard_mb)})


if __name__ == "__main__":
    main()
