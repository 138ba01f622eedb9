"""Compile modes of the decoding loop (``lit_nat.generation.compiled``): ``freeze`` gives eager's tokens through
ENAT's loop (its token counts change step by step, so the graph is recompiled under freezing), refuses a
gradient-enabled call and keeps the backbone's attributes; bad modes are one line. (``sample --compile``:
``tests/commands/test_sample.py``.)"""

from __future__ import annotations

import pytest
import torch

from lit_nat.generation.compiled import FrozenCompiled, SamplingCompiler, check_compile_mode, compile_for_sampling
from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import build_backbone
from tests.helpers.tiny import ENAT_ARCH


def tiny_enat() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("enat-s", codebook_size=12, grid_size=4, num_classes=3, overrides=ENAT_ARCH).eval()


def sample(backbone: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return generate(backbone, torch.tensor([0, 2]), GenerationSchedule.enat(2), make_generator(0, "cpu"),
                        num_tokens=16, mask_id=12, null_condition=3).ids  # fmt: skip


def test_freeze_keeps_the_backbones_attributes_and_needs_no_grad():
    eager = tiny_enat()
    frozen = compile_for_sampling(eager, "freeze")
    assert isinstance(frozen, FrozenCompiled) and frozen.mask_id == eager.mask_id and frozen.backbone is eager
    assert frozen.prepare_condition.__func__ is eager.prepare_condition.__func__  # what the loop asks the backbone
    assert list(frozen.state_dict()) == [f"backbone.{name}" for name in eager.state_dict()]  # the weights once
    with pytest.raises(RuntimeError, match="torch.no_grad"):  # (before anything is compiled)
        frozen(torch.zeros(1, 16, dtype=torch.long), torch.tensor([0]), None, num_masked=16)
    assert compile_for_sampling(eager, "false") is eager and SamplingCompiler()(eager) is eager
    compiler = SamplingCompiler("freeze")
    assert compiler(eager) is compiler(eager)  # compiled once per backbone


@pytest.mark.slow
def test_freeze_gives_eagers_tokens_through_enats_loop():
    eager = tiny_enat()
    assert eager.mask_id == 12
    assert torch.equal(sample(compile_for_sampling(eager, "freeze")), sample(eager))


def test_bad_modes_are_one_line():
    assert check_compile_mode("Freeze", "cpu") == "freeze"
    with pytest.raises(ValueError, match="'fast' is not one of false, true, freeze, cuda_graphs"):
        check_compile_mode("fast", "cpu")
    with pytest.raises(ValueError, match="cuda_graphs .* needs a CUDA device, not cpu"):
        compile_for_sampling(tiny_enat(), "cuda_graphs", "cpu")
