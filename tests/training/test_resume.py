"""Kill-and-resume equality: a fit killed at any step and resumed ends bit-identical to an uninterrupted one.

The runs are real ``python -m lit_nat fit`` processes on a tiny U-ViT (width 32, 3 layers, batch 64, 25 batches per
epoch, two DataLoader workers, a shuffle buffer, a checkpoint every 5 steps), killed from inside by
:class:`tests.helpers.probes.KillAtStep` as an operator or a scheduler would, and resumed with ``--ckpt_path``.
Equality is exact (max abs difference 0) for online and EMA weights, optimiser moments and the LR schedule, and
every step's batch (hash of ids and labels) is the one the uninterrupted run trained on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from lit_nat.data import ShardLoader, TokenShardDataset, read_metadata
from lit_nat.data.split import TrainPosition, resume_point, worker_skip
from tests.conftest import write_random_shards
from tests.helpers.checks import assert_same_training_state
from tests.helpers.cli import run_lit_nat
from tests.helpers.tiny import UVIT_ARCH

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def fit_config(root: Path, shards: Path, name: str, kills: list[tuple[int, str]]) -> Path:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 5, "save_last": True, "save_top_k": -1, "filename": "{step}"}},
        {"class_path": "tests.helpers.probes.BatchLog", "init_args": {"path": str(root / f"{name}.batches")}},
    ] + [{"class_path": "tests.helpers.probes.KillAtStep",
          "init_args": {"step": step, "signal_name": sig, "marker": str(root / f"{name}.killed{step}")}}
         for step, sig in kills]  # fmt: skip
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": STEPS, "limit_val_batches": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
                    "default_root_dir": str(root / name), "callbacks": callbacks},
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ARCH, "warmup_steps": 5,
                  "ema_decay": 0.9},
        "data": {"root": str(shards), "batch_size": 64, "num_workers": 2, "shuffle_buffer": 100},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_lit_nat("fit", f"--config={config}", *extra)


def batches(path: Path) -> dict[int, str]:
    """step -> batch hash; a step trained twice (replayed after a kill) must have had the same batch both times."""
    seen: dict[int, str] = {}
    for line in path.read_text().splitlines():
        step, _, _, digest = line.split()
        assert seen.setdefault(int(step), digest) == digest, f"step {step} trained on two different batches"
    return seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    shards = write_random_shards(root / "shards", 12, 4, 3, sizes={"train": 1600, "val": 64}, samples_per_shard=100)
    reference = fit(fit_config(root, shards, "uninterrupted", []))
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root, shards, torch.load(root / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.slow
def test_sigkill_mid_epoch_and_at_an_epoch_boundary_resumes_bit_identical(runs):
    root, shards, reference = runs
    config = fit_config(root, shards, "sigkill", [(13, "SIGKILL"), (28, "SIGKILL")])
    last = root / "sigkill" / "checkpoints" / "last.ckpt"
    first = fit(config)
    assert first.returncode == -9 and torch.load(last, weights_only=False)["global_step"] == 10  # steps 11-13 lost
    second = fit(config, f"--ckpt_path={last}")  # resumes mid-epoch 0, is killed in epoch 1 ...
    assert second.returncode == -9 and torch.load(last, weights_only=False)["global_step"] == 25  # ... last at 25
    third = fit(config, f"--ckpt_path={last}")  # resumes exactly at the epoch boundary
    assert third.returncode == 0, third.stderr[-3000:]
    assert_same_training_state(torch.load(last, weights_only=False), reference)
    assert batches(root / "sigkill.batches") == batches(root / "uninterrupted.batches")


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_143_and_resumes_bit_identical(runs):
    root, shards, reference = runs
    config = fit_config(root, shards, "sigterm", [(13, "SIGTERM")])  # 13: an odd position with two workers
    last = root / "sigterm" / "checkpoints" / "last.ckpt"
    first = fit(config)
    assert first.returncode == 143, first.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 13  # nothing lost: the current step was saved
    assert f"saved {last}" in first.stderr and "lit_nat: stopped by SIGTERM" in first.stderr
    second = fit(config, f"--ckpt_path={last}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_training_state(torch.load(last, weights_only=False), reference)
    logged = batches(root / "sigterm.batches")
    assert logged == batches(root / "uninterrupted.batches") and len(logged) == STEPS
    assert len((root / "sigterm.batches").read_text().splitlines()) == STEPS  # no step was trained twice


# ---------------------------------------------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def shards96(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("s96"), 12, 4, 3, sizes={"train": 96}, samples_per_shard=13)


def keys_of(loader) -> list[list[str]]:
    return [b["key"] for b in loader]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_a_resumed_pass_yields_exactly_the_rest_of_the_epoch(shards96, workers):
    info = read_metadata(shards96).splits["train"]
    names = [s.name for s in info.shards]

    def loader(resume=None):
        ds = TokenShardDataset(shards96, names, info.shard_sizes, batch_size=4, num_workers=workers,
                               shuffle_buffer=7, return_keys=True, seed=5)  # fmt: skip
        return ShardLoader(ds, resume=resume, persistent_workers=False)

    whole = keys_of(loader((1, 0)))
    assert len(whole) == 24
    for consumed in (1, 2, 5, 11, 23, 24):
        assert keys_of(loader((1, consumed))) == whole[consumed:], consumed


def test_resume_point_rules():
    layout = dict(batches_per_epoch=25, world_size=2, num_workers=2, batch_size=64)
    saved = TrainPosition(epoch=3, batches=13, **layout)
    assert resume_point(saved, TrainPosition(0, 0, **layout)) == (3, 13, None)
    assert resume_point(TrainPosition(3, 25, **layout), TrainPosition(0, 0, **layout)) == (4, 0, None)
    epoch, skip, note = resume_point(saved, TrainPosition(0, 0, 12, 4, 2, 64))
    assert (epoch, skip) == (3, 6) and "another data layout" in note and "not the batches" in note
    # limit_train_batches cuts the trainer's epoch (10 of a 25-batch plan): the same layout, an exact resume
    limited = TrainPosition(3, 4, 10, 2, 2, 64, plan_batches=25)
    assert resume_point(limited, TrainPosition(0, 0, 25, 2, 2, 64, plan_batches=25)) == (3, 4, None)
    assert resume_point(TrainPosition(3, 10, 10, 2, 2, 64, 25), TrainPosition(0, 0, 25, 2, 2, 64, 25)) == (4, 0, None)
    # batch i comes from worker i mod W: of the first 13 batches, workers 0/1/2 gave 5/4/4
    assert [worker_skip(13, 3, w) for w in range(3)] == [5, 4, 4] and worker_skip(0, 3, 0) == 0
    assert sum(worker_skip(17, 4, w) for w in range(4)) == 17


def test_resuming_with_another_layout_says_so_and_continues_deterministically(shards96):
    from lit_nat.data import TokenShardDataModule

    def datamodule():
        return TokenShardDataModule(str(shards96), batch_size=4, num_workers=0, shuffle_buffer=7, return_keys=True)

    saved = {"train_position": {"epoch": 2, "batches": 5, "batches_per_epoch": 12, "world_size": 2, "num_workers": 2,
                                "batch_size": 4}}  # fmt: skip
    resumed = datamodule()
    resumed.load_state_dict(saved)
    with pytest.warns(UserWarning, match=r"resuming epoch 2 with another data layout .* skipping the first 10 batches"):
        loader = resumed.train_dataloader()
    whole = datamodule().train_dataloader()
    whole.resume = (2, 0)
    assert keys_of(loader) == keys_of(whole)[10:]  # 5 batches x 2 ranks x 4 samples = the first 10 of 1 rank x 4
