"""Reveal policies side by side on a trained digits checkpoint: digits-FID and IS of each policy at T = 4, 8, 16.

    python scripts/compare_reveal_policies.py --ckpt runs/demo_digits/tensorboard/version_0/checkpoints/last.ckpt \
        --data data/digits --out runs/reveal_policies

Every case is ``python -m lit_nat sample`` (200 class-balanced images, seed 0) then ``python -m lit_nat evaluate``
with the digits extractor against the digits' val statistics (the validation protocol, through ADM's uint8 layout).
The schedules are the demo's heuristic one (tau2 = 1 annealed, guidance 1) at T steps under each policy, and TiTok's
randomized temperature (tau0 = 1) for the ``titok`` row. Prints a markdown table; writes results.json (atomic).
Text checkpoints take ``--prompts_file`` (one prompt per line, cycled) instead of labels.

With ``--search_updates N --config CONFIG`` each policy's schedule is also searched (``python -m lit_nat search``, N
updates, its FID on ``--search_samples`` images of the config's evaluation; the search keeps the policy) and its
``best.yaml`` is evaluated by the same protocol as a "(searched)" row; a killed run resumes each search. With
``--heldout N`` every row also gets the FID/IS of N other images (seed 1; the search's objective sees seed 0's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.core.io import atomic_write_text
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models.flops import generation_flops

POLICIES = {
    "confidence": lambda t: GenerationSchedule.preset("heuristic", steps=t, remask_temperature=1.0, guidance=1.0),
    "halton": lambda t: GenerationSchedule.preset("heuristic", steps=t, remask_temperature=1.0, guidance=1.0,
                                                  reveal="halton"),  # fmt: skip
    "halton_roll": lambda t: GenerationSchedule.preset("heuristic", steps=t, remask_temperature=1.0, guidance=1.0,
                                                       reveal="halton_roll"),  # fmt: skip
    "random": lambda t: GenerationSchedule.preset("heuristic", steps=t, remask_temperature=1.0, guidance=1.0,
                                                  reveal="random"),  # fmt: skip
    "titok": lambda t: GenerationSchedule.preset("titok", steps=t, randomize_temperature=1.0, guidance=1.0),
}


def run_case(args: argparse.Namespace, name: str, steps: int, out: Path) -> dict:
    return evaluate_schedule(args, name, steps, out, POLICIES[name](steps).save(out / f"{name}_T{steps}.yaml"))


def run_search(args: argparse.Namespace, name: str, steps: int, out: Path) -> dict:
    """The policy's schedule searched for ``--search_updates`` updates, then evaluated like the others."""
    start = POLICIES[name](steps).save(out / f"{name}_T{steps}.yaml")
    folder = out / f"search_{name}_T{steps}"
    main(["search", "--config", args.config, "--ckpt_path", args.ckpt, "--schedule", str(start), "--updates",
          str(args.search_updates), "--num_samples", str(args.search_samples), "--out", str(folder),
          "--backtrack", str(args.backtrack)])  # fmt: skip
    return evaluate_schedule(args, f"{name} (searched)", steps, out, folder / "best.yaml")


def evaluate_schedule(args: argparse.Namespace, name: str, steps: int, out: Path, schedule_file: Path) -> dict:
    schedule = GenerationSchedule.load(schedule_file)
    stem = f"{name.replace(' (searched)', '_searched')}_T{steps}"
    fid, inception = fid_and_is(args, schedule_file, out / f"{stem}.npz", num=200, seed=0)
    model = load_model(args.ckpt)
    guided = any(g != 0 for g in schedule.guidance)
    gflops = sum(generation_flops(model.ema_backbone, schedule, guided)) / 1e9
    row = {"policy": name, "steps": steps, "fid": fid, "is": inception, "gflops_per_image": gflops}
    if args.heldout:  # other images than the ones a search saw (its objective is seed 0's 200)
        row["fid_heldout"], row["is_heldout"] = fid_and_is(args, schedule_file, out / "heldout" / f"{stem}.npz",
                                                           num=args.heldout, seed=1)  # fmt: skip
    return row


def fid_and_is(args: argparse.Namespace, schedule_file: Path, samples: Path, *, num: int, seed: int) -> tuple:
    """``sample`` ``num`` images of ``schedule_file`` from ``seed``, then ``evaluate`` them: (digits-FID, IS)."""
    condition = ["--prompts_file", args.prompts_file] if args.prompts_file else []
    main(["sample", "--ckpt_path", args.ckpt, "--schedule", str(schedule_file), "--num_samples", str(num),
          "--batch_size", str(min(num, 500)), "--seed", str(seed), "--out", str(samples), "--overwrite", "true",
          *condition])  # fmt: skip
    report = samples.with_suffix(".eval.json")
    main(["evaluate", "--samples", str(samples), "--reference", f"{args.data}/digits_fid_stats_val.npz",
          "--extractor", "digits", "--weights_path", f"{args.data}/digits_classifier.pt", "--out", str(report),
          "--paper_samples", str(num), "--precision_recall", "false", "--device", "cpu"])  # fmt: skip
    result = json.loads(report.read_text())
    return result["fid"], result["inception_score"]["single_split"]


def main_script() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", default="data/digits", help="the digits data root (classifier, statistics)")
    parser.add_argument("--prompts_file", default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--out", default="runs/reveal_policies")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--search_updates", type=int, default=0, help="also search each policy's schedule")
    parser.add_argument("--search_samples", type=int, default=200, help="images per FID of the search")
    parser.add_argument("--backtrack", type=int, default=0, help="the search's step halvings (search --backtrack)")
    parser.add_argument("--config", default="configs/demo_digits.yaml", help="the search's evaluation")
    parser.add_argument("--heldout", type=int, default=0, help="also FID/IS of this many images from seed 1")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.time()
    for steps in args.steps:
        for name in args.policies:
            rows.append(run_case(args, name, steps, out))
            print(json.dumps(rows[-1]), flush=True)
            if args.search_updates:
                rows.append(run_search(args, name, steps, out))
                print(json.dumps(rows[-1]), flush=True)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    print(f"\n{len(rows)} cases in {time.time() - start:.0f} s\n")
    print("| policy | T | digits-FID | IS | held out: digits-FID | IS | GFLOPs/image |\n|---|---|---|---|---|---|---|")
    for r in rows:
        heldout = f"{r['fid_heldout']:.2f} | {r['is_heldout']:.2f}" if "fid_heldout" in r else " | "
        cells = [r["policy"], r["steps"], f"{r['fid']:.2f}", f"{r['is']:.2f}", heldout, f"{r['gflops_per_image']:.2f}"]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main_script()
