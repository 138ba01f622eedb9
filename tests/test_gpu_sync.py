"""No host-device synchronisation in the hot paths on CUDA (``torch.cuda.set_sync_debug_mode("error")`` raises at the
first one): ENAT's decoding loop with reuse, guidance, text and every reveal policy, under autocast too, and the
masked-token training step (mask sampling, forward, loss, backward, AdamW). Skipped without a CUDA device.

The LightningModule's step adds two reads on purpose, outside what is checked here: ENAT's masked count (one per
step: its encoder gathers a Python-int number of tokens) and the non-finite guard (a loss that is not finite must
never reach the weights)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from lit_nat.conditioning.condition import TextCondition
from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.precision import sampling_context
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import ENAT, build_backbone
from lit_nat.training.objective import BetaLaw, apply_mask, masked_token_loss, sample_training_mask
from tests.helpers.tiny import ENAT_BACKBONE, C, K, N

pytestmark = pytest.mark.gpu


@contextlib.contextmanager
def no_syncs():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def text(rows: int) -> TextCondition:
    return TextCondition(torch.randn(rows, 5, 24, device="cuda"), torch.ones(rows, 5, dtype=torch.bool, device="cuda"),
                         torch.randn(rows, 24, device="cuda"))  # fmt: skip


@pytest.mark.parametrize("reveal", ["confidence", "halton", "random"])
@pytest.mark.parametrize("condition", ["class", "text"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_enat_decoding_loop_has_no_host_sync(reveal, condition, precision):
    context = {"context_dim": 24, "context_length": 5} if condition == "text" else {}
    model = ENAT(**ENAT_BACKBONE, **context).cuda().eval()
    labels, null = (text(3), text(3)) if condition == "text" else (torch.tensor([0, 1, 2], device="cuda"), C)
    schedule = dataclasses.replace(GenerationSchedule.enat(4), reveal=reveal)

    def run():
        with sampling_context("cuda", precision):
            return generate(model, labels, schedule, make_generator(0, "cuda"), num_tokens=N, mask_id=K,
                            null_condition=null).ids  # fmt: skip

    run()  # warm: kernels, allocator, the Halton order's table
    with no_syncs():
        ids = run()
    assert ids.shape == (3, N)


def test_training_step_has_no_host_sync():
    backbone = build_backbone("autonat-tiny", codebook_size=K, grid_size=4, num_classes=C).cuda().train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4)
    ids = torch.randint(0, K, (4, N), device="cuda")
    labels = torch.tensor([0, 1, 2, 0], device="cuda")

    def step():
        mask = sample_training_mask(BetaLaw(12.0, 3.0), 4, N, "cuda")
        inputs, targets = apply_mask(ids, mask, K)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = backbone(inputs, labels)
        loss, _ = masked_token_loss(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm: AdamW's state
    with no_syncs():
        step()
