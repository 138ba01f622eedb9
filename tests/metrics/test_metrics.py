"""FID against reference statistics, Inception Score, reference .npz files and the offline feature extractors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from torch import nn
from torchmetrics.image import FrechetInceptionDistance
from torchmetrics.image import InceptionScore as TorchmetricsInceptionScore

from lit_nat.metrics import (
    FeatureStatistics,
    InceptionScore,
    ReferenceFID,
    build_extractor,
    load_reference_stats,
    save_reference_stats,
)
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier

D = 16


def feature_sets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated Gaussian feature sets with different means and covariances (real 300, generated 211)."""
    g = torch.Generator().manual_seed(seed)
    mix_real, mix_fake = torch.randn(D, D, generator=g), torch.randn(D, D, generator=g) * 0.7
    real = torch.randn(300, D, generator=g, dtype=torch.float64) @ mix_real.double() + 1.0
    fake = torch.randn(211, D, generator=g, dtype=torch.float64) @ mix_fake.double() + 0.5
    return real, fake


def direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The classic pytorch-fid computation in float64 with scipy's sqrtm (an independent implementation)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class Identity(nn.Module):
    """A torchmetrics "feature extractor" that returns its input, so torchmetrics sees our features directly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_fid_from_npz_reference_equals_direct_fid_and_torchmetrics(tmp_path):
    real, fake = feature_sets()
    save_reference_stats(
        tmp_path / "ref.npz", real.mean(0), torch.from_numpy(np.cov(real.numpy(), rowvar=False)),
        extractor="test", num_samples=len(real),
    )  # fmt: skip
    ref = load_reference_stats(tmp_path / "ref.npz", num_features=D, extractor="test")
    fid = ReferenceFID(ref.mu, ref.sigma, source=ref.path)
    for chunk in fake.split(50):  # several updates, as in validation
        fid.update(chunk.float() if chunk is fake[:50] else chunk)
    ours = float(fid.compute())
    assert fid.compute().dtype == torch.float64
    assert ours == pytest.approx(direct_fid(real.numpy(), fake.numpy()), rel=1e-6)

    torchmetrics_fid = FrechetInceptionDistance(feature=Identity(D))
    torchmetrics_fid.update(real, real=True)
    torchmetrics_fid.update(fake, real=False)
    assert ours == pytest.approx(float(torchmetrics_fid.compute()), rel=1e-6)
    assert ref.meta["num_samples"] == 300 and ref.meta["extractor"] == "test"


def test_statistics_match_numpy_and_sync_as_sums():
    real, _ = feature_sets(1)
    stats = FeatureStatistics(D)
    stats.update(real)
    mu, sigma, n = stats.compute()
    np.testing.assert_allclose(mu.numpy(), real.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(real.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    assert n == 300
    # three "ranks" with uneven shares; merging their states is what the DDP sum-reduction does
    ref_mu, ref_sigma = torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)
    ranks = [ReferenceFID(ref_mu, ref_sigma) for _ in range(3)]
    for metric, part in zip(ranks, (real[:7], real[7:150], real[150:])):
        metric.update(part)
    single = ReferenceFID(ref_mu, ref_sigma)
    single.update(real)
    ranks[0].merge_state(ranks[1])
    ranks[0].merge_state(ranks[2])
    assert float(ranks[0].compute()) == pytest.approx(float(single.compute()), rel=1e-10)
    assert "reference_mu" not in single.state_dict()  # buffers never enter checkpoints


def test_inception_score_equals_torchmetrics_single_split():
    logits = torch.randn(97, 10, generator=torch.Generator().manual_seed(3)) * 3
    ours = InceptionScore(10)
    for chunk in logits.split(20):
        ours.update(chunk)
    reference = TorchmetricsInceptionScore(feature=Identity(10), splits=1)
    reference.update(logits)
    assert float(ours.compute()) == pytest.approx(float(reference.compute()[0]), rel=1e-6)
    confident = InceptionScore(10)
    confident.update(torch.eye(10) * 100)  # one sure sample per class: the maximum, K
    assert float(confident.compute()) == pytest.approx(10.0, rel=1e-6)


# ------------------------------------------------------------------------------------------------ reference files
def test_reference_file_errors_name_the_file_and_the_key(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz.*'mu'"):
        load_reference_stats(missing)
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(4))
    with pytest.raises(ValueError, match=r"no_sigma.npz: missing key\(s\) \['sigma'\]"):
        load_reference_stats(tmp_path / "no_sigma.npz")
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"adm.npz: missing key\(s\) \['mu', 'sigma'\].*arr_0"):
        load_reference_stats(tmp_path / "adm.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(4), sigma=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"shape.npz: 'sigma' must be \(D, D\)"):
        load_reference_stats(tmp_path / "shape.npz")
    np.savez(tmp_path / "nan.npz", mu=np.full(4, np.nan), sigma=np.eye(4))
    with pytest.raises(ValueError, match="nan.npz: 'mu' has non-finite"):
        load_reference_stats(tmp_path / "nan.npz")
    np.savez(tmp_path / "d4.npz", mu=np.zeros(4), sigma=np.eye(4), extra=np.ones(1))
    with pytest.raises(ValueError, match=r"d4.npz: statistics have D = 4 features.*gives 2048"):
        load_reference_stats(tmp_path / "d4.npz", num_features=2048, extractor="inception")
    assert load_reference_stats(tmp_path / "d4.npz", num_features=4).num_features == 4  # extra keys are ignored
    save_reference_stats(tmp_path / "digits.npz", np.zeros(4), np.eye(4), extractor="digits-classifier/4",
                         num_samples=10)  # fmt: skip
    with pytest.raises(ValueError, match="digits.npz: 'extractor' is 'digits-classifier/4'"):
        load_reference_stats(tmp_path / "digits.npz", num_features=4, extractor="inception-v3-2015-12-05/official")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz: not a readable .npz"):
        load_reference_stats(tmp_path / "text.npz")


def test_feature_size_must_match_the_metric():
    fid = ReferenceFID(torch.zeros(4), torch.eye(4), source="ref.npz")
    with pytest.raises(ValueError, match=r"features of shape \(B, 4\), got \(2, 5\)"):
        fid.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fid.compute()


# ------------------------------------------------------------------------------------------------ extractors
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """Random weights in the official FID Inception layout (torch-fidelity's and pytorch-fid's files share it: the
    torchvision Inception v3 key set with 1008 classes), He-initialised so activations stay O(1)."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def test_inception_from_local_weights_matches_torch_fidelity(inception_weights, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    official = build_extractor("inception", inception_weights)
    features, logits = official(images)
    assert features.shape == (1, 2048) and logits.shape == (1, 1008) and features.std() > 1e-3
    assert official.identity == "inception-v3-2015-12-05/official"
    # the official preprocessing: bilinear to 299 without antialias, then 2x - 1; grey images are repeated to RGB
    want = 2 * torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", antialias=False) - 1
    torch.testing.assert_close(official.preprocess(images), want)
    torch.testing.assert_close(
        official.preprocess(images[:, :1]), official.preprocess(images[:, :1].repeat(1, 3, 1, 1))
    )

    # the torch-fidelity protocol gives torch-fidelity's own features and unbiased logits, bit for bit
    compat = build_extractor("inception", inception_weights, protocol="torch-fidelity")
    reference = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=inception_weights
    )
    with torch.no_grad():
        want_features, want_logits = reference((images * 255).round().to(torch.uint8))
    ours_features, ours_logits = compat(images)
    torch.testing.assert_close(ours_features, want_features)
    torch.testing.assert_close(ours_logits, want_logits)

    # a pytorch-fid / DataParallel-style file: "module." prefixes and the auxiliary head are accepted
    state = torch.load(inception_weights, weights_only=True)
    aux = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=1008)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    prefixed.update({f"module.{k}": v for k, v in aux.state_dict().items() if k.startswith("AuxLogits.")})
    torch.save(prefixed, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    other = build_extractor("inception", tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), official.state_dict().values()))


def test_extractor_weight_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"missing.pth do not exist.*weights-inception-2015-12-05"):
        build_extractor("inception", tmp_path / "missing.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache, offline: no weights, no download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not in the torch.hub cache .*weights-inception-2015-12-05"):
        build_extractor("inception", None)
    save_digits_classifier(DigitsClassifier(), tmp_path / "digits_classifier.pt")
    with pytest.raises(ValueError, match=r"digits_classifier.pt: cannot read Inception weights|not FID Inception"):
        build_extractor("inception", tmp_path / "digits_classifier.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt do not exist.*digits_classifier.pt"):
        build_extractor("digits", tmp_path / "nope.pt")
    torch.save({"format": "something/else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a digits classifier file"):
        build_extractor("digits", tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown feature extractor 'dino'.*digits"):
        build_extractor("dino", None)


def test_digits_extractor_and_rng_isolation(tmp_path):
    save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt", val_accuracy=0.5)
    state = torch.random.get_rng_state()
    extractor = build_extractor("digits", tmp_path / "clf.pt")
    assert torch.equal(state, torch.random.get_rng_state()), "building an extractor must not consume the global RNG"
    features, logits = extractor(torch.rand(3, 3, 4, 4))  # colour and another size are adapted
    assert features.shape == (3, 64) and logits.shape == (3, 10)
    assert extractor.metric_prefix == "digits_" and extractor.num_logits == 10


def test_digits_preparation_writes_classifier_and_reference_stats(tmp_path):
    from lit_nat.data import ensure_prepared
    from lit_nat.demos.digits import CLASSIFIER_FILE, REFERENCE_FILES, prepare_digits

    root = tmp_path / "digits"
    prepare_digits(root)
    info = torch.load(root / CLASSIFIER_FILE, weights_only=True)["info"]
    assert info["val_accuracy"] > 0.9
    extractor = build_extractor("digits", root / CLASSIFIER_FILE)
    train = load_reference_stats(root / REFERENCE_FILES["train"], extractor.num_features, extractor.identity)
    assert train.meta["num_samples"] == 1617
    # a root prepared before these files existed is completed in place, identically (the shards decode exactly)
    for name in (CLASSIFIER_FILE, *REFERENCE_FILES.values()):
        (root / name).unlink()
    ensure_prepared(root, "digits")
    again = load_reference_stats(root / REFERENCE_FILES["train"], extractor.num_features, extractor.identity)
    np.testing.assert_allclose(again.mu, train.mu, rtol=1e-6, atol=1e-9)
