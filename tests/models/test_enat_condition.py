"""ENAT's step-invariant condition: prepared once per decoding call, the same tokens as preparing it at every step."""

import pytest
import torch
from torch import nn

from lit_nat.conditioning.condition import TextCondition
from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import ENAT, ENATCondition
from lit_nat.models.flops import WithoutReuse, generation_flops
from tests.helpers.tiny import ENAT_BACKBONE, C, D, K, N

TEXT_WIDTH, TEXT_LENGTH = 24, 5


TOKEN_SPACE = ("codebook_size", "mask_id", "num_classes", "null_class", "num_tokens", "grid_size")


class PerStep(nn.Module):
    """The backbone without ``prepare_condition``: every step gets the raw condition, as before the cache."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        for name in TOKEN_SPACE:
            setattr(self, name, getattr(backbone, name))

    def forward(self, ids, condition, state=None, num_masked=None):
        assert not isinstance(condition, ENATCondition)
        return self.backbone(ids, condition, state, num_masked=num_masked)


class CountingPrepare(nn.Module):
    """Forwards to the backbone and counts how often the loop prepares a condition."""

    def __init__(self, backbone: ENAT) -> None:
        super().__init__()
        self.backbone, self.prepared = backbone, 0

    def prepare_condition(self, condition):
        self.prepared += 1
        return self.backbone.prepare_condition(condition)

    def forward(self, ids, condition, state=None, num_masked=None):
        assert isinstance(condition, ENATCondition)
        return self.backbone(ids, condition, state, num_masked=num_masked)


def random_enat(text: bool = False) -> ENAT:
    torch.manual_seed(0)
    context = {"context_dim": TEXT_WIDTH, "context_length": TEXT_LENGTH} if text else {}
    model = ENAT(**ENAT_BACKBONE, **context).eval()
    for block in model.blocks:  # adaLN-Zero starts every block as the identity; make the condition matter
        nn.init.normal_(block.modulation.weight, std=0.05)
    return model


def text_condition(rows: int, seed: int) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(rows, TEXT_LENGTH, TEXT_WIDTH, generator=g),
                         torch.ones(rows, TEXT_LENGTH, dtype=torch.bool),
                         torch.randn(rows, TEXT_WIDTH, generator=g))  # fmt: skip


def sample(backbone: nn.Module, condition, null_condition, reuse: bool = True) -> torch.Tensor:
    backbone = backbone if reuse else WithoutReuse(backbone)
    schedule = GenerationSchedule.enat(6)
    with torch.no_grad():
        return generate(backbone, condition, schedule, make_generator(5, "cpu"), num_tokens=N, mask_id=K,
                        null_condition=null_condition, return_history=True)  # fmt: skip


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("text", [False, True])
def test_prepared_condition_gives_the_same_tokens_as_per_step(text, reuse):
    model = random_enat(text)
    condition, null = (text_condition(3, 1), text_condition(3, 2)) if text else (torch.tensor([0, 3, 7]), C)
    prepared = sample(model, condition, null, reuse)
    per_step = sample(PerStep(model), condition, null, reuse)
    assert torch.equal(prepared.ids, per_step.ids)
    assert all(torch.equal(a, b) for a, b in zip(prepared.history, per_step.history))


def test_the_loop_prepares_once_per_call():
    counting = CountingPrepare(random_enat())
    sample(counting, torch.tensor([1, 2]), C)
    assert counting.prepared == 1


def test_prepared_logits_equal_and_rows_are_checked():
    model = random_enat()
    ids = torch.randint(0, K + 1, (2, N), generator=torch.Generator().manual_seed(0))
    ids[:, : N // 2] = K  # same masked count in both rows
    ids[:, N // 2 :] = ids[:, N // 2 :].clamp(max=K - 1)
    labels = torch.tensor([4, C])
    with torch.no_grad():
        direct, _ = model(ids, labels)
        prepared, _ = model(ids, model.prepare_condition(labels))
        assert torch.equal(direct, prepared)
        with pytest.raises(ValueError, match="condition has 3 rows but ids has 2"):
            model(ids, model.prepare_condition(torch.tensor([1, 2, 3])))
    assert len(model.prepare_condition(labels).modulations) == len(model.blocks)
    assert model.prepare_condition(labels).modulations[0].shape == (2, 8 * D)


def test_flops_count_the_modulations_once():
    model = random_enat()
    schedule = GenerationSchedule.enat(6)
    per_step = generation_flops(model, schedule, guided=True)
    modulations = 2 * 2 * D * 8 * D * len(model.blocks)  # two rows, one (D x 8D) product per block
    unprepared = generation_flops(PerStep(model), schedule, guided=True)
    assert sum(unprepared) - sum(per_step) == (schedule.steps - 1) * modulations

