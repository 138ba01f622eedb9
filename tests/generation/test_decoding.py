"""The decoding loop, with a toy backbone that follows the backbone call contract."""

import pytest
import torch
from torch import nn

from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from tests.helpers.schedules import OFFICIAL_T8

K, N, CLASSES = 12, 64, 5


class ToyBackbone(nn.Module):
    """Logits depend on the ids, the position and the class; records what it was called with."""

    def __init__(self, codebook_size=K, num_tokens=N, num_classes=CLASSES):
        super().__init__()
        torch.manual_seed(0)
        self.token = nn.Embedding(codebook_size + 1, codebook_size)
        self.position = nn.Parameter(torch.randn(num_tokens, codebook_size))
        self.label = nn.Embedding(num_classes + 1, codebook_size)
        self.calls = []

    def forward(self, ids, condition, state=None, num_masked=None):
        if num_masked is not None:  # the loop's count must be the true count of every row
            assert torch.all((ids == K).sum(1) == num_masked)
        self.calls.append((ids.clone(), condition.clone(), state))
        context = self.token(ids).mean(1, keepdim=True)  # every position sees every token
        logits = self.token(ids) + self.position + self.label(condition)[:, None] + context
        return logits, (0 if state is None else state + 1)


def run(schedule, seed=0, labels=None, backbone=None, history=True):
    backbone = backbone or ToyBackbone()
    labels = labels if labels is not None else torch.arange(8) % CLASSES
    out = generate(
        backbone,
        labels,
        schedule,
        make_generator(seed, "cpu"),
        num_tokens=N,
        mask_id=K,
        null_condition=CLASSES,
        return_history=history,
    )
    return out, backbone


SCHEDULES = {
    "heuristic": GenerationSchedule.heuristic(8),
    "enat": GenerationSchedule.enat(8),
    "autonat-official": GenerationSchedule.from_official(OFFICIAL_T8),
    "one-step": GenerationSchedule.heuristic(1),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_exact_masked_count_per_step(name):
    schedule = SCHEDULES[name]
    out, _ = run(schedule)
    counts = [int(c) for c in ((h == K).sum(1).unique() for h in out.history)]
    assert counts == schedule.masked_counts(N)
    assert torch.all(out.ids < K)  # the mask id is never produced


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_visible_tokens_are_never_remasked_or_changed(name):
    out, _ = run(SCHEDULES[name])
    previous = torch.full_like(out.ids, K)
    for ids in out.history:
        was_visible = previous != K
        assert torch.all(ids[was_visible] == previous[was_visible])
        previous = ids


def test_same_seed_same_tokens_different_seed_different_tokens():
    schedule = GenerationSchedule.heuristic(4)
    a, _ = run(schedule, seed=7)
    b, _ = run(schedule, seed=7)
    c, _ = run(schedule, seed=8)
    assert torch.equal(a.ids, b.ids)
    assert not torch.equal(a.ids, c.ids)


def test_guidance_is_one_batched_forward_with_null_labels():
    schedule = GenerationSchedule.enat(4)  # guidance 0 at step 0 but > 0 later: both branches every step
    labels = torch.tensor([0, 1, 2])
    out, backbone = run(schedule, labels=labels)
    assert len(backbone.calls) == 4
    for step, (ids, condition, state) in enumerate(backbone.calls):
        assert ids.shape == (6, N)
        assert torch.equal(ids[:3], ids[3:])
        assert condition.tolist() == [0, 1, 2, CLASSES, CLASSES, CLASSES]
        assert state == (None if step == 0 else step - 1)  # the state is threaded through the steps


def test_no_guidance_runs_only_the_conditional_branch():
    schedule = GenerationSchedule.heuristic(3, guidance=0.0)
    _, backbone = run(schedule, labels=torch.tensor([1, 2]))
    assert all(ids.shape[0] == 2 for ids, _, _ in backbone.calls)


def test_guidance_changes_the_result():
    base = GenerationSchedule.heuristic(4, guidance=0.0)
    strong = GenerationSchedule.heuristic(4, guidance=5.0)
    assert not torch.equal(run(base)[0].ids, run(strong)[0].ids)


def test_low_temperature_is_greedy():
    # one step, tiny temperature: every token is the argmax of the conditional logits
    schedule = GenerationSchedule([0.0], [1e-6], [0.0], [0.0])
    labels = torch.tensor([0, 3])
    out, backbone = run(schedule, labels=labels)
    logits, _ = backbone(torch.full((2, N), K), labels)
    assert torch.equal(out.ids, logits.argmax(-1))


def test_remask_picks_least_confident_without_noise():
    # with tau2 -> 0 the re-masked positions are exactly the lowest-confidence draws
    torch.manual_seed(0)
    schedule = GenerationSchedule([0.5, 0.0], [1e-6, 1e-6], [1e-8, 0.0], [0.0, 0.0])
    labels = torch.tensor([1])
    out, backbone = run(schedule, labels=labels)
    logits, _ = backbone(torch.full((1, N), K), labels)
    confidence = torch.log_softmax(logits, -1).max(-1).values
    expected_masked = confidence.topk(32, largest=False).indices.sort().values
    assert torch.equal((out.history[0][0] == K).nonzero().squeeze(1), expected_masked[0])


@pytest.mark.gpu  # skipped without a CUDA device (tests/conftest.py)
def test_loop_has_no_host_sync_on_gpu():
    backbone = ToyBackbone().cuda()
    labels = torch.arange(4, device="cuda")
    schedule = GenerationSchedule.heuristic(4)
    generate(backbone, labels, schedule, make_generator(0, "cuda"), num_tokens=N, mask_id=K, null_condition=CLASSES)
    torch.cuda.set_sync_debug_mode("error")
    try:
        generate(backbone, labels, schedule, make_generator(0, "cuda"), num_tokens=N, mask_id=K, null_condition=CLASSES)
    finally:
        torch.cuda.set_sync_debug_mode("default")
