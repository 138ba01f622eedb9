"""Editing real digits with the digits demo's class-conditional model (the figures and grid of docs/editing.md).

    python scripts/digits_editing.py [--ckpt runs/demo_digits/tensorboard/version_0/checkpoints/last.ckpt]
        [--data data/digits] [--seeds 3] [--out runs/digits_editing]

Without a checkpoint it first trains one with `python -m lit_nat fit --config configs/demo_digits.yaml` (4.5 min).
On every real validation digit (180, 18 per class), with ``--seeds`` seeds each:

- inpaint: keep the top half, regenerate the bottom half with the digit's true label;
- another label: the same, but with another label (true + 1 + seed mod 9, so every other digit is asked for);
- outpaint: keep the centre 4x4 pixels, regenerate the border with the true label;
- plain generation with the true label, for reference.

The digits classifier (96.7% on the real val digits) reads each result; reported: the share classified as the
requested label. Writes ``summary.json`` and ``grid.png`` (rows: digits; columns: input, the kept part, inpaint,
another label, outpaint) into ``--out``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_nat import load_model  # noqa: E402
from lit_nat.core.io import atomic_write, atomic_write_json  # noqa: E402
from lit_nat.data import TokenShardDataModule  # noqa: E402
from lit_nat.demos.digits import CLASSIFIER_FILE  # noqa: E402
from lit_nat.generation.editing import border_mask, half_mask, overlay, token_keep_mask  # noqa: E402
from lit_nat.metrics.extractors import build_extractor  # noqa: E402

DEMO_CKPT = ROOT / "runs/demo_digits/tensorboard/version_0/checkpoints/last.ckpt"


@torch.no_grad()
def edit(model, ids, keep, labels, seed):
    return model.decode(model.generate(labels, seed=seed, init_ids=ids, keep_mask=keep).ids).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(DEMO_CKPT))
    parser.add_argument("--data", default=str(ROOT / "data/digits"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs/digits_editing"))
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():
        print(f"no checkpoint at {args.ckpt}: training the digits demo first", flush=True)
        subprocess.run([sys.executable, "-m", "lit_nat", "fit", "--config", "configs/demo_digits.yaml"], cwd=ROOT,
                       check=True)  # fmt: skip
    model = load_model(args.ckpt)
    data = TokenShardDataModule(args.data, prepare="digits", batch_size=180, num_workers=0)
    batch = next(iter(data.val_dataloader()))
    ids, labels = batch["ids"], batch["label"]
    images = model.decode(ids).float()
    classifier = build_extractor("digits", Path(args.data) / CLASSIFIER_FILE)
    grid = model.backbone.grid_size
    top = token_keep_mask(half_mask((8, 8), "top"), grid).expand(len(ids), -1)
    centre = token_keep_mask(border_mask((8, 8), 0.25), grid).expand(len(ids), -1)
    blank = torch.zeros_like(top)
    tasks = {
        "inpaint bottom half, true label": (top, lambda s: labels),
        "inpaint bottom half, another label": (top, lambda s: (labels + 1 + s % 9) % 10),
        "outpaint from the centre 4x4, true label": (centre, lambda s: labels),
        "plain generation, true label": (blank, lambda s: labels),
    }
    summary, columns = {"checkpoint": args.ckpt, "images": len(ids), "seeds": args.seeds, "tasks": {}}, {}
    for name, (keep, wanted) in tasks.items():
        correct = []
        for seed in range(args.seeds):
            requested = wanted(seed)
            result = edit(model, ids, keep, requested, seed)
            correct.append((classifier(result)[1].argmax(1) == requested).float())
            if seed == 0:
                columns[name] = result
        share = float(torch.cat(correct).mean())
        summary["tasks"][name] = {"classified_as_requested": round(share, 4), "kept_tokens": int(keep[0].sum())}
        print(f"{name:44s} {100 * share:5.1f}% classified as the requested label", flush=True)
    real = float((classifier(images)[1].argmax(1) == labels).float().mean())
    summary["real_val_accuracy"] = round(real, 4)
    print(f"{'(the real val digits)':44s} {100 * real:5.1f}%")
    out = Path(args.out)
    rows = torch.tensor([int((labels == c).nonzero()[0]) for c in range(10)])  # the first val digit of each class
    tiles = [images[rows], overlay(images[rows], top[rows], grid)]
    tiles += [columns[name][rows] for name in list(tasks)[:3]]
    stacked = torch.stack([t.expand(-1, 3, -1, -1) for t in tiles], 1).flatten(0, 1)
    stacked = torch.nn.functional.interpolate(stacked, scale_factor=6, mode="nearest")
    atomic_write(out / "grid.png", lambda f: save_image(make_grid(stacked, nrow=len(tiles), padding=2, pad_value=1.0),
                                                        f, format="PNG"))  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    print(f"-> {out / 'summary.json'}, {out / 'grid.png'}")


if __name__ == "__main__":
    main()
