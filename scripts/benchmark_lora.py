"""LoRA against full fine-tuning of the aMUSEd-256 backbone shape on CPU: step time, peak memory, what trains and
what is saved.

The backbone is lit_nat's ``AmusedBackbone`` (diffusers' ``UVit2DModel``) at aMUSEd-256's sizes (22 layers of width
1,024, 16 x 16 tokens, 8,192 codes, CLIP-L-sized text states), with random weights: nothing is downloaded. Each case
runs in a fresh subprocess and holds what a lit_nat training run holds: the backbone, the EMA of what trains (full: a
second copy of the backbone; LoRA: of the adapters, the frozen base being shared) and AdamW over what trains. One
training step = forward on a batch of masked tokens with random text states, the masked-token cross-entropy, backward,
AdamW, EMA. Reported per case:

- ``step_s``: median wall time of ``--steps`` steps after one warm-up step;
- ``peak_rss_gb``: the subprocess's peak resident memory (``ru_maxrss``), model building included;
- ``trainable``: parameters that train (and are in the optimiser);
- ``checkpoint_mb``: tensor bytes a checkpoint holds (full: online + EMA weights + two AdamW moments; LoRA: the same
  of the adapters alone); ``adapter_mb``: LoRA's ``adapter_model.safetensors`` (its serialised size).

    python scripts/benchmark_lora.py [--batch 2] [--steps 3] [--rank 8] [--size full|reduced] [--cases full lora]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat.models.amused import AMUSED_256_TRANSFORMER, AMUSED_REDUCED_TRANSFORMER  # noqa: E402

#: aMUSEd-256's transformer (its config.json) and a reduced one of the same layout for a quick look
SIZES = {"full": AMUSED_256_TRANSFORMER, "reduced": AMUSED_REDUCED_TRANSFORMER}


def run_case(case: str, size: str, batch: int, steps: int, rank: int) -> dict:
    """One case in this process (called in a fresh subprocess by :func:`main`)."""
    import torch
    from safetensors.torch import save as safetensors_bytes
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from lit_nat.conditioning.condition import TextCondition
    from lit_nat.models.amused import AmusedBackbone
    from lit_nat.training.lora import LoraSettings, adapter_parameters, adapter_state, add_adapters

    torch.manual_seed(0)
    transformer = SIZES[size]
    backbone = AmusedBackbone(codebook_size=8192, grid_size=16, num_classes=1, transformer=transformer)
    out = {"case": case, "size": size, "batch": batch, "params": sum(p.numel() for p in backbone.parameters())}
    if case == "lora":
        add_adapters(backbone, LoraSettings(rank=rank, alpha=rank))
        trained = adapter_parameters(backbone)
        out["adapter_mb"] = len(safetensors_bytes(adapter_state(backbone))) / 2**20
    else:
        trained = list(backbone.parameters())
    ema = [p.detach().clone() for p in trained]  # full: a second backbone's worth; LoRA: the adapters alone
    optimizer = torch.optim.AdamW(trained, lr=1e-4, betas=(0.99, 0.99), weight_decay=0.03)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 8192, (batch, 256), generator=generator)
    masked = torch.rand(batch, 256, generator=generator) < 0.5
    condition = TextCondition(torch.randn(batch, 77, 768, generator=generator), torch.ones(batch, 77, dtype=torch.bool),
                              torch.randn(batch, 768, generator=generator))  # fmt: skip
    backbone.train()

    def step() -> float:
        start = time.perf_counter()
        logits, _ = backbone(ids.masked_fill(masked, 8192), condition)
        loss = torch.nn.functional.cross_entropy(logits[masked], ids[masked])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        get_ema_multi_avg_fn(0.9999)(ema, [p.detach() for p in trained], None)
        return time.perf_counter() - start

    step()  # warm-up: allocator, AdamW's moments
    times = [step() for _ in range(steps)]
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    weights = sum(p.numel() * p.element_size() for p in trained)
    out.update(trainable=sum(p.numel() for p in trained), step_s=statistics.median(times), step_times=times,
               checkpoint_mb=(2 * weights + moments) / 2**20,
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--cases", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # (the subprocess's own case)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.batch, args.steps, args.rank)))
        return
    rows = []
    for case in args.cases:  # a fresh process each: ru_maxrss is the case's own peak
        command = [sys.executable, __file__, "--case", case, "--size", args.size, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--rank", str(args.rank)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | trainable params | step (s) | peak RSS (GB) | checkpoint tensors (MB) | adapter file (MB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        adapter = f"{row['adapter_mb']:.2f}" if "adapter_mb" in row else "-"
        print(f"| {row['case']} | {row['trainable']:,} of {row['params']:,} | {row['step_s']:.2f} | "
              f"{row['peak_rss_gb']:.2f} | {row['checkpoint_mb']:.1f} | {adapter} |")  # fmt: skip


if __name__ == "__main__":
    main()
