"""The paper configs run the card: ``fit --config configs/<paper config>.yaml`` logs FID under the module's current
schedule in validation and takes the schedule search's gradient steps between epochs, prints what each costs, stops at
its start when a file is missing, and a SIGKILLed run resumes exactly.

Each config runs at its real token grid, codebook, resolution and text-encoder shape; only sizes and the device are
overridden (a tiny backbone, CPU, 2 epochs of 2 steps, 2 images per FID, a 2-step schedule so that one search update
is 1 + 6 FID evaluations), with random-weight stand-ins for the FID Inception, the reference statistics, the VQGAN and
CLIP (tests/helpers/paper.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics.clip_score import save_random_clip_model
from tests.conftest import PAPER_CONFIGS, REPO
from tests.helpers.checks import assert_same_training_state
from tests.helpers.cli import run_lit_nat
from tests.helpers.paper import (
    CLIP_L_TEXT,
    cpu_overrides,
    grid_of,
    is_text,
    random_inception,
    random_reference,
    random_vqgan,
    shards_for,
)

FLAGSHIP = REPO / "configs" / "enat_l.yaml"
#: every paper config that trains from scratch; enat_l runs in the resume test, amused_cc3m fine-tunes an import
FROM_SCRATCH = [c for c in PAPER_CONFIGS if c.stem not in ("enat_l", "amused_cc3m")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    return {"inception": random_inception(root / "pt_inception-2015-12-05-6726825d.pth"),
            "reference": random_reference(root / "fid_stats.npz"), "vqgan": root / "vqgan.ckpt",
            "clip_score": save_random_clip_model(root / "clip-score")}  # fmt: skip


def paper_args(config: Path, tmp_path: Path, assets: dict[str, Path]) -> list[str]:
    """``fit`` of a shipped paper config with size and device overrides only, 2 epochs of 2 steps, validation (and
    FID) at the end of each epoch, one search update after the first."""
    arch = yaml.safe_load(config.read_text())["model"]["arch"]
    tokenizer = random_vqgan(assets["vqgan"], image_size=16 * grid_of(config))
    root = shards_for(config, tmp_path, tokenizer=tokenizer, text_shape=CLIP_L_TEXT)
    args = ["fit", f"--config={config}", *cpu_overrides(tmp_path, steps=4, arch=arch), f"--data.root={root}",
            "--data.resampled=true", "--data.samples_per_epoch=8",  # (own_images.yaml streams exact epochs by default)
            "--trainer.val_check_interval=2",
            # the config's SampleGrid (its last callback): one picture per class or prompt
            "--trainer.callbacks.samples_per_class=1", "--trainer.callbacks.max_classes=2",
            f"--model.schedule={'enat' if arch.startswith('enat') else 'heuristic'}",
            "--model.schedule_params={steps: 2}",
            f"--evaluation.weights_path={assets['inception']}", f"--evaluation.reference_stats={assets['reference']}",
            "--evaluation.num_samples=2", "--evaluation.batch_size=2",
            "--schedule_search.every_n_epochs=1", "--schedule_search.max_updates=1",
            "--schedule_search.settings.num_samples=2"]
    if is_text(config):
        args.append(f"--evaluation.clip_score_model={assets['clip_score']}")
    return args  # fmt: skip


def check_run(run: Path, text: bool, events: bool = True) -> dict:
    """One search update after epoch 0, FID logged at both validations, the second under the searched schedule."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (state,) = run.rglob("searched_strategies/state.json")
    search = json.loads(state.read_text())["search"]
    search["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in search["history"]]  # (wall time)
    assert search["updates"] == 1 and [h["epoch"] for h in search["history"]] == [0]
    searched = GenerationSchedule.load(state.parent / "search_1.yaml")
    (report,) = run.rglob("eval_report.json")
    report = json.loads(report.read_text())
    assert [h["global_step"] for h in report["history"]] == [2, 4]
    assert all(np.isfinite(h["fid"]) for h in report["history"])
    assert GenerationSchedule.from_dict(report["schedule"]).to_official() == searched.to_official()  # the current one
    assert (report["clip_score"] is not None) == text and (report["inception_score"] is not None) != text
    if events:
        (folder,) = {p.parent for p in run.rglob("events.out.tfevents.*")}
        scalars = EventAccumulator(str(folder)).Reload()
        assert len(scalars.Scalars("val/fid")) == 2 and "search/fid" in scalars.Tags()["scalars"]  # in TensorBoard
    return search


def check_cost_lines(messages: str) -> None:
    assert "GenerativeEvaluation: one FID-2 = 2 images x " in messages and " GFLOPs (generation (2 steps) " in messages
    assert "ScheduleSearch: one update = up to 7 FID evaluations (1 + 4T - 2, T = 2) x 2 images = 14 images" in messages


@pytest.mark.slow
@pytest.mark.parametrize("config", FROM_SCRATCH, ids=[c.stem for c in FROM_SCRATCH])
def test_paper_config_logs_fid_and_takes_one_search_update(config, tmp_path, assets, caplog):
    caplog.set_level(logging.INFO)
    main(paper_args(config, tmp_path, assets))
    check_run(tmp_path / "run", is_text(config))
    check_cost_lines(caplog.text)


# ---------------------------------------------------------------------------------------------------- the flagship
def flagship_config(tmp_path: Path, name: str, kill_at: int | None) -> Path:
    """configs/enat_l.yaml with a checkpoint at every epoch's end and, first in the callbacks, a SIGKILL at ``kill_at``.

    (The epoch-end checkpoint holds the state after that epoch's validation and search update. Lightning resumes a
    checkpoint written at an epoch's last batch, before its epoch-end hooks, in the next epoch without replaying them;
    the shipped step cadences never coincide with an epoch's end within max_steps.)"""
    config = yaml.safe_load(FLAGSHIP.read_text())
    callbacks = config["trainer"]["callbacks"]
    (checkpoint,) = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    del checkpoint["init_args"]["every_n_train_steps"]
    checkpoint["init_args"].update(every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=-1, filename="{step}")
    if kill_at is not None:
        callbacks.insert(0, {"class_path": "tests.helpers.probes.KillAtStep",
                             "init_args": {"step": kill_at, "marker": str(tmp_path / f"{name}.killed")}})  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_process(args: list[str], config: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m lit_nat fit`` of ``config`` with the overrides of ``args`` (its own config and run folder)."""
    rest = [a for a in args[2:] if not a.startswith(("--trainer.default_root_dir", "--trainer.logger"))]
    command = ["fit", f"--config={config}", *rest,
               f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
               "--trainer.logger.init_args.version=0", *extra]  # fmt: skip (a resumed run logs where it left off)
    return run_lit_nat(*command)


@pytest.mark.slow
def test_flagship_logs_fid_searches_and_a_sigkilled_run_resumes_exactly(tmp_path, assets):
    """enat_l: the uninterrupted run is the per-config check; a run SIGKILLed in epoch 1 (after the search update) and
    resumed from its last checkpoint ends with the same weights, optimiser, schedule, search state and FID curve."""
    args = paper_args(FLAGSHIP, tmp_path, assets)
    whole = fit_process(args, flagship_config(tmp_path, "whole", None), tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    search = check_run(tmp_path / "whole", text=False)
    check_cost_lines(whole.stderr + whole.stdout)

    config, run = flagship_config(tmp_path, "killed", kill_at=3), tmp_path / "killed"
    killed = fit_process(args, config, run)
    assert killed.returncode == -9, killed.stderr[-3000:]
    (last,) = run.rglob("last.ckpt")
    assert torch.load(last, weights_only=False)["global_step"] == 2  # epoch 0's end; step 3 was lost
    resumed = fit_process(args, config, run, f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert check_run(run, text=False, events=False) == search  # the same update, from the same FIDs
    final = {name: torch.load(next((tmp_path / name).rglob("last.ckpt")), weights_only=False)
             for name in ("whole", "killed")}  # fmt: skip
    assert_same_training_state(final["killed"], final["whole"])
    assert final["killed"]["generation_schedule"] == final["whole"]["generation_schedule"]


# ---------------------------------------------------------------------------------------------------- at start
def test_missing_reference_or_weights_stop_the_run_at_start_naming_the_command(tmp_path, assets, monkeypatch):
    from lit_nat.training.module import NATModule

    monkeypatch.setattr(NATModule, "training_step", lambda *a: pytest.fail("a training step ran"))
    args = paper_args(FLAGSHIP, tmp_path, assets)

    def fit(name: str, *extra: str) -> None:  # a run folder each: a failed in-process fit keeps its folder's lock
        main([*args, f"--trainer.default_root_dir={tmp_path / name}", *extra])

    missing = tmp_path / "fid_stats_imagenet256_guided_diffusion.npz"
    with pytest.raises(FileNotFoundError) as error:
        fit("a", f"--evaluation.reference_stats={missing}")
    message = str(error.value)
    assert "\n" not in message and f"reference statistics {missing} (reference_stats) does not exist" in message
    assert f"`python -m lit_nat reference-stats --out {missing} --image_folder <the real images> --resolution 256 " \
           f"--weights_path {assets['inception']}`" in message  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"^Inception weights .*nowhere.pth do not exist"):
        fit("b", f"--evaluation.weights_path={tmp_path / 'nowhere.pth'}")
    coco = REPO / "configs" / "autonat_s_coco.yaml"
    with pytest.raises(UsageError, match="no-clip"):
        main([*paper_args(coco, tmp_path / "coco", assets), f"--evaluation.clip_score_model={tmp_path / 'no-clip'}"])


def test_one_override_turns_each_off(tmp_path, assets, caplog):
    caplog.set_level(logging.INFO)
    args = paper_args(FLAGSHIP, tmp_path, assets)
    main([*args, "--evaluation.enabled=false", f"--evaluation.reference_stats={tmp_path / 'none.npz'}",
          "--trainer.max_steps=2"])  # fmt: skip
    assert "ScheduleSearch: off, because the evaluation whose FID it minimises is off" in caplog.text
    assert not list((tmp_path / "run").rglob("eval_report.json")) and not list((tmp_path / "run").rglob("state.json"))
    main([*args, "--schedule_search.enabled=false", f"--trainer.default_root_dir={tmp_path / 'fixed'}",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'fixed'}"])  # fmt: skip
    assert not list((tmp_path / "fixed").rglob("state.json"))
    (report,) = (tmp_path / "fixed").rglob("eval_report.json")
    assert GenerationSchedule.from_dict(json.loads(report.read_text())["schedule"]).steps == 2
