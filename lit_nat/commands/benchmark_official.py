"""The official ENAT sampling code timed beside ours: ``python -m lit_nat benchmark --official_enat PATH``.

``PATH`` is the user's clone of LeapLabTHU/ENAT. Its ``DiT`` is built at the size of the ENAT being benchmarked (random
weights: the time does not depend on them) and its ``NATSchedule.generate`` runs the same batch, steps and precision
as our sampling case, with the release's ImageNet-256 sampling arguments (``--cfg_scale 2.5 --mask_temp 1.5
--samp_temp 6``). Nothing of that code is copied into lit_nat: it is imported from ``PATH``, in a child process, because
its ``libs``, ``timm`` and ``taming`` packages would shadow installed ones. The child measures the matmul peak next to
each repeat as the parent does, and prints one JSON line.

Differences worth knowing when reading the numbers: the official loop runs the conditional and the unconditional
branch as two forwards of B rows (ours: one of 2B), draws tokens with ``torch.distributions.Categorical`` and the
re-masking noise with NumPy on the host, and always reuses features. Its GFLOPs per image equal ours (the same
blocks on the same tokens; its unused ``prev_embedder`` costs nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

from lit_nat.commands import benchmark_cases as cases
from lit_nat.core.errors import UsageError

#: the release's ImageNet-256 sampling arguments (its README's evaluation command)
RELEASE_SAMPLING = {"cfg_scale": 2.5, "mask_temp": 1.5, "samp_temp": 6.0}
#: the class id the official loop uses for the unconditional branch (hard-coded there)
OFFICIAL_NULL_CLASS = 1000


def check_official_root(path: str) -> Path:
    root = Path(path)
    for part in ("libs/models.py", "libs/nat_misc.py", "timm/models/vision_transformer.py"):
        if not (root / part).is_file():
            raise UsageError(f"benchmark: --official_enat {path}: no {part} there; give a clone of LeapLabTHU/ENAT")
    return root


def official_spec(target: cases.Target) -> dict[str, Any]:
    """The official ``DiT`` arguments of the same size as ``target``'s ENAT (a Skip where the official loop cannot
    run it)."""
    backbone = target.backbone
    if not target.reuses or not hasattr(backbone, "encoder_layers"):
        raise cases.Skip(f"the official ENAT code runs ENAT backbones only, not {type(backbone).__name__}")
    if backbone.num_classes != OFFICIAL_NULL_CLASS or backbone.grid_size[0] != backbone.grid_size[1]:
        raise cases.Skip("the official ENAT loop needs 1000 classes (its null class is 1000) on a square grid")
    return dict(input_size=backbone.grid_size[0], hidden_size=backbone.width, num_heads=backbone.num_heads,
                mlp_ratio=backbone.blocks[0].mlp.fc1.out_features / backbone.width,
                codebook_size=backbone.codebook_size,
                enc_dec=[backbone.encoder_layers, backbone.decoder_layers])  # fmt: skip


def sampling(target: cases.Target, root: Path, *, batch: int, steps: int, dtype: str, device: torch.device,
             warmup: int, repeats: int, matmul_size: int, adjacent_peak: bool) -> dict[str, Any]:  # fmt: skip
    """Our sampling case's numbers for the official loop, measured in a child process."""
    if dtype == "bf16-true":
        raise cases.Skip("the official code samples in float32 or under autocast; bf16-true is lit_nat's")
    request = dict(root=str(root), model=official_spec(target), batch=batch, steps=steps, dtype=dtype,
                   device=str(device), warmup=warmup, repeats=repeats, matmul_size=matmul_size,
                   adjacent_peak=adjacent_peak)  # fmt: skip
    child = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)], capture_output=True, text=True)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise cases.Skip(f"the official code at {root} failed: {last}")
    result = json.loads(lines[-1])
    gflops = cases.sampling_gflops(target, steps, True)
    return {"seconds": result["seconds"], "images": batch, "gflops_per_image": gflops,
            "adjacent_peak_tflops": result["peak"]}  # fmt: skip


def run_official(request: dict[str, Any]) -> dict[str, float | None]:
    """In the child: import the official code from ``root``, build its DiT and time its ``generate``."""
    sys.path.insert(0, request["root"])
    from libs.models import DiT  # the user's clone of LeapLabTHU/ENAT
    from libs.nat_misc import NATSchedule

    spec, device, batch = dict(request["model"]), torch.device(request["device"]), request["batch"]
    args = types.SimpleNamespace(enc_dec=spec.pop("enc_dec"), seq_len=spec["input_size"] ** 2, **RELEASE_SAMPLING)
    torch.manual_seed(0)
    nnet = DiT(depth=sum(args.enc_dec), num_classes=OFFICIAL_NULL_CLASS, args=args, **spec).to(device).eval()
    schedule = NATSchedule(codebook_size=spec["codebook_size"], device=device, args=args)
    labels = torch.arange(batch, device=device) % OFFICIAL_NULL_CLASS
    dtype = request["dtype"]

    def run() -> None:  # as its eval_step: no_grad, the accelerator's autocast
        with torch.no_grad(), torch.autocast(device.type, dtype=cases.DTYPES[dtype], enabled=dtype != "fp32"):
            schedule.generate(request["steps"], batch, nnet, lambda ids: ids, spec["input_size"], context=labels)

    probe = cases.matmul_probe(request["matmul_size"], dtype, device) if request["adjacent_peak"] else None
    seconds, peak = cases.paired_timing(run, probe, request["warmup"], request["repeats"], device)
    return {"seconds": seconds, "peak": peak}


if __name__ == "__main__":
    print(json.dumps(run_official(json.loads(sys.argv[1]))), flush=True)
