"""FID/IS in validation: the rank plan of labels and seeds, determinism, the current schedule, report, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_nat.callbacks import GenerativeEvaluation, SampleGrid
from lit_nat.data.labels import GenerationBatches, plan_generation
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.generation.visuals import reveal_strip, schedule_scalars
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
from tests.helpers.tiny import eval_module, eval_trainer, shards_datamodule


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    """An (untrained) digits classifier file: a small, fast, deterministic feature extractor."""
    torch.manual_seed(1)
    return save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")


def evaluation(classifier: Path, tmp_path: Path, **kwargs) -> GenerativeEvaluation:
    defaults = dict(
        extractor="digits",
        weights_path=str(classifier),
        reference_stats=str(tmp_path / "ref_val.npz"),
        reference_split="val",  # computed from the shards on first use, then cached
        num_samples=12,
        batch_size=5,
        seed=3,
    )
    return GenerativeEvaluation(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("num_samples,batch_size", [(12, 5), (7, 7), (50, 4), (3, 10)])
def test_every_label_exactly_once_over_simulated_ranks(num_samples, batch_size):
    single = plan_generation(num_samples, batch_size, seed=9, num_classes=3)
    by_index = {i: (b.index, b.seed, label) for b in single for i, label in zip(b.indices, b.labels)}
    for world_size in (1, 2, 3, 4, 8):
        ranks = [
            plan_generation(num_samples, batch_size, 9, 3, rank=r, world_size=world_size) for r in range(world_size)
        ]
        seen = [i for plan in ranks for b in plan for i in b.indices]
        assert sorted(seen) == list(range(num_samples)), f"W={world_size}: each sample exactly once"
        for r, plan in enumerate(ranks):
            for b in plan:
                assert b.index % world_size == r  # batch b on rank b mod W (Lightning's predict sampler)
                assert b.seed == 9 + b.indices[0] and list(b.labels) == [i % 3 for i in b.indices]
                assert all(by_index[i] == (b.index, b.seed, label) for i, label in zip(b.indices, b.labels))
    labels = [label for b in single for label in b.labels]
    if num_samples % 3 == 0:
        assert np.bincount(labels).tolist() == [num_samples // 3] * 3  # class-balanced
    dataset = GenerationBatches(num_samples, batch_size, seed=9, num_classes=3)
    assert torch.equal(dataset[0]["seed"], 9 + dataset[0]["index"])
    with pytest.raises(ValueError, match="rank 2 is not in"):
        plan_generation(4, 2, num_classes=3, rank=2, world_size=2)


def test_images_do_not_depend_on_the_number_of_ranks():
    model = eval_module().eval()

    def images_by_index(world_size: int) -> dict[int, torch.Tensor]:
        out = {}
        for rank in range(world_size):
            for b in plan_generation(11, 4, seed=5, num_classes=3, rank=rank, world_size=world_size):
                ids = model.generate(torch.tensor(b.labels), seed=b.seed).ids
                out.update(zip(b.indices, model.decode(ids)))
        return out

    one, three = images_by_index(1), images_by_index(3)
    assert sorted(one) == sorted(three) == list(range(11))
    assert all(torch.equal(one[i], three[i]) for i in one)


# ---------------------------------------------------------------------------------------------------- validation
def test_validation_fid_is_deterministic_uses_the_current_schedule_and_writes_a_report(
    tiny_shards, classifier, tmp_path
):
    model = eval_module()
    callback = evaluation(classifier, tmp_path)
    seen: list[torch.Tensor] = []
    fit = eval_trainer(tmp_path, [callback])
    dm = shards_datamodule(tiny_shards)

    first = fit.validate(model, datamodule=dm, verbose=False)[0]
    original_forward = callback.extractor.forward
    callback.extractor.forward = lambda images: seen.append(images.clone()) or original_forward(images)
    second = fit.validate(model, datamodule=dm, verbose=False)[0]
    third = fit.validate(model, datamodule=dm, verbose=False)[0]
    assert first["val/digits_fid"] == second["val/digits_fid"] == third["val/digits_fid"]
    assert first["val/digits_is"] == second["val/digits_is"]
    batches = len(seen) // 2
    assert batches == 3  # 12 samples in batches of 5
    assert all(torch.equal(a, b) for a, b in zip(seen[:batches], seen[batches:])), "same seed, same images"
    assert (tmp_path / "ref_val.npz").exists(), "the computed reference statistics are cached"

    # a schedule search installs a new schedule: the next validation must use it
    model.set_schedule(GenerationSchedule.heuristic(3, guidance=0.0))
    seen.clear()
    changed = fit.validate(model, datamodule=dm, verbose=False)[0]
    assert changed["val/digits_fid"] != first["val/digits_fid"]

    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert report["metric"] == "digits-FID-12" and report["digits-FID-12"] == pytest.approx(changed["val/digits_fid"])
    assert report["steps"] == 3 and report["schedule"]["mask_ratio"] == model.schedule.mask_ratio
    assert report["num_samples"] == 12 and report["seed"] == 3 and report["inception_score"] > 1
    assert report["extractor"] == "digits-classifier/64" and report["reference_stats"].endswith("ref_val.npz")
    assert report["stage"] == "validate" and report["history"] == [] and "checkpoint" in report  # fit keeps a curve
    # the metric and its extractor live in the callback, never in the model's weights
    assert not [k for k in model.state_dict() if "fid" in k or "classifier" in k or "extractor" in k]


def test_evaluate_works_outside_validation_and_inference_mode(tiny_shards, classifier, tmp_path):
    model = eval_module()
    callback = evaluation(classifier, tmp_path)
    fit = eval_trainer(tmp_path, [callback])
    logged = fit.validate(model, datamodule=shards_datamodule(tiny_shards), verbose=False)[0]["val/digits_fid"]
    assert not torch.is_inference_mode_enabled()
    again = callback.evaluate(fit, model)  # e.g. a schedule search from a training hook
    assert again["fid"] == pytest.approx(logged)


def test_validation_generates_outside_inference_mode_under_autocast_and_measures_inside(tiny_shards, classifier,
                                                                                       tmp_path):  # fmt: skip
    """Under inference mode autocast re-casts every weight at every decoding step; validation's FID generates under
    no_grad with the run's autocast (its casts kept for the call) and extracts features in inference mode."""
    model = eval_module()
    callback = evaluation(classifier, tmp_path)
    seen: dict[str, list] = {"generate": [], "decode": []}
    generate, decode = model.generate, model.decode

    def recording_generate(*args, **kwargs):
        seen["generate"].append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(),
                                 torch.is_autocast_enabled("cpu")))  # fmt: skip
        return generate(*args, **kwargs)

    model.generate = recording_generate
    model.decode = lambda ids: seen["decode"].append(torch.is_inference_mode_enabled()) or decode(ids)
    fit = eval_trainer(tmp_path, [callback], precision="bf16-mixed")
    result = fit.validate(model, datamodule=shards_datamodule(tiny_shards), verbose=False)[0]
    assert seen["generate"] and set(seen["generate"]) == {(False, False, True)}
    assert seen["decode"] and all(seen["decode"])  # decoding and the metric: validation's inference mode
    assert np.isfinite(result["val/digits_fid"])


def test_every_n_validations_and_checkpointed_counter(tiny_shards, classifier, tmp_path):
    callback = evaluation(classifier, tmp_path, every_n_validations=2)
    fit = eval_trainer(tmp_path, [callback], max_steps=6, val_check_interval=2, check_val_every_n_epoch=None,
                       limit_train_batches=6)  # fmt: skip
    fit.fit(eval_module(), datamodule=shards_datamodule(tiny_shards))
    assert callback.validations == 3 and [h["global_step"] for h in callback.history] == [4]
    assert callback.state_dict() == {"validations": 3, "history": callback.history}


def test_missing_files_are_clear_errors_at_start(tiny_shards, classifier, tmp_path):
    model, dm = eval_module(), shards_datamodule(tiny_shards)
    bad_weights = evaluation(classifier, tmp_path, weights_path=str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt do not exist"):
        eval_trainer(tmp_path, [bad_weights]).validate(model, datamodule=dm, verbose=False)
    no_stats = evaluation(classifier, tmp_path, reference_stats=str(tmp_path / "none.npz"), reference_split=None)
    with pytest.raises(FileNotFoundError, match=r"none.npz \(reference_stats\) does not exist; make them once with "
                       r"`python -m lit_nat reference-stats --out .*none.npz --image_folder <the real images> "
                       r"--resolution 4 --extractor digits --weights_path .*clf.pt`"):  # fmt: skip
        eval_trainer(tmp_path, [no_stats]).validate(model, datamodule=dm, verbose=False)
    np.savez(tmp_path / "d8.npz", mu=np.zeros(8), sigma=np.eye(8))
    wrong_size = evaluation(classifier, tmp_path, reference_stats=str(tmp_path / "d8.npz"), reference_split=None)
    with pytest.raises(ValueError, match="d8.npz: statistics have D = 8 features.*gives 64"):
        eval_trainer(tmp_path, [wrong_size]).validate(model, datamodule=dm, verbose=False)
    with pytest.raises(ValueError, match="give reference_stats"):
        GenerativeEvaluation(extractor="digits", weights_path=str(classifier))


# ---------------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_gets_samples_reveal_strip_schedule_and_fid(tiny_shards, classifier, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    callbacks = [SampleGrid(samples_per_class=2, max_classes=3, reveal_samples=2), evaluation(classifier, tmp_path)]
    fit = eval_trainer(tmp_path, callbacks, logger=logger, max_steps=2, val_check_interval=2,
                       check_val_every_n_epoch=None)  # fmt: skip
    fit.fit(eval_module(), datamodule=shards_datamodule(tiny_shards))
    events = EventAccumulator(logger.log_dir).Reload()
    images = set(events.Tags()["images"])
    assert {"samples/grid", "samples/reveal", "schedule/curves"} <= images
    scalars = set(events.Tags()["scalars"])
    assert {"val/digits_fid", "val/digits_is", "val/loss"} <= scalars
    assert set(schedule_scalars(GenerationSchedule.heuristic(4))) <= scalars  # schedule/<field>/step_<t>
    fid = events.Scalars("val/digits_fid")[0]
    assert fid.step == events.Scalars("val/loss")[0].step and np.isfinite(fid.value)  # Lightning's val step
    assert json.loads((Path(logger.log_dir) / "eval_report.json").read_text())["global_step"] == 2


def test_a_logger_without_images_gets_the_pictures_as_files(tiny_shards, tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    logger = CSVLogger(tmp_path, name="csv")
    fit = eval_trainer(tmp_path, [SampleGrid(samples_per_class=2, max_classes=3, reveal_samples=2)], logger=logger,
                       max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)  # fmt: skip
    fit.fit(eval_module(), datamodule=shards_datamodule(tiny_shards))
    pictures = Path(logger.log_dir) / "pictures"
    assert sorted(p.name for p in pictures.iterdir()) == ["grid_step2.png", "reveal_step2.png", "schedule_step2.png"]
    assert Image.open(pictures / "grid_step2.png").size[0] > 2 * 4  # two 4x4 samples per row, padded
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(schedule_scalars(GenerationSchedule.heuristic(4))) <= set(metrics)  # through log_metrics


def test_reveal_strip_paints_masked_tokens():
    model = eval_module().eval()
    color = (0.3, 0.45, 0.85)
    strip = reveal_strip(model, torch.tensor([0, 1]), seed=0, mask_color=color)
    steps = model.schedule.steps
    assert strip.shape == (3, 2 * (4 + 2) + 2, (steps + 1) * (4 + 2) + 2)  # rows = samples, columns = T + 1 canvases
    first = strip[:, 2:6, 2:6]  # sample 0 before step 1: all masked
    assert torch.allclose(first, torch.tensor(color).view(3, 1, 1).expand(3, 4, 4))
    last = strip[:, 2:6, 2 + steps * 6 : 6 + steps * 6]  # after the last step: nothing masked, grey pixels
    assert torch.equal(last[0], last[1]) and torch.equal(last[1], last[2])
