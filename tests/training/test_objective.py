"""Mask-ratio laws, batch masking and the masked-token loss."""

import math

import pytest
import torch

from lit_nat.conditioning.conditioner import drop_labels
from lit_nat.training.objective import (
    IGNORE_INDEX,
    ArccosLaw,
    BetaLaw,
    FixedLaw,
    UniformLaw,
    apply_mask,
    build_mask_ratio_law,
    masked_counts,
    masked_token_loss,
    random_mask,
    sample_training_mask,
)


def test_beta_law_matches_its_moments():
    torch.manual_seed(0)
    r = BetaLaw(12, 3).sample(200_000)
    assert r.min() >= 0 and r.max() <= 1
    assert r.mean().item() == pytest.approx(0.8, abs=2e-3)
    assert r.std().item() == pytest.approx(0.1, abs=2e-3)  # sqrt(ab / ((a+b)^2 (a+b+1))) = 0.1


def test_arccos_law_matches_its_cdf():
    # p(r) = 2 / (pi sqrt(1 - r^2)) has CDF F(r) = 2 arcsin(r) / pi.
    torch.manual_seed(0)
    r = ArccosLaw().sample(200_000)
    for q in (0.25, 0.5, 0.9):
        assert (r <= q).float().mean().item() == pytest.approx(2 * math.asin(q) / math.pi, abs=4e-3)
    assert r.mean().item() == pytest.approx(ArccosLaw().mean(), abs=4e-3)


def test_fixed_and_uniform_laws():
    assert torch.all(FixedLaw(0.8).sample(10) == 0.8)
    torch.manual_seed(0)
    r = UniformLaw(0.2, 0.6).sample(100_000)
    assert r.min() >= 0.2 and r.max() <= 0.6
    assert r.mean().item() == pytest.approx(0.4, abs=3e-3)


def test_build_law_errors_name_the_problem():
    assert build_mask_ratio_law("beta", {"alpha": 2, "beta": 5}) == BetaLaw(2, 5)
    with pytest.raises(ValueError, match="unknown mask_ratio_law 'gauss'"):
        build_mask_ratio_law("gauss")
    with pytest.raises(ValueError, match=r"\['gamma'\]"):
        build_mask_ratio_law("beta", {"gamma": 1})
    with pytest.raises(ValueError, match="alpha and beta must be > 0"):
        BetaLaw(0, 3)


def test_count_rule_rounds_and_clamps():
    ratios = torch.tensor([0.0, 0.001, 0.5, 0.501953125, 0.999, 1.0])
    # round(r * 256): 0 -> clamp 1, 0.256 -> 1, 128, 128.5 -> 128 (round half to even), 255.7 -> 256, 256
    assert masked_counts(ratios, 256).tolist() == [1, 1, 128, 128, 256, 256]
    # ENAT keeps at least one visible token
    assert masked_counts(ratios, 256, min_visible=1).tolist() == [1, 1, 128, 128, 255, 255]


def test_random_mask_has_exact_counts_and_is_uniform():
    torch.manual_seed(0)
    counts = torch.tensor([0, 1, 7, 16])
    mask = random_mask(counts, 16)
    assert mask.sum(1).tolist() == [0, 1, 7, 16]
    # every position is equally likely to be masked
    freq = random_mask(torch.full((20_000,), 4), 16).float().mean(0)
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.02)


def test_per_batch_ratio_gives_equal_counts():
    torch.manual_seed(0)
    mask = sample_training_mask(BetaLaw(), 32, 64, "cpu", per_sample=False, min_visible=1)
    counts = mask.sum(1)
    assert torch.all(counts == counts[0]) and 1 <= counts[0] <= 63
    per_sample = sample_training_mask(BetaLaw(2, 2), 64, 64, "cpu", per_sample=True).sum(1)
    assert per_sample.unique().numel() > 1


def test_loss_counts_only_masked_tokens():
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (4, 16))
    mask = random_mask(torch.tensor([3, 5, 8, 16]), 16)
    inputs, targets = apply_mask(ids, mask, mask_id=10)
    assert torch.all(inputs[mask] == 10) and torch.all(inputs[~mask] == ids[~mask])
    assert torch.all(targets[~mask] == IGNORE_INDEX)

    logits = torch.randn(4, 16, 10, requires_grad=True)
    loss, acc = masked_token_loss(logits, targets, label_smoothing=0.0)
    expected = torch.nn.functional.cross_entropy(logits[mask], ids[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # visible positions receive no gradient at all
    assert torch.all(logits.grad[~mask] == 0) and torch.any(logits.grad[mask] != 0)
    # changing logits at visible positions changes nothing
    tampered = logits.detach().clone()
    tampered[~mask] = 1e3
    assert masked_token_loss(tampered, targets, 0.0)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert 0 <= acc.item() <= 1


def test_label_smoothing_and_accuracy():
    ids = torch.tensor([[1, 2, 3, 4]])
    targets = ids.clone()
    logits = torch.nn.functional.one_hot(ids, 5).float() * 20
    loss0, acc = masked_token_loss(logits, targets, 0.0)
    loss1, _ = masked_token_loss(logits, targets, 0.1)
    assert acc.item() == 1.0 and loss1 > loss0


def test_drop_labels_rate():
    torch.manual_seed(0)
    labels = torch.zeros(100_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.15, null_class=1000)
    assert set(dropped.unique().tolist()) == {0, 1000}
    assert (dropped == 1000).float().mean().item() == pytest.approx(0.15, abs=5e-3)
    assert torch.equal(drop_labels(labels, 0.0, 1000), labels)


def test_previous_step_mask_is_a_superset_with_exact_counts():
    from lit_nat.training.objective import previous_step_mask

    torch.manual_seed(0)
    mask = random_mask(torch.full((6,), 10), 32)
    for fraction, expected in ((0.0, 10), (0.5, 21), (1.0, 32)):
        previous, count = previous_step_mask(mask, 10, fraction)
        assert count == expected
        assert torch.all(previous.sum(1) == expected)
        assert torch.all(previous[mask])  # everything masked now was masked before
