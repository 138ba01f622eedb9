"""What a hostile user or a failing machine meets: every bad input is one clear error, nothing saved is lost.

Damaged and non-finite checkpoints, a kill in the middle of a checkpoint write, NaN training, bad shard samples and
corrupt tars (both policies), a meta.json that contradicts its tokenizer, a schedule whose ratios rise, a structure
that contradicts the checkpoint, a second process in a locked directory.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat.commands.cli import main
from lit_nat.core.checkpointing import DurableCheckpointIO, read_checkpoint, save_checkpoint_file
from lit_nat.core.errors import CheckpointError, DataError, LockedError, NonFiniteError
from lit_nat.core.finite import NonFiniteGuard
from lit_nat.core.io import DirectoryLock
from lit_nat.data import TokenShardDataModule
from lit_nat.data.meta import MetadataError
from lit_nat.data.shards import tar_bytes
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.training.loading import load_model
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer
from tests.conftest import fit_tiny_checkpoint, write_random_shards
from tests.helpers.tiny import UVIT_ONE_BLOCK_ARCH, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = {"name": "pixel", "levels": 12, "image_size": 4, "channels": 1}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})  # fmt: skip


# ----------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def tiny(tmp_path):
    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    config, ckpt = fit_tiny_checkpoint(tmp_path, root, steps=2)
    return root, config, ckpt


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_file_whole(tmp_path):
    """The process dies (SIGKILL) half-way through pickling the new checkpoint, with $TMPDIR on another filesystem
    than the run directory (/dev/shm here): the old checkpoint is still there and loads, the dead writer's temporary
    file sits beside it and the next write removes it."""
    path = tmp_path / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(6.0)}, "global_step": 5}
    save_checkpoint_file(good, path)
    code = f"""
import os, signal, torch
from lit_nat.core.checkpointing import save_checkpoint_file
class DiesWhilePickled:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
save_checkpoint_file({{"state_dict": {{"w": torch.zeros(1 << 20)}}, "global_step": 6, "x": DiesWhilePickled()}},
                     {str(path)!r})
"""
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "tmpdir"
    done = run_python(code, TMPDIR=str(other_fs))
    assert done.returncode == -9, done.stderr
    assert read_checkpoint(path, weights_only=False)["global_step"] == 5
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1  # the dead writer's, in the destination directory
    save_checkpoint_file({**good, "global_step": 7}, path)
    assert read_checkpoint(path)["global_step"] == 7 and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b""), "empty \\(0 bytes\\)"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or damaged"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "truncated or damaged"),
        (lambda p: p.unlink(), "no such checkpoint file"),
    ],
)
def test_damaged_checkpoints_are_named_everywhere_they_are_read(tiny, tmp_path, damage, message):
    _, config, ckpt = tiny
    damage(ckpt)
    with pytest.raises(CheckpointError, match=f"{ckpt}: .*{message}"):
        load_model(str(ckpt))
    with pytest.raises(CheckpointError, match=message):
        main(["validate", f"--config={config}", f"--ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match=message):
        DurableCheckpointIO().load_checkpoint(ckpt)


def test_the_command_line_prints_one_line_and_exits_2(tiny):
    _, config, ckpt = tiny
    ckpt.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "lit_nat", "validate", f"--config={config}", f"--ckpt_path={ckpt}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"lit_nat: error: {ckpt}: the checkpoint file is empty (0 bytes): a write was cut off; use another one"
    )


def test_non_finite_weights_are_never_written_and_never_sampled(tiny, tmp_path):
    _, config, ckpt = tiny
    checkpoint = torch.load(ckpt, weights_only=False)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("ema_backbone."))
    checkpoint["state_dict"][key][0] = float("nan")
    with pytest.raises(CheckpointError, match=f"non-finite weights .* in {key}"):
        save_checkpoint_file(checkpoint, tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()
    torch.save(checkpoint, tmp_path / "nan.ckpt")  # made by something else
    with pytest.raises(CheckpointError, match=f"nan.ckpt: non-finite weights .* in {key}"):
        load_model(str(tmp_path / "nan.ckpt"))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        main(["sample", f"--config={config}", f"--ckpt_path={tmp_path / 'nan.ckpt'}", "--num_samples=2",
              f"--out={tmp_path / 'samples'}"])  # fmt: skip
    assert not (tmp_path / "samples" / "samples.npz").exists()


def test_the_trainer_writes_checkpoints_durably_by_default(tmp_path):
    trainer = NATTrainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, DurableCheckpointIO)


# ------------------------------------------------------------------------------------------------------ NaN guard
def test_a_diverging_run_stops_with_the_steps_named_and_its_checkpoints_stay_finite(tmp_path):
    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3, sizes={"train": 256})
    args = ["fit", "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_steps=200",
            "--trainer.limit_val_batches=0", "--model.arch=autonat-tiny",
            f"--model.arch_overrides={tiny_overrides('autonat-tiny')}",
            "--model.lr=1e6", "--model.warmup_steps=1", "--model.max_nonfinite_steps=3", f"--data.root={root}",
            "--data.batch_size=16", "--data.num_workers=0", "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_last=true"]  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradients at optimiser steps \d+-\d+ \(3 in a row"):
        main(args)
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    checkpoint = read_checkpoint(last, require_finite=True)  # would raise on a NaN weight
    assert 0 < checkpoint["global_step"] < 200
    assert checkpoint["lit_nat_training"]["nonfinite"]["total"] >= 0


def test_a_non_finite_step_is_skipped_weights_moments_and_ema_untouched(tmp_path):
    from lightning.pytorch import Callback

    model = NATModule(arch="autonat-tiny", arch_overrides=UVIT_ONE_BLOCK_ARCH, codebook_size=12, grid_size=4,
                      num_classes=3, tokenizer=TOKENIZER, warmup_steps=1, max_nonfinite_steps=2)  # fmt: skip
    batches = [{"ids": torch.randint(0, 12, (8, 16)), "label": torch.randint(0, 3, (8,))} for _ in range(4)]
    seen = {}

    class PoisonStep2(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            optimizer = trainer.optimizers[0].state
            seen[batch_idx] = ({k: v.clone() for k, v in pl_module.state_dict().items()},
                               [t.clone() for s in optimizer.values() for t in s.values()])  # fmt: skip

        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.global_step == 2:
                loss.register_hook(lambda grad: grad * float("nan"))  # every gradient of this step is NaN

    trainer = NATTrainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=4, default_root_dir=tmp_path,
                         callbacks=[PoisonStep2()], limit_val_batches=0)  # fmt: skip
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    (weights2, moments2), (weights3, moments3), (weights1, _) = seen[2], seen[3], seen[1]
    assert all(torch.equal(weights2[k], weights3[k]) for k in weights2)  # online weights and EMA: step 2 skipped
    assert all(torch.equal(a, b) for a, b in zip(moments2, moments3, strict=True))  # AdamW moments and step counts
    assert not all(torch.equal(weights1[k], weights2[k]) for k in weights1)  # the other steps did train
    assert model.nonfinite_guard.total == 1 and model.nonfinite_guard.consecutive == 0
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def test_nonfinite_guard_policies():
    guard = NonFiniteGuard("skip", max_consecutive=3)
    assert [guard.update(ok, step) for step, ok in enumerate([True, False, False, True, False])] == [
        False, True, True, False, True]  # fmt: skip
    assert guard.total == 3 and guard.consecutive == 1
    guard.update(False, 5)
    with pytest.raises(NonFiniteError, match=r"steps 4-6 \(3 in a row, policy 'skip', max 3\)"):
        guard.update(False, 6)
    with pytest.raises(NonFiniteError, match=r"step 9 \(1 in a row, policy 'stop'"):
        NonFiniteGuard("stop").update(False, 9)
    with pytest.raises(ValueError, match="nonfinite policy"):
        NonFiniteGuard("ignore")


# ----------------------------------------------------------------------------------------------------- shard data
def write_tar(root: Path, name: str, samples: list[dict]) -> None:
    (root / name).write_bytes(tar_bytes(samples))


def sample(key: str, label: int, ids=None) -> dict:
    """A sample as a tar holds it, written without the writer's checks (so it can break the format)."""
    buf = io.BytesIO()
    np.save(buf, (np.arange(16) % 12 if ids is None else ids).astype(np.uint16))
    return {"__key__": key, "tokens.npy": buf.getvalue(), "cls": str(label).encode()}


BAD = {
    "nullclass": (dict(label=3), r"sample 'nullclass': label 3 is outside \[0, 3\) \(the null class never comes"),
    "bigid": (dict(label=0, ids=np.full(16, 12)), r"sample 'bigid': token id 12 is outside the codebook \[0, 12\)"),
    "short": (dict(label=0, ids=np.arange(9)), r"sample 'short': 9 token ids, expected 16 \(the grid of meta.json\)"),
}


def make_bad_root(tmp_path: Path, *bad: str) -> Path:
    """Two train shards of 8 samples (4x4 grid, 12 codes, 3 classes); the second holds the ``bad`` samples."""
    root = write_random_shards(tmp_path / "bad", codebook_size=12, grid=4, num_classes=3, sizes={"train": 16},
                               samples_per_shard=8)  # fmt: skip
    samples = [sample(f"g{i}", i % 3) for i in range(8 - len(bad))]
    for i, name in enumerate(bad):
        samples.insert(2 * i + 1, sample(name, **BAD[name][0]))
    write_tar(root, "train-000001.tar", samples)
    return root


@pytest.fixture
def bad_root(tmp_path):
    return make_bad_root(tmp_path, "nullclass", "bigid")


def datamodule(root, **kw):
    return TokenShardDataModule(str(root), num_workers=0, shuffle_buffer=1, return_keys=True, **{"batch_size": 4, **kw})


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_samples_fail_naming_shard_and_key(tmp_path, name):
    root = make_bad_root(tmp_path, name)
    with pytest.raises(DataError, match=f"train-000001.tar: {BAD[name][1]}"):
        list(datamodule(root, bad_data="fail").train_dataloader())


def test_bad_samples_are_replaced_and_counted_with_skip(bad_root):
    with pytest.warns(UserWarning, match="skipping bad samples of train-000001.tar"):
        batches = list(datamodule(bad_root, bad_data="skip").train_dataloader())
    assert len(batches) == 4 and all(len(b["key"]) == 4 for b in batches)  # full batches: DDP needs equal counts
    assert sum(b.get("bad_samples", 0) for b in batches) == 2
    keys = [k for b in batches for k in b["key"]]
    assert "nullclass" not in keys and "bigid" not in keys
    assert all(int(label) < 3 for b in batches for label in b["label"])


def test_a_corrupt_tar_is_named_or_skipped(tmp_path):
    root = write_random_shards(tmp_path / "c", codebook_size=12, grid=4, num_classes=3, sizes={"train": 16},
                               samples_per_shard=8)  # fmt: skip
    data = bytearray((root / "train-000001.tar").read_bytes())
    data[512 * 4 : 512 * 4 + 100] = b"\xff" * 100  # garbage in the header of sample 1's first member
    (root / "train-000001.tar").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000001.tar(: unreadable after| holds 1 samples, but the metadata)"):
        list(datamodule(root, bad_data="fail").train_dataloader())
    with pytest.warns(UserWarning, match="train-000001.tar"):
        batches = list(datamodule(root, bad_data="skip").train_dataloader())
    assert len(batches) == 4 and sum(b.get("bad_samples", 0) for b in batches) >= 6


def test_meta_json_must_agree_with_its_tokenizer(tmp_path):
    root = write_random_shards(tmp_path / "m", codebook_size=12, grid=4, num_classes=3)
    meta = json.loads((root / "meta.json").read_text())
    meta["codebook_size"] = 1024
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match=r"meta.json: codebook_size 1024 .* do not match its tokenizer 'pixel' "
                                            r"\(12 codes, grid \[4, 4\]\)"):  # fmt: skip
        TokenShardDataModule(str(root))


def test_schedules_whose_ratios_rise_are_refused_with_the_step():
    with pytest.raises(ValueError, match=r"mask_ratio\[2\] = 0.6 > mask_ratio\[1\] = 0.5; .* must not increase"):
        GenerationSchedule([0.9, 0.5, 0.6, 0.0], [1.0] * 4, [1.0] * 4, [0.0] * 4)
    GenerationSchedule([0.9, 0.5, 0.5, 0.0], [1.0] * 4, [1.0] * 4, [0.0] * 4)  # equal is allowed (the guard reveals)


def test_a_structure_that_contradicts_the_checkpoint_is_an_error(tiny, tmp_path):
    _, config, ckpt = tiny
    with pytest.raises(CheckpointError, match=r"checkpoint's backbone is 'autonat-tiny' .* asks for 'autonat-tiny' "
                                              r"\{'width': 64\} .*'width': \(32, 64\)"):  # fmt: skip
        main(["validate", f"--config={config}", f"--ckpt_path={ckpt}", "--model.arch_overrides={width: 64}"])
    with pytest.raises(CheckpointError, match="asks for 'enat-tiny'"):
        main(["validate", f"--config={config}", f"--ckpt_path={ckpt}", "--model.arch=enat-tiny"])


# ---------------------------------------------------------------------------------------------------------- locks
def hold_lock(directory: Path) -> subprocess.Popen:
    code = (f"import time; from lit_nat.core.io import DirectoryLock; "
            f"lock = DirectoryLock({str(directory)!r}, 'a test')"
            ".acquire(); print('locked', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_directory_in_use_by_a_live_process_is_refused_and_freed_when_it_dies(tiny, tmp_path):
    _, config, ckpt = tiny
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        pattern = f"{run_dir} is in use by a test \\(pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(LockedError, match=pattern):
            main(["fit", f"--config={config}", "--trainer.max_steps=2"])
        with pytest.raises(LockedError, match=pattern):
            main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=2", f"--out={run_dir}"])
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(run_dir, "again"):  # the kernel released it with the dead holder
        with pytest.raises(LockedError, match="already in use by this process"):
            DirectoryLock(run_dir, "twice").acquire()


def test_a_fit_that_fails_in_process_frees_its_run_directory_for_the_next(tiny, tmp_path, monkeypatch):
    """A notebook or a test lives on after a failed fit; the failure must not leave the directory locked by it."""
    from lit_nat.training.module import NATModule

    _, config, _ = tiny
    run_dir = tmp_path / "again"

    def fail(self, batch, batch_idx):
        raise RuntimeError("a bug in a training step")

    monkeypatch.setattr(NATModule, "training_step", fail)
    with pytest.raises(RuntimeError, match="a bug in a training step"):
        main(["fit", f"--config={config}", "--trainer.max_steps=2", f"--trainer.default_root_dir={run_dir}"])
    monkeypatch.undo()
    main(["fit", f"--config={config}", "--trainer.max_steps=2", f"--trainer.default_root_dir={run_dir}"])


def test_a_folder_sweep_removes_only_dead_writers_temps_of_matching_files_of_this_host(tmp_path):
    """``remove_stale_temps(folder, "*.png")`` (one listing before writing many images) spares live writers, other
    hosts (also one whose name ends with ours) and other files."""
    import socket

    from lit_nat.core.io import remove_stale_temps

    host, dead = socket.gethostname(), "999999999"
    names = {"dead": f".a.png.{host}.{dead}.tmp", "live": f".b.png.{host}.{os.getpid()}.tmp",
             "other host": f".a.png.x.{host}.{dead}.tmp", "similar host": f".a.png.{host}x.{dead}.tmp",
             "other file": f".c.ckpt.{host}.{dead}.tmp"}  # fmt: skip
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    assert [p.name for p in remove_stale_temps(tmp_path, "*.png")] == [names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
