"""``python -m lit_nat evaluate``: the validation's FID of the same images, identical files, both Inception Scores,
precision/recall, the protocol report and its warnings, and one-line errors for bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat.commands.cli import main
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
from lit_nat.metrics.evaluate import EvaluateRequest, evaluate
from lit_nat.metrics.evaluate_inputs import update_splits
from lit_nat.metrics.fid import InceptionScore
from lit_nat.metrics.precision_recall import manifold_radii, precision_recall


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    """An untrained, seeded digits classifier, scaled so that its features spread and its class probabilities are not
    all near uniform (an Inception Score well above 1): a small, fast, deterministic feature extractor."""
    torch.manual_seed(1)
    model = DigitsClassifier()
    with torch.no_grad():
        model.body[6].weight.mul_(10.0)  # the feature layer
        model.body[6].bias.mul_(10.0)
        model.head.weight.mul_(200.0)
    return save_digits_classifier(model, tmp_path / "clf.pt")


def write_samples(path: Path, n: int, seed: int = 0, side: int = 8, labels: np.ndarray | None = None) -> Path:
    """An ADM-layout .npz of random grey images (uint8 N x side x side x 3) with class-balanced labels (or these)."""
    grey = np.random.default_rng(seed).integers(0, 256, (n, side, side, 1), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else labels
    np.savez(path, arr_0=np.repeat(grey, 3, axis=3), arr_1=labels.astype(np.int64))
    return path


def request(samples: Path, reference: Path, classifier: Path, **kwargs) -> EvaluateRequest:
    defaults = dict(extractor="digits", weights_path=str(classifier), device="cpu", batch_size=32, paper_samples=None)
    return EvaluateRequest(samples=str(samples), reference=str(reference), **{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------- validation's FID
def test_evaluate_of_a_sample_npz_equals_the_validation_fid_of_the_same_images(tmp_path, classifier):
    """``sample`` writes the validation plan's images (same seeds, labels, batches); their decoded grey levels k/15 are
    uint8 levels, so the file holds validation's images exactly and ``evaluate`` must give validation's FID."""
    from lit_nat.callbacks import GenerativeEvaluation
    from lit_nat.commands.sample import SampleRequest, run_sample
    from lit_nat.training.module import NATModule
    from tests.conftest import write_random_shards
    from tests.helpers.tiny import UVIT_ONE_BLOCK_ARCH, eval_trainer, shards_datamodule, tiny_trainer

    tokenizer = {"name": "pixel", "levels": 16, "image_size": 4, "channels": 3}
    root = write_random_shards(tmp_path / "shards", codebook_size=16, grid=4, num_classes=3, tokenizer=tokenizer)
    torch.manual_seed(0)
    model = NATModule(arch="autonat-tiny", arch_overrides=UVIT_ONE_BLOCK_ARCH, codebook_size=16, grid_size=4,
                      num_classes=3, tokenizer=tokenizer, schedule_params={"steps": 4})  # fmt: skip
    callback = GenerativeEvaluation(extractor="digits", weights_path=str(classifier), num_samples=30, batch_size=10,
                                    seed=3, reference_stats=str(tmp_path / "ref.npz"),
                                    reference_split="val")  # fmt: skip
    eval_trainer(tmp_path, [callback]).validate(model, datamodule=shards_datamodule(root), verbose=False)
    validation_fid = callback.last["fid"]

    plan = SampleRequest(num_samples=30, batch_size=10, seed=3, out=str(tmp_path / "s.npz"), grid_samples=3)
    npz = run_sample(tiny_trainer(tmp_path), model, None, plan)
    report = evaluate(request(npz, tmp_path / "ref.npz", classifier, batch_size=10, out=str(tmp_path / "r.json")))
    print(f"validation digits-FID-30 {validation_fid!r}, evaluate {report['fid']!r}")
    assert report["metric"] == callback.last["metric"] == "digits-FID-30"
    assert report["fid"] == pytest.approx(validation_fid, rel=1e-6, abs=1e-9)
    assert report["inception_score"]["single_split"] == pytest.approx(callback.last["inception_score"], rel=1e-6)
    assert report["protocol"]["label_balance"]["counts"] == {"0": 10, "1": 10, "2": 10}
    assert report["precision"] is None and "statistics only" in report["precision_recall_note"]
    assert json.loads((tmp_path / "r.json").read_text())["fid"] == report["fid"]


# ------------------------------------------------------------------------------------------------- identical files
def test_two_identical_files_have_zero_fid_and_full_precision_and_recall(tmp_path, classifier):
    # 200 images of 64-d features: full-rank covariances (with N <= D the eigenvalue square roots of a singular
    # sigma @ sigma leave ~1e-8 of rounding; here it is ~1e-13)
    a = write_samples(tmp_path / "a.npz", 200)
    b = tmp_path / "b.npz"
    b.write_bytes(a.read_bytes())
    report = evaluate(request(a, b, classifier, out=str(tmp_path / "r.json")))
    assert abs(report["fid"]) < 1e-6
    assert report["precision"] == report["recall"] == 1.0
    reference = report["protocol"]["reference"]
    assert reference["kind"] == "images" and reference["num_images"] == 200
    assert reference["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert report["protocol"]["extractor_weights_sha256"] == hashlib.sha256(classifier.read_bytes()).hexdigest()
    # an image folder of the same pictures is the same set of images
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(np.load(a)["arr_0"]):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    from_folder = evaluate(request(folder, a, classifier, out=str(tmp_path / "f.json")))
    assert abs(from_folder["fid"]) < 1e-6 and from_folder["protocol"]["samples_kind"] == "folder"
    assert from_folder["protocol"]["label_balance"] is None


# ------------------------------------------------------------------------------------------------- Inception Scores
def test_adm_splits_are_consecutive_runs_and_the_single_split_is_all_images(tmp_path, classifier):
    logits = torch.randn(95, 10, generator=torch.Generator().manual_seed(0))
    splits: list[InceptionScore] = []
    for start in range(0, 95, 7):  # batches that straddle split boundaries
        update_splits(splits, logits[start : start + 7], start, 10)
    assert len(splits) == 10  # 9 of 10 images and one of 5: ADM keeps a last, shorter split
    for index, metric in enumerate(splits):
        direct = InceptionScore(10)
        direct.update(logits[index * 10 : index * 10 + 10])
        assert float(metric.compute()) == pytest.approx(float(direct.compute()), rel=1e-12)

    samples = write_samples(tmp_path / "s.npz", 100)
    report = evaluate(request(samples, samples, classifier, is_split_size=10, out=str(tmp_path / "r.json")))
    scores = report["inception_score"]
    assert scores["adm_splits"] == 10 and scores["adm_split_size"] == 10 and scores["adm_std"] > 0
    assert "val/is" in scores["single_split_is"] and "ADM" in scores["adm_is"]
    # the marginal of 10 images is sharper than that of 100: split scores are lower than the single split
    assert scores["adm_mean"] < scores["single_split"]
    whole = evaluate(request(samples, samples, classifier, is_split_size=100, out=str(tmp_path / "w.json")))
    assert whole["inception_score"]["adm_mean"] == pytest.approx(whole["inception_score"]["single_split"], rel=1e-12)


# ------------------------------------------------------------------------------------------------- precision/recall
def test_precision_and_recall_of_identical_overlapping_and_far_apart_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # a generated set inside a quarter of the real one: precise, but covering little of it
    narrow = torch.randn(300, 8, generator=g) * 0.3
    precision, recall = precision_recall(real, narrow)
    assert precision > 0.9 and recall < 0.5
    # the radius is the squared distance to the 3rd nearest *other* point (the middle one of 0..4: 1, 1, 2, 2 away)
    line = torch.arange(5.0)[:, None]
    assert manifold_radii(line).tolist() == [9.0, 4.0, 4.0, 4.0, 9.0]
    with pytest.raises(ValueError, match="needs more than 3 points, got 3"):
        manifold_radii(line[:3])


# ------------------------------------------------------------------------------------------------- report warnings
def test_the_report_warns_of_few_samples_unbalanced_labels_and_another_resolution(tmp_path, classifier, capsys):
    samples = write_samples(tmp_path / "s.npz", 10, labels=np.array([0] * 8 + [1] * 2))
    reference = write_samples(tmp_path / "ref.npz", 40, seed=1, side=16)
    main(["evaluate", f"--samples={samples}", f"--reference={reference}", "--extractor=digits",
          f"--weights_path={classifier}", "--device=cpu", "--paper_samples=50000",
          f"--out={tmp_path / 'r.json'}"])  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    warnings = report["warnings"]
    assert any(w.startswith("10 samples where the paper's table used 50000") and "FID-50k" in w for w in warnings)
    assert any("labels are not balanced: 2 to 8 images per label over 2 labels" in w for w in warnings)
    assert any("samples are 8x8 but the reference images are 16x16" in w for w in warnings)
    assert any("not comparable with published (Inception) FIDs" in w for w in warnings)
    printed = capsys.readouterr().out.splitlines()
    assert [line.removeprefix("evaluate: warning: ") for line in printed if "warning:" in line] == warnings
    protocol = report["protocol"]
    assert protocol["num_samples"] == 10 and protocol["image_size"] == [8, 8] and protocol["paper_samples"] == 50000
    assert protocol["label_balance"]["balanced"] is False and protocol["lit_nat_version"]
    assert "resized by the digits extractor" in protocol["resize"]
    assert report["precision"] is not None  # the reference is images: precision/recall computed


# ------------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, classifier):
    reference = write_samples(tmp_path / "ref.npz", 20)
    np.savez(tmp_path / "no_images.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_a_zip.npz").write_text("hello")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    cases = {
        "no_images.npz": (ValueError, r"no_images.npz: no 'arr_0' \(it has \['images'\]\); expected ADM's layout"),
        "missing.npz": (FileNotFoundError, r"missing.npz does not exist; expected an .npz in ADM's layout"),
        "empty": (ValueError, r"image folder .*empty holds no images"),
        "not_a_zip.npz": (ValueError, r"not_a_zip.npz: not a readable .npz file"),
        "float.npz": (ValueError, r"float.npz: 'arr_0' is float32 \(2, 8, 8, 3\), expected ADM's layout"),
    }
    for name, (error, message) in cases.items():
        with pytest.raises(error, match=message) as info:
            evaluate(request(tmp_path / name, reference, classifier))
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"reference .*nowhere.npz does not exist"):
        evaluate(request(reference, tmp_path / "nowhere.npz", classifier))
    with pytest.raises(ValueError, match=r"no_images.npz: neither 'mu'/'sigma' \(reference statistics\) nor 'arr_0'"):
        evaluate(request(reference, tmp_path / "no_images.npz", classifier))


def test_an_adm_reference_batch_gives_its_statistics_fid_and_its_images_precision_recall(tmp_path, classifier):
    """ADM's VIRTUAL_*.npz hold mu/sigma beside arr_0: the FID uses the statistics (as validation does), precision and
    recall the images."""
    samples = write_samples(tmp_path / "s.npz", 50)
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=64), np.cov(rng.normal(size=(100, 64)), rowvar=False)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "batch.npz", mu=mu, sigma=sigma, arr_0=np.load(samples)["arr_0"])
    stats_only = evaluate(request(samples, tmp_path / "stats.npz", classifier, out=str(tmp_path / "a.json")))
    batch = evaluate(request(samples, tmp_path / "batch.npz", classifier, out=str(tmp_path / "b.json")))
    assert batch["protocol"]["reference"]["kind"] == "statistics+images"
    assert batch["protocol"]["reference"]["num_images"] == 50 and batch["protocol"]["reference"]["image_size"] == [8, 8]
    assert batch["fid"] == stats_only["fid"] > 1  # the statistics, not the (identical) images
    assert batch["precision"] == batch["recall"] == 1.0 and stats_only["precision"] is None
