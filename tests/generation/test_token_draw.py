"""The token draw: one uniform per token (inverse CDF) draws from the same distribution as a Gumbel per code and as
torch.multinomial, by a chi-square test that a shifted or mis-scaled draw fails; large codebooks use it, and a
schedule's ``draw`` chooses it for any codebook."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from lit_nat.generation.decoding import categorical_draw, make_generator
from lit_nat.generation.schedule import INVERSE_CDF_MIN_CODES, GenerationSchedule
from tests.generation.test_editing import K, N, model_for

#: a fixed, uneven distribution over 16 codes with two impossible ones (first and last)
PROBS = torch.tensor([0.0, 0.3, 0.2, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01, 0.01, 0.0])
DRAWS = 200_000


def counts_of(method: str, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    log_probs = PROBS.clamp_min(1e-45).log().expand(4, DRAWS // 4, -1)  # (B, N, K): a draw per position
    log_probs = log_probs.masked_fill(PROBS == 0, float("-inf"))
    ids = categorical_draw(log_probs, temperature, make_generator(seed, "cpu"), method=method)
    return torch.bincount(ids.flatten(), minlength=len(PROBS))


@pytest.mark.parametrize("method", ["inverse_cdf", "gumbel"])
def test_each_draw_matches_the_distribution_by_chi_square(method):
    counts = counts_of(method)
    assert counts[0] == 0 and counts[-1] == 0  # impossible codes are never drawn
    possible = PROBS > 0
    expected = PROBS[possible].double() / PROBS.double().sum() * int(counts.sum())
    assert chisquare(counts[possible].numpy(), expected.numpy()).pvalue > 1e-3
    shifted = counts[possible].roll(1)  # the power of the test: an off-by-one draw fails it by far
    assert chisquare(shifted.numpy(), expected.numpy()).pvalue < 1e-12


def test_inverse_cdf_and_multinomial_are_the_same_distribution_at_a_temperature():
    ours = counts_of("inverse_cdf", temperature=0.7)
    generator = make_generator(1, "cpu")
    tempered = torch.softmax(PROBS.clamp_min(1e-45).log() / 0.7, dim=0)
    reference = torch.bincount(torch.multinomial(tempered, DRAWS, replacement=True, generator=generator),
                               minlength=len(PROBS))  # fmt: skip
    table = torch.stack([ours, reference])[:, PROBS > 0].numpy()
    assert chi2_contingency(table).pvalue > 1e-3
    untempered = counts_of("inverse_cdf", temperature=1.0)  # and a wrong temperature is seen
    assert chi2_contingency(torch.stack([untempered, reference])[:, PROBS > 0].numpy()).pvalue < 1e-12


def test_large_codebooks_draw_by_inverse_cdf_small_ones_by_gumbel():
    large = torch.randn(2, 8, INVERSE_CDF_MIN_CODES).log_softmax(-1)
    draws = {m: categorical_draw(large, 1.0, make_generator(3, "cpu"), method=m) for m in ("inverse_cdf", "gumbel")}
    assert torch.equal(categorical_draw(large, 1.0, make_generator(3, "cpu")), draws["inverse_cdf"])
    small = large[..., :1024].log_softmax(-1)
    assert torch.equal(categorical_draw(small, 1.0, make_generator(3, "cpu")),
                       categorical_draw(small, 1.0, make_generator(3, "cpu"), method="gumbel"))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown token draw 'exp'; expected one of \['auto', 'gumbel'"):
        categorical_draw(small, 1.0, make_generator(3, "cpu"), method="exp")


@pytest.mark.parametrize("arch", ["uvit", "enat"])
def test_a_schedules_draw_reaches_the_loop_and_auto_keeps_the_gumbel_samples(arch):
    """``draw: auto`` on a small codebook is the Gumbel draw (the samples of earlier releases for a seed);
    ``inverse_cdf`` draws other tokens from the same seed and still reveals the schedule's counts."""
    model, labels = model_for(arch), torch.tensor([0, 1, 2, 0])
    base = GenerationSchedule.enat(4)

    def tokens(draw: str) -> torch.Tensor:
        schedule = GenerationSchedule.from_dict({**base.to_dict(), "draw": draw})
        return model.generate(labels, seed=0, schedule=schedule, return_history=True, use_ema=False)

    auto, gumbel, inverse = tokens("auto"), tokens("gumbel"), tokens("inverse_cdf")
    assert torch.equal(auto.ids, gumbel.ids)
    assert not torch.equal(inverse.ids, gumbel.ids)
    for t, ids in enumerate(inverse.history):
        assert ((ids == K).sum(dim=1) == base.masked_counts(N)[t]).all(), t


def test_a_schedule_carries_its_draw_through_presets_and_files(tmp_path):
    schedule = GenerationSchedule.preset("enat", steps=4, draw="inverse_cdf", reveal="halton")
    assert (schedule.draw, schedule.reveal) == ("inverse_cdf", "halton")
    path = schedule.save(tmp_path / "s.yaml")
    assert GenerationSchedule.load(path) == schedule
    old = {k: v for k, v in schedule.to_dict().items() if k != "draw"}  # files written before the field
    assert GenerationSchedule.from_dict(old).draw == "auto"
    assert GenerationSchedule.from_dict({**schedule.to_dict(), "draw": "gumbel"}) != schedule
    with pytest.raises(ValueError, match=r"s.yaml: draw is 'uniform'; expected one of \['auto', 'gumbel'"):
        GenerationSchedule.from_dict({**schedule.to_dict(), "draw": "uniform"}, source=str(tmp_path / "s.yaml"))


def test_the_schedule_search_keeps_the_start_schedules_draw():
    from lit_nat.search.session import SearchSession, SearchSettings

    start = GenerationSchedule.preset("enat", steps=4, draw="inverse_cdf")
    search = SearchSession(SearchSettings()).start(start)
    assert search.space.to_schedule(search.xi + 0.01).draw == "inverse_cdf"
    resumed = SearchSession(SearchSettings()).restore({"search": search.state_dict()})
    assert resumed.space.to_schedule(resumed.xi).draw == "inverse_cdf"
    old_state = {k: v for k, v in search.state_dict().items() if k != "draw"}  # a search saved before the field
    assert SearchSession(SearchSettings()).restore({"search": old_state}).space.draw == "auto"
