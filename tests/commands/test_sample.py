"""``python -m lit_nat sample``: the ADM .npz, grid, PNGs, labels, schedules, per-rank parts; reference-stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.commands.sample import done_batches, merge_parts, to_uint8_hwc, write_part
from lit_nat.core.errors import UsageError
from lit_nat.data.labels import plan_generation
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics import load_reference_stats
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
from tests.conftest import fit_tiny_checkpoint, write_random_shards


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """Tiny shards (12 codes, 4x4, 3 classes), a config, and a checkpoint after one training step."""
    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    return fit_tiny_checkpoint(tmp_path, root, steps=4)


def sample(config: Path, ckpt: Path, out: Path, *extra: str) -> None:
    main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={out}", *extra])


def test_sample_writes_the_adm_layout_grid_and_pngs(setup, tmp_path):
    config, ckpt = setup
    out = tmp_path / "samples"
    sample(config, ckpt, out, "--num_samples=7", "--batch_size=3", "--seed=11", "--save_png=true")
    with np.load(out / "samples.npz") as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (7, 4, 4, 3)  # N x H x W x 3, grey repeated to RGB
    assert labels.dtype == np.int64 and labels.tolist() == [i % 3 for i in range(7)]  # class-balanced
    assert (out / "grid.png").exists() and not (out / "parts").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(7)]
    info = json.loads((out / "samples.json").read_text())
    assert info["num_samples"] == 7 and info["seed"] == 11 and info["checkpoint"] == str(ckpt)

    # the same images as the evaluation plan generates (EMA weights, the checkpoint's schedule)
    model = load_model(str(ckpt))
    for batch in plan_generation(7, 3, seed=11, num_classes=3):
        ids = model.generate(torch.tensor(batch.labels), seed=batch.seed).ids
        np.testing.assert_array_equal(images[list(batch.indices)], to_uint8_hwc(model.decode(ids)))

    with pytest.raises(FileExistsError, match="--overwrite"):
        sample(config, ckpt, out, "--num_samples=7")


def test_sample_with_labels_and_a_schedule_file(setup, tmp_path):
    config, ckpt = setup
    schedule = GenerationSchedule.heuristic(2, guidance=0.0).save(tmp_path / "two_steps.yaml")
    out = tmp_path / "given"
    sample(config, ckpt, out, "--num_samples=5", "--labels", "2", "0", f"--schedule={schedule}")
    with np.load(out / "samples.npz") as data:
        assert data["arr_1"].tolist() == [2, 0, 2, 0, 2]
    info = json.loads((out / "samples.json").read_text())
    assert info["schedule"]["mask_ratio"] == GenerationSchedule.load(schedule).mask_ratio  # installed after the ckpt
    assert info["schedule_source"] == str(schedule)


def test_bad_schedule_files_and_labels_fail_before_any_work(setup, tmp_path):
    config, ckpt = setup
    wrong_length = tmp_path / "wrong_length.yaml"
    wrong_length.write_text(
        "mask_ratio: [0.5, 0.0]\nsample_temperature: [1.0]\nremask_temperature: [1.0, 0.0]\nguidance: [0, 0]\n"
    )
    with pytest.raises(ValueError, match=r"wrong_length.yaml: sample_temperature has 1 values, expected 2"):
        sample(config, ckpt, tmp_path / "a", "--num_samples=2", f"--schedule={wrong_length}")
    out_of_range = tmp_path / "range.yaml"
    out_of_range.write_text(
        "mask_ratio: [1.5, 0.0]\nsample_temperature: [1, 1]\nremask_temperature: [1.0, 0.0]\nguidance: [0, 0]\n"
    )
    with pytest.raises(ValueError, match=r"range.yaml: mask_ratio\[0\] = 1.5 is outside \[0, 1\]"):
        sample(config, ckpt, tmp_path / "b", "--num_samples=2", f"--schedule={out_of_range}")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml does not exist"):
        sample(config, ckpt, tmp_path / "c", "--num_samples=2", f"--schedule={tmp_path / 'nowhere.yaml'}")
    with pytest.raises(ValueError, match=r"labels must be non-empty and in \[0, 3\]"):
        sample(config, ckpt, tmp_path / "d", "--num_samples=2", "--labels", "7")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_draw_gives_the_runs_schedule_its_token_draw(setup, tmp_path):
    """--draw inverse_cdf on the checkpoint's schedule (or a given one): recorded in samples.json, the images the
    model generates under that draw; a bad value is one line before any work."""
    config, ckpt = setup
    sample(config, ckpt, tmp_path / "gumbel", "--num_samples=6", "--batch_size=3")
    sample(config, ckpt, tmp_path / "inverse", "--num_samples=6", "--batch_size=3", "--draw=inverse_cdf")
    infos = {name: json.loads((tmp_path / name / "samples.json").read_text()) for name in ("gumbel", "inverse")}
    assert infos["gumbel"]["schedule"]["draw"] == "auto" and infos["inverse"]["schedule"]["draw"] == "inverse_cdf"
    model = load_model(str(ckpt))
    schedule = GenerationSchedule.from_dict({**model.schedule.to_dict(), "draw": "inverse_cdf"})
    with np.load(tmp_path / "inverse" / "samples.npz") as data:
        images = data["arr_0"]
    for batch in plan_generation(6, 3, seed=0, num_classes=3):
        ids = model.generate(torch.tensor(batch.labels), seed=batch.seed, schedule=schedule).ids
        np.testing.assert_array_equal(images[list(batch.indices)], to_uint8_hwc(model.decode(ids)))
    with np.load(tmp_path / "gumbel" / "samples.npz") as data:
        assert not np.array_equal(data["arr_0"], images)
    with pytest.raises(UsageError, match="sample: --draw 'uniform' is not one of auto, gumbel, inverse_cdf"):
        sample(config, ckpt, tmp_path / "bad", "--num_samples=2", "--draw=uniform")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_compile_freeze_samples_eagers_images_and_is_part_of_the_run(setup, tmp_path):
    """--compile freeze (inductor's freezing) gives eager's images at this size and is recorded in samples.json (and
    in the parts plan, so a resume keeps the mode); a bad mode is one line before any work."""
    config, ckpt = setup
    sample(config, ckpt, tmp_path / "eager", "--num_samples=6", "--batch_size=3")
    sample(config, ckpt, tmp_path / "frozen", "--num_samples=6", "--batch_size=3", "--compile=freeze")
    with np.load(tmp_path / "eager" / "samples.npz") as eager, np.load(tmp_path / "frozen" / "samples.npz") as frozen:
        np.testing.assert_array_equal(frozen["arr_0"], eager["arr_0"])
    infos = {name: json.loads((tmp_path / name / "samples.json").read_text()) for name in ("eager", "frozen")}
    assert infos["frozen"]["compile"] == "freeze" and "compile" not in infos["eager"]
    with pytest.raises(UsageError, match="sample: --compile: compile mode 'max' is not one of false, true, freeze"):
        sample(config, ckpt, tmp_path / "bad", "--num_samples=2", "--compile=max")
    assert not (tmp_path / "bad").exists()


def test_batch_parts_merge_in_sample_order(tmp_path):
    """What two DDP ranks write (batches dealt round-robin, one part file each) merges into one file in sample order."""
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    for rank in range(2):
        for batch in plan_generation(10, 3, num_classes=4, rank=rank, world_size=2):
            index = np.array(batch.indices)
            write_part(tmp_path, batch.index, images[index], np.array(batch.labels), index)
    assert done_batches(tmp_path) == {0, 1, 2, 3}
    path = merge_parts(tmp_path, 10).path
    with np.load(path) as data:
        np.testing.assert_array_equal(data["arr_0"], images)
        assert data["arr_1"].tolist() == [i % 4 for i in range(10)]
    assert not (tmp_path / "parts").exists()
    write_part(tmp_path, 0, images[:3], np.zeros(3, np.int64), np.array([0, 1, 1]))
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_parts(tmp_path, 3)


def test_reference_stats_command_from_shards_and_from_a_folder(tmp_path):
    from PIL import Image

    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    weights = save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")
    out = tmp_path / "ref.npz"
    main(["reference-stats", f"--out={out}", "--extractor=digits", f"--weights_path={weights}", f"--data_root={root}",
          "--split=val"])  # fmt: skip
    stats = load_reference_stats(out, num_features=64, extractor="digits-classifier/64")
    assert stats.meta["num_samples"] == 16 and "val" in stats.meta["source"]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    main(["reference-stats", f"--out={tmp_path / 'folder.npz'}", "--extractor=digits", f"--weights_path={weights}",
          f"--image_folder={folder}"])  # fmt: skip
    assert load_reference_stats(tmp_path / "folder.npz").meta["num_samples"] == 5
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["reference-stats", f"--out={out}", "--extractor=digits", f"--weights_path={weights}",
              f"--data_root={root}"])  # fmt: skip


def test_a_stopped_sample_keeps_its_batches_and_resumes_with_the_rest(setup, tmp_path, monkeypatch):
    """SIGTERM after the second batch: exit at once with two part files; the rerun generates only the other three
    batches, and samples.npz equals an uninterrupted run's. Other weights or settings cannot resume those parts."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_nat.commands.sample import SampleWriter
    from lit_nat.training.module import NATModule

    config, ckpt = setup
    args = ["--num_samples=9", "--batch_size=2", "--seed=4"]
    sample(config, ckpt, tmp_path / "whole", *args)
    written = SampleWriter.write_on_batch_end

    def sigterm_during_the_second(self, trainer, *rest):
        if len(done_batches(self.files)) == 1:
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler records
        written(self, trainer, *rest)

    monkeypatch.setattr(SampleWriter, "write_on_batch_end", sigterm_during_the_second)
    out = tmp_path / "stopped"
    with pytest.raises(SIGTERMException):
        sample(config, ckpt, out, *args)
    assert done_batches(out) == {0, 1} and not (out / "samples.npz").exists()
    monkeypatch.setattr(SampleWriter, "write_on_batch_end", written)

    with pytest.raises(ValueError, match="parts of an interrupted run with other seed"):
        sample(config, ckpt, out, "--num_samples=9", "--batch_size=2", "--seed=5")
    with pytest.raises(ValueError, match="parts of an interrupted run with other precision"):
        sample(config, ckpt, out, *args, "--trainer.precision=bf16-true")
    plan_file = next(out.rglob("plan.json"))  # as a release before the schedule's draw field wrote it
    plan = json.loads(plan_file.read_text())
    assert plan["schedule"].pop("draw") == "auto"
    plan_file.write_text(json.dumps(plan))
    calls = []
    original = NATModule.predict_step
    monkeypatch.setattr(NATModule, "predict_step", lambda self, batch, i: calls.append(i) or original(self, batch, i))
    sample(config, ckpt, out, *args)
    assert len(calls) == 3  # batches 2, 3 and 4
    with np.load(out / "samples.npz") as a, np.load(tmp_path / "whole" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
    info = json.loads((out / "samples.json").read_text())
    assert info["masked_counts"][-1] == 0 and len(info["masked_counts"]) == len(info["schedule"]["mask_ratio"])
    assert info["precision"] == "32-true"


def test_sample_in_bf16_weights_records_its_precision(setup, tmp_path):
    """``--trainer.precision bf16-true`` samples with the weights cast to bfloat16: valid images, said in
    samples.json (a resume in another precision is refused: see the stopped-sample test)."""
    config, ckpt = setup
    sample(config, ckpt, tmp_path / "fp32", "--num_samples=6", "--batch_size=3")
    sample(config, ckpt, tmp_path / "bf16", "--num_samples=6", "--batch_size=3", "--trainer.precision=bf16-true")
    info = json.loads((tmp_path / "bf16" / "samples.json").read_text())
    assert info["precision"] == "bf16-true" and info["arr_0_shape"] == [6, 4, 4, 3]
    with np.load(tmp_path / "bf16" / "samples.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_1"].tolist() == [i % 3 for i in range(6)]


def test_sample_predicts_under_no_grad_not_inference_mode(setup, tmp_path, monkeypatch):
    """Under autocast, inference mode would re-cast every weight at every step; the tokens do not depend on it, and
    ``--trainer.inference_mode true`` (or a config) still chooses Lightning's default."""
    from lit_nat.training.module import NATModule

    config, ckpt = setup
    modes = []
    original = NATModule.predict_step

    def recording(self, batch, index):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return original(self, batch, index)

    monkeypatch.setattr(NATModule, "predict_step", recording)
    args = ["--num_samples=4", "--batch_size=2", "--trainer.precision=bf16-mixed"]
    sample(config, ckpt, tmp_path / "no_grad", *args)
    main(["sample", f"--ckpt_path={ckpt}", f"--out={tmp_path / 'alone'}", *args])  # from the checkpoint alone
    sample(config, ckpt, tmp_path / "inference", *args, "--trainer.inference_mode=true")
    assert modes == [(False, False)] * 4 + [(True, False)] * 2
    with np.load(tmp_path / "no_grad" / "samples.npz") as a, np.load(tmp_path / "inference" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
