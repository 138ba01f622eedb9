"""AutoNAT's strategy optimisation on the digits, at small scale (the paper's Tables 6a/6b): the whole demonstration.

    python scripts/autonat_digits.py            # about 25 min on a 2-core CPU; `bash scripts/autonat_digits.sh` sets up
    python scripts/autonat_digits.py --quick    # a few minutes: tiny budgets, to check the pipeline (numbers: noise)

Every step is a public command of lit_nat (``fit``, ``search``, ``autonat``, ``validate``) run as a subprocess, and
every step resumes: re-running the script skips what is finished (``DONE`` markers, the searches' ``state.json`` and
the driver's ``autonat_state.json``). Steps, with the config ``configs/autonat_digits.yaml``:

1. **baseline**: one fit with the heuristic training strategy of AutoNAT's Table 1 (the arccos mask-ratio law).
2. **T = 4**: the Algorithm 1 driver (``python -m lit_nat autonat``) from the baseline checkpoint and the heuristic
   4-step schedule; its line search over Beta(alpha, beta) starts at Beta(1, 0.5), the Beta law closest to arccos
   (both densities grow like (1 - r)^-1/2 at r = 1). Round 0's generation search *is* "the generation-strategy search on
   the baseline"; the last round's result is "after the alternating loop".
3. **T = 8**: as the paper does for other settings (Sec. 5, implementation details) the training strategy found at
   T = 4 is kept and only the generation strategy is searched: a search at T = 8 on the baseline (generation search
   only) and on the alternating loop's final checkpoint (both strategies optimised).
4. **held-out evaluation**: the searches minimise the digits-FID of 250 samples with seed 0 (common random numbers);
   the table reports every (model, schedule) pair re-evaluated on 1,000 *other* samples (seed 1), so a schedule that
   merely fits the search's fixed noise would show it.
5. **report**: ``OUT/table.md``, ``OUT/summary.json`` and ``OUT/fid_vs_updates.svg`` (the FID each search
   minimises against its updates).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_nat.generation.schedule import GenerationSchedule  # noqa: E402
from lit_nat.search.report import line_plot, search_curve  # noqa: E402

CONFIG = ROOT / "configs" / "autonat_digits.yaml"
#: the demo's hand-tuned heuristic (Table 1's rules with lambda = 1, k = 1), as configs/demo_digits.yaml uses
HEURISTIC = {"remask_temperature": 1.0, "guidance": 1.0}
START_BETA = (1.0, 0.5)  # the Beta law closest to the arccos law of the baseline

FULL = {
    "fit": [],  # the config's budget
    # FD steps larger than the official 0.01 / 0.1: a 0.01 change of a ratio moves < 1 of the 64 tokens, so the
    # official steps measure nothing here; learning rates tuned so that the FID does not oscillate
    "search": "--ratio_step 0.05 --ratio_lr 0.003 --other_step 0.2 --other_lr 0.03",
    "updates": {4: 8, 8: 6},  # T = 8 updates cost twice the images and 31 instead of 15 evaluations
    "rounds": 2,
    "candidates": 5,  # the start, alpha x2 and /2, beta x2 and /2
    "heldout_samples": 1000,
}
QUICK = {
    "fit": ["--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=2"],
    "search": "--num_samples 50 --ratio_step 0.05 --ratio_lr 0.003 --other_step 0.2 --other_lr 0.03",
    "updates": {4: 1, 8: 1},
    "rounds": 1,
    "candidates": 2,
    "heldout_samples": 100,
}


def run(args: list[str], log: Path) -> None:
    """Run ``python -m lit_nat ARGS``, its output appended to ``log``; a failure stops the demonstration."""
    command = [sys.executable, "-m", "lit_nat", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        status = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        sys.exit(f"autonat_digits: `{shlex.join(command)}` failed (exit {status}); see {log}")


def step(name: str, out: Path, timings: dict[str, float], body) -> None:
    """Run ``body()`` once: a ``DONE`` marker in ``out/name`` skips it on the next run."""
    marker = out / name / "DONE"
    if marker.exists():
        print(f"[{name}] done already", flush=True)
        return
    print(f"[{name}] running ...", flush=True)
    start = time.time()
    body()
    timings[name] = round(time.time() - start, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{timings[name]}\n")
    print(f"[{name}] {timings[name]:.0f} s", flush=True)


def last_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"autonat_digits: no last.ckpt under {run_dir}")
    return found[-1]


def heldout(out: Path, name: str, ckpt: Path, schedule: Path, samples: int) -> float:
    """digits-FID of ``samples`` images with seed 1 (the searches used seed 0) for one (checkpoint, schedule) pair."""
    folder = out / "heldout" / name
    report = folder / "eval_report.json"
    if not report.exists():
        evaluation = folder / "evaluation.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        evaluation.write_text(json.dumps({"trainer": {"callbacks": [{
            "class_path": "lit_nat.callbacks.GenerativeEvaluation",
            "init_args": {"extractor": "digits", "weights_path": "{data_root}/digits_classifier.pt",
                          "reference_stats": "{data_root}/digits_fid_stats_train.npz", "num_samples": samples,
                          "batch_size": 250, "seed": 1, "inception_score": False}}]}}))  # fmt: skip
        run(["validate", "--config", str(CONFIG), "--config", str(evaluation), "--ckpt_path", str(ckpt),
             f"--model.schedule={schedule}", "--model.schedule_params=null", "--model.schedule_source=config",
             "--trainer.logger=false", f"--trainer.default_root_dir={folder}", "--trainer.limit_val_batches=1"],
            out / "logs" / "heldout.log")  # fmt: skip
    return float(json.loads(report.read_text())["fid"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "autonat_digits"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, numbers are noise")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    logs = out / "logs"
    heuristic = {}
    for steps in (4, 8):
        heuristic[steps] = out / "schedules" / f"heuristic_t{steps}.yaml"
        heuristic[steps].parent.mkdir(parents=True, exist_ok=True)
        GenerationSchedule.heuristic(steps=steps, **HEURISTIC).save(heuristic[steps])
    fit_dir = ["--trainer.default_root_dir={}", "--trainer.logger.init_args.save_dir={}"]

    def baseline() -> None:
        run(["fit", "--config", str(CONFIG), *(a.format(out / "baseline") for a in fit_dir), *budget["fit"]],
            logs / "baseline.log")  # fmt: skip

    step("baseline", out, timings, baseline)
    base_ckpt = last_checkpoint(out / "baseline")

    def alternating() -> None:
        run(["autonat", "--fit_config", str(CONFIG), "--out", str(out / "autonat_t4"), "--ckpt_path", str(base_ckpt),
             "--schedule", str(heuristic[4]), "--alpha", str(START_BETA[0]), "--beta", str(START_BETA[1]),
             "--max_rounds", str(budget["rounds"]), "--epsilon", "0.1", "--max_evaluations", str(budget["candidates"]),
             "--search_args", f"--updates {budget['updates'][4]} {budget['search']}",
             "--fit_args", " ".join(budget["fit"])],
            logs / "autonat_t4.log")  # fmt: skip

    step("autonat_t4", out, timings, alternating)
    state = json.loads((out / "autonat_t4" / "autonat_state.json").read_text())
    rounds = state["rounds"]
    final = state["current"]
    final_ckpt = Path(final["checkpoint"])

    def search_t8(name: str, ckpt: Path) -> None:
        run(["search", "--config", str(CONFIG), "--ckpt_path", str(ckpt), "--schedule", str(heuristic[8]),
             "--updates", str(budget["updates"][8]), *shlex.split(budget["search"]), "--out", str(out / name),
             "--trainer.logger=false",
             f"--trainer.default_root_dir={out / name}"], logs / f"{name}.log")  # fmt: skip

    step("search_t8_baseline", out, timings, lambda: search_t8("search_t8_baseline", base_ckpt))
    step("search_t8_alternating", out, timings, lambda: search_t8("search_t8_alternating", final_ckpt))
    timings_file.write_text(json.dumps(timings, indent=1) + "\n")

    # (model, schedule) of every cell of the table
    round0_search = out / "autonat_t4" / "rounds" / "r0" / "search"
    cells = {
        (4, "heuristic"): (base_ckpt, heuristic[4]),
        (4, "generation search"): (base_ckpt, round0_search / "best.yaml"),
        (4, "alternating loop"): (final_ckpt, Path(final["schedule"])),
        (8, "heuristic"): (base_ckpt, heuristic[8]),
        (8, "generation search"): (base_ckpt, out / "search_t8_baseline" / "best.yaml"),
        (8, "alternating loop"): (final_ckpt, out / "search_t8_alternating" / "best.yaml"),
    }
    search_fid = {
        (4, "heuristic"): search_curve(round0_search)[0][1],
        (4, "generation search"): min(f for _, f in search_curve(round0_search)),
        (4, "alternating loop"): float(final["fid"]),
        (8, "heuristic"): search_curve(out / "search_t8_baseline")[0][1],
        (8, "generation search"): min(f for _, f in search_curve(out / "search_t8_baseline")),
        (8, "alternating loop"): min(f for _, f in search_curve(out / "search_t8_alternating")),
    }
    start = time.time()
    results = []
    for (steps, stage), (ckpt, schedule) in cells.items():
        name = f"t{steps}_{stage.replace(' ', '_')}"
        fid = heldout(out, name, ckpt, schedule, budget["heldout_samples"])
        results.append({"steps": steps, "strategy": stage, "search_fid": search_fid[steps, stage], "heldout_fid": fid,
                        "checkpoint": str(ckpt), "schedule": str(schedule)})  # fmt: skip
    timings.setdefault("heldout", round(time.time() - start, 1))
    timings_file.write_text(json.dumps(timings, indent=1) + "\n")

    # FID against search updates: the rounds of the T = 4 loop on one axis, the two T = 8 searches
    series, offset = {}, 0
    for record in rounds:
        curve = search_curve(out / "autonat_t4" / "rounds" / f"r{record['round']}" / "search", offset=offset)
        series[f"T=4, round {record['round']}" + (" (baseline model)" if record["round"] == 0 else "")] = curve
        offset = curve[-1][0]
    series["T=8, baseline model"] = search_curve(out / "search_t8_baseline")
    series["T=8, after the T=4 loop"] = search_curve(out / "search_t8_alternating")
    line_plot(series, out / "fid_vs_updates.svg", title="digits-FID-250 (seed 0) minimised by the search",
                  xlabel="search update", ylabel="digits-FID-250")  # fmt: skip

    loop = [{"round": r["round"], "alpha": r["result"]["alpha"], "beta": r["result"]["beta"], "fid": r["f_new"],
             "candidates": len(r.get("candidates", []))} for r in rounds if r.get("phase") == "done"]  # fmt: skip
    summary = {"results": results, "rounds": loop, "timings_s": timings, "total_s": round(sum(timings.values()), 1),
               "quick": args.quick, "budget": budget}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| T | strategy | digits-FID-250, seed 0 (searched on) | digits-FID-1k, seed 1 (held out) |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['steps']} | {r['strategy']} | {r['search_fid']:.2f} | {r['heldout_fid']:.2f} |" for r in results]
    lines += ["", "| round | Beta(alpha, beta) | F (T=4) |", "|---|---|---|"]
    lines += [f"| {r['round']} | ({r['alpha']:g}, {r['beta']:g}) | {r['fid']:.2f} |" for r in loop]
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    lines += ["", f"total {summary['total_s'] / 60:.1f} min: {spent}"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {out / 'table.md'}, {out / 'summary.json'}, {out / 'fid_vs_updates.svg'}")


if __name__ == "__main__":
    main()
