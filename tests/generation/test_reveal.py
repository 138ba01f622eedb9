"""Reveal policies: every policy reveals exactly the schedule's counts and never a kept token, with either backbone
family, guidance and editing; Halton's order is Halton-MaskGIT's; a schedule carries its policy through its files."""

from __future__ import annotations

import pytest
import torch

from lit_nat.generation.reveal import POLICIES, halton_order, halton_rank, radical_inverse
from lit_nat.generation.schedule import GenerationSchedule
from tests.generation.test_editing import GRID, K, N, canvas, model_for


def schedule_for(policy: str, steps: int = 4) -> GenerationSchedule:
    return GenerationSchedule.preset("heuristic", steps=steps, reveal=policy)


def test_radical_inverse_and_the_halton_order_by_hand():
    assert [radical_inverse(i, 2) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]
    assert [radical_inverse(i, 3) for i in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 1 / 9, 4 / 9])
    # 16x16: Halton points 1, 2, 3 are (1/2, 1/3), (1/4, 2/3), (3/4, 1/9) -> cells (8, 5), (4, 10), (12, 1); the same
    # leading cells as Halton-MaskGIT's build_halton_mask(16), whose whole order this equals (checked once against it
    # for 8, 16 and 32 a side)
    assert halton_order(16)[:3] == (8 * 16 + 5, 4 * 16 + 10, 12 * 16 + 1)
    for side in (4, 8, 16, 32):
        assert sorted(halton_order(side)) == list(range(side * side))  # every cell exactly once


@pytest.mark.parametrize("arch", ["uvit", "enat"])
@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_reveals_the_schedules_counts_and_keeps_kept_tokens(arch, policy):
    model, schedule = model_for(arch), schedule_for(policy)
    labels = torch.tensor([0, 1, 2])
    plain = model.generate(labels, seed=0, schedule=schedule, return_history=True, use_ema=False)
    for t, ids in enumerate(plain.history):
        assert ((ids == K).sum(dim=1) == schedule.masked_counts(N)[t]).all(), (policy, t)
    init, keep = canvas()
    edited = model.generate(labels, seed=0, schedule=schedule, return_history=True, use_ema=False, init_ids=init,
                            keep_mask=keep)  # fmt: skip
    for t, ids in enumerate(edited.history):
        assert torch.equal(ids[keep], init[keep]), (policy, t)  # kept tokens never re-masked nor changed
        for row in range(3):
            unknown = int((~keep[row]).sum())
            assert int((ids[row] == K).sum()) == schedule.counts_for(unknown)[t], (policy, t, row)
    previous = torch.zeros(3, N, dtype=torch.bool)
    for ids in plain.history:  # a revealed token stays revealed
        visible = ids != K
        assert (visible | ~previous).all()
        previous = visible


def test_halton_reveals_the_grid_in_halton_order_the_same_for_every_image():
    model, schedule = model_for("uvit"), schedule_for("halton")
    result = model.generate(torch.tensor([0, 1, 2, 0]), seed=3, schedule=schedule, return_history=True)
    order = list(halton_order(GRID))
    for t, ids in enumerate(result.history[:-1]):
        revealed = N - schedule.masked_counts(N)[t]
        want = torch.zeros(N, dtype=torch.bool)
        want[order[:revealed]] = True
        assert ((ids != K) == want).all(), t  # the first tokens of the order, in every row


def test_random_differs_by_seed_and_confidence_depends_on_the_model():
    model = model_for("uvit")
    labels = torch.tensor([0, 1])

    def first_revealed(policy, seed):
        ids = model.generate(labels, seed=seed, schedule=schedule_for(policy), return_history=True).history[0]
        return ids != K

    assert not torch.equal(first_revealed("random", 0), first_revealed("random", 1))
    assert torch.equal(first_revealed("random", 5), first_revealed("random", 5))
    assert torch.equal(first_revealed("halton", 0), first_revealed("halton", 1))


def test_a_schedule_carries_its_policy_through_files(tmp_path):
    schedule = schedule_for("halton", steps=8)
    path = schedule.save(tmp_path / "s.yaml")
    assert GenerationSchedule.load(path).reveal == "halton" and GenerationSchedule.load(path) == schedule
    assert GenerationSchedule.from_dict({**schedule.to_dict(), "reveal": "confidence"}) != schedule
    old = {k: v for k, v in schedule.to_dict().items() if k != "reveal"}  # files written before policies
    assert GenerationSchedule.from_dict(old).reveal == "confidence"
    with pytest.raises(ValueError, match=r"s.yaml: reveal is 'zigzag'; expected one of \['confidence', 'halton'"):
        GenerationSchedule.from_dict({**schedule.to_dict(), "reveal": "zigzag"}, source=str(tmp_path / "s.yaml"))
    with pytest.raises(ValueError, match="official strategy format has no reveal policy"):
        schedule.save(tmp_path / "official.yaml", official=True)
    with pytest.raises(ValueError, match="needs a square token grid; 12 tokens is not one"):
        halton_rank(12)


def test_titok_is_confidence_under_one_annealed_temperature():
    schedule = GenerationSchedule.preset("titok", steps=4, randomize_temperature=4.0)
    assert schedule.reveal == "confidence" and schedule.remask_temperature == [3.0, 2.0, 1.0, 0.0]
    assert schedule.sample_temperature == [3.0, 2.0, 1.0, 1e-3]  # TiTok's greedy last step, floored
    assert schedule.masked_counts(256)[:3] == [214, 170, 117]  # floor(256 arccos(rho) / (pi / 2))


def test_the_schedule_search_keeps_the_start_schedules_policy():
    from lit_nat.search.session import SearchSession, SearchSettings

    session = SearchSession(SearchSettings())
    search = session.start(schedule_for("halton", steps=4))
    probe = search.space.to_schedule(search.xi + 0.01)
    assert probe.reveal == "halton"
    resumed = SearchSession(SearchSettings()).restore({"search": search.state_dict()})
    assert resumed.space.to_schedule(resumed.xi).reveal == "halton"


def test_halton_roll_rotates_the_order_per_image_and_keeps_it_across_steps():
    """Halton-MaskGIT's ``randomize``: each image follows ``torch.roll(order, offset)`` with its own offset."""
    model, schedule = model_for("uvit"), schedule_for("halton_roll")
    result = model.generate(torch.tensor([0, 1, 2, 0, 1, 2]), seed=3, schedule=schedule, return_history=True)
    order = torch.tensor(halton_order(GRID))
    offsets = set()
    for row in range(6):
        fits = []
        for offset in range(N):  # the offsets whose rolled order explains every step of this row
            rolled = torch.roll(order, offset).tolist()
            ok = True
            for t, ids in enumerate(result.history[:-1]):
                want = torch.zeros(N, dtype=torch.bool)
                want[rolled[: N - schedule.masked_counts(N)[t]]] = True
                ok = ok and bool(((ids[row] != K) == want).all())
            fits += [offset] if ok else []
        assert len(fits) >= 1, row  # one rotation of the Halton order, held through all steps
        offsets.add(fits[0])
    assert len(offsets) > 1  # not the same rotation for every image
    again = model.generate(torch.tensor([0, 1, 2, 0, 1, 2]), seed=3, schedule=schedule, return_history=True)
    assert torch.equal(again.ids, result.ids)
