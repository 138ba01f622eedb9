"""Prompt adherence of a text-to-image digits model: the share of samples for a prompt that the digits classifier
reads as the digit the prompt names (the figure of docs/text_to_image.md).

    python scripts/digits_text_adherence.py runs/demo_digits_text/tensorboard/version_0/checkpoints/last.ckpt \\
        [--data data/digits_text] [--samples 100] [--out adherence.json]

For every digit and every caption template of the training data (``a handwritten digit seven``, ``the number
seven``, ...), ``--samples`` images are generated (EMA weights, the checkpoint's schedule, fixed seeds) and classified.
Also reported: the same for prompts never seen in training (``a drawing of a seven``: known words, new phrasing), and
for the empty prompt (unconditional), whose "accuracy" is chance level (10%) by construction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_nat import load_model  # noqa: E402
from lit_nat.core.io import atomic_write_json  # noqa: E402
from lit_nat.demos.digits import CAPTION_TEMPLATES, CLASSIFIER_FILE, NAMES  # noqa: E402
from lit_nat.metrics.extractors import build_extractor  # noqa: E402

UNSEEN = "a drawing of a {name}"


@torch.no_grad()
def accuracy(model, classifier, prompt_of, samples: int, seed: int) -> tuple[float, list[float]]:
    """Mean and per-digit share of samples classified as the digit ``prompt_of(digit)`` names."""
    per_digit = []
    for digit in range(10):
        ids = model.generate(prompts=[prompt_of(digit)] * samples, seed=seed + 1000 * digit).ids
        _, logits = classifier(model.decode(ids).float())
        per_digit.append(float((logits.argmax(1) == digit).float().mean()))
    return sum(per_digit) / 10, per_digit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="data/digits_text", help="the prepared digits root (its classifier)")
    parser.add_argument("--samples", type=int, default=100, help="samples per (prompt, digit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON report (default: beside the checkpoint)")
    args = parser.parse_args()
    model = load_model(args.checkpoint)
    classifier = build_extractor("digits", Path(args.data) / CLASSIFIER_FILE)
    report = {"checkpoint": args.checkpoint, "samples_per_prompt": args.samples, "templates": {}}
    for template in (*CAPTION_TEMPLATES, UNSEEN):
        mean, per_digit = accuracy(model, classifier, lambda d, t=template: t.format(name=NAMES[d], numeral=d),
                                   args.samples, args.seed)  # fmt: skip
        report["templates"][template] = {"accuracy": round(mean, 4), "per_digit": [round(a, 3) for a in per_digit]}
        print(f"{template:32s} {100 * mean:5.1f}%  per digit {[round(100 * a) for a in per_digit]}", flush=True)
    mean, _ = accuracy(model, classifier, lambda d: "", args.samples, args.seed)
    report["empty_prompt"] = round(mean, 4)
    print(f"{'(empty prompt: chance is 10%)':32s} {100 * mean:5.1f}%")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent.parent / "prompt_adherence.json"
    atomic_write_json(out, report)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
