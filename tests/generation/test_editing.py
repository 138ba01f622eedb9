"""Editing: the partial-canvas decoding loop, pixel -> token masks, and the ``edit`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from lit_nat.generation.decoding import generate, guided_log_probs, gumbel_noise, make_generator
from lit_nat.generation.editing import (
    border_mask,
    box_mask,
    check_edit_inputs,
    half_mask,
    parse_mask,
    random_keep_mask,
    token_keep_mask,
)
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.training.module import NATModule
from tests.conftest import fit_tiny_checkpoint, write_random_shards
from tests.helpers.tiny import ENAT_ARCH, ENAT_OPTIONS, UVIT_ARCH

K, GRID, N = 12, 4, 16
ARCHS = {"uvit": ("autonat-tiny", UVIT_ARCH, {}), "enat": ("enat-tiny", ENAT_ARCH, ENAT_OPTIONS)}


def model_for(name: str) -> NATModule:
    arch, overrides, extra = ARCHS[name]
    torch.manual_seed(0)
    model = NATModule(arch=arch, arch_overrides=overrides, codebook_size=K, grid_size=GRID, num_classes=3,
                      **extra).eval()  # fmt: skip
    with torch.no_grad():  # as if trained: adaLN-Zero would make ENAT's blocks identities
        for p in model.backbone.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model


def canvas(rows: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random image tokens and keep masks with a different number of kept tokens in every row (3, 8 and 0 kept)."""
    rng = np.random.default_rng(seed)
    init = torch.from_numpy(rng.integers(0, K, (rows, N)))
    keep = torch.zeros(rows, N, dtype=torch.bool)
    keep[0, [0, 5, 9]] = True
    keep[1, :8] = True
    return init, keep


def reference_partial_loop(backbone, labels, schedule, seed, init, keep, null_class):
    """The partial-canvas loop written plainly, row by row in Python, drawing the same noise in the same order."""
    generator = make_generator(seed, "cpu")
    ids = torch.where(keep, init, torch.full_like(init, K))
    counts = [schedule.counts_for(int((~k).sum())) for k in keep]
    guided = any(g != 0 for g in schedule.guidance)
    condition = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels
    state = None
    for t in range(schedule.steps):
        masked = ids == K
        uniform = len({tuple(c) for c in counts}) == 1
        before = (int(masked[0].sum()) if uniform else None)
        logits, state = backbone(torch.cat([ids, ids]) if guided else ids, condition, state, num_masked=before)
        cond, uncond = logits.chunk(2) if guided else (logits, None)
        log_probs = guided_log_probs(cond, uncond, schedule.guidance[t])
        noisy = log_probs / schedule.sample_temperature[t] + gumbel_noise(log_probs.shape, generator, "cpu")
        sampled = noisy.argmax(-1)
        if max(c[t] for c in counts) == 0:
            ids = torch.where(masked, sampled, ids)
            continue
        noise = gumbel_noise(ids.shape, generator, "cpu")
        new = ids.clone()
        for b in range(ids.shape[0]):
            scores = []
            for i in range(N):
                if masked[b, i]:
                    new[b, i] = sampled[b, i]
                    scores.append((float(log_probs[b, i, sampled[b, i]]) + schedule.remask_temperature[t] * float(
                        noise[b, i]), i))  # fmt: skip
            for _, i in sorted(scores)[: counts[b][t]]:
                new[b, i] = K
        ids = new
    return ids


class WithoutReuse(torch.nn.Module):
    """ENAT with feature reuse switched off: every step starts from no previous state."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, ids, condition, state=None, num_masked=None):
        return self.backbone(ids, condition, None, num_masked=num_masked)


@pytest.mark.parametrize("name", ["uvit", "enat", "enat-without-reuse"])
def test_the_partial_loop_agrees_with_a_plain_reference(name):
    model = model_for(name.split("-")[0])
    backbone = WithoutReuse(model.ema_backbone) if name.endswith("reuse") else model.ema_backbone
    schedule = GenerationSchedule.heuristic(4, guidance=1.0)
    init, keep = canvas()
    labels = torch.tensor([0, 1, 2])
    if name.startswith("enat"):  # dense blocks: rows of equal unknown count
        keep = keep[:1].expand(3, -1)
    fast = generate(backbone, labels, schedule, make_generator(7, "cpu"), num_tokens=N, mask_id=K,
                    null_condition=3, init_ids=init, keep_mask=keep).ids  # fmt: skip
    slow = reference_partial_loop(backbone, labels, schedule, 7, init, keep, 3)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_kept_tokens_never_change_and_are_never_remasked(name):
    model = model_for(name)
    init, keep = canvas()
    result = model.generate(torch.tensor([0, 1, 2]), seed=3, init_ids=init, keep_mask=keep, return_history=True)
    schedule = model.schedule
    for t, step in enumerate(result.history):
        assert torch.equal(step[keep], init[keep]), f"a kept token changed at step {t}"
        masked_per_row = (step == K).sum(1).tolist()
        assert masked_per_row == [schedule.counts_for(int((~k).sum()))[t] for k in keep]  # the documented rule
    assert (result.ids < K).all()


def test_masked_counts_on_a_partial_canvas_follow_the_rule():
    schedule = GenerationSchedule.heuristic(8)
    assert schedule.counts_for(N) == schedule.masked_counts(N)  # a blank canvas: the plain rule
    counts = schedule.counts_for(40)
    ratios = schedule.mask_ratio
    expected, previous = [], 40
    for t in range(7):
        previous = max(1, min(previous - 1, math.floor(40 * ratios[t])))
        expected.append(previous)
    assert counts == [*expected, 0]
    assert schedule.counts_for(3) == [2, 1, 0, 0, 0, 0, 0, 0]  # fewer unknown tokens than steps
    assert schedule.counts_for(0) == [0] * 8


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_an_all_false_mask_is_plain_generation(name):
    model = model_for(name)
    init, _ = canvas()
    labels = torch.tensor([0, 1, 2])
    plain = model.generate(labels, seed=5).ids
    edited = model.generate(labels, seed=5, init_ids=init, keep_mask=torch.zeros(3, N, dtype=torch.bool)).ids
    assert torch.equal(plain, edited)


def test_enat_generates_rows_of_different_unknown_counts_in_groups():
    model = model_for("enat")
    init, keep = canvas()
    result = model.generate(torch.tensor([0, 1, 2]), seed=1, init_ids=init, keep_mask=keep, return_history=True)
    assert torch.equal(result.ids[keep], init[keep]) and (result.ids < K).all()
    alone = model.generate(torch.tensor([1]), seed=2, init_ids=init[1:2], keep_mask=keep[1:2]).ids  # seed + row 1
    assert torch.equal(result.ids[1:2], alone)


# ------------------------------------------------------------------------------------------------------------ masks
def test_a_token_is_kept_only_if_its_whole_patch_is_kept():
    pixels = torch.ones(8, 8, dtype=torch.bool)
    pixels[3, 4] = False  # one pixel of the token at (row 1, col 2) of a 4x4 grid of 2x2 patches
    keep = token_keep_mask(pixels, (4, 4))
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[1, 2] = False
    assert torch.equal(keep, expected.view(1, 16))
    dilated = token_keep_mask(pixels, (4, 4), dilate=1).view(4, 4)
    assert (~dilated).sum() == 9 and not dilated[0:3, 1:4].any() and dilated[3].all()


def test_mask_helpers():
    size = (8, 8)
    assert torch.equal(token_keep_mask(half_mask(size), (4, 4)).view(4, 4)[:2], torch.ones(2, 4, dtype=torch.bool))
    assert not token_keep_mask(half_mask(size), (4, 4)).view(4, 4)[2:].any()
    border = token_keep_mask(border_mask(size, 0.25), (4, 4)).view(4, 4)
    assert border[1:3, 1:3].all() and border.sum() == 4  # keep the centre, outpaint the ring
    box = box_mask(size, (0.5, 0.0, 1.0, 0.5))  # fractions: regenerate the top-right quarter
    assert not box[:4, 4:].any() and box[4:].all() and box[:, :4].all()
    assert torch.equal(parse_mask("half:bottom", size), half_mask(size, "bottom"))
    assert torch.equal(parse_mask("box:4,0,8,4", size), box)
    with pytest.raises(UsageError, match="--mask 'star': unknown mask; expected half"):
        parse_mask("star", size)
    with pytest.raises(UsageError, match="not inside a 8x8 image"):
        parse_mask("box:0,0,9,2", size)
    keep = random_keep_mask(2, 16, 0.25, make_generator(0, "cpu"))
    assert (~keep).sum(1).tolist() == [4, 4]


def test_masks_that_keep_everything_or_nothing_and_count_mismatches():
    with pytest.raises(UsageError, match="keeps every token: there is nothing to generate"):
        check_edit_inputs(torch.ones(2, 16, dtype=torch.bool), 2, None)
    assert check_edit_inputs(torch.zeros(2, 16, dtype=torch.bool), 2, None) == [
        "the mask keeps no token: this is plain generation"]  # fmt: skip
    with pytest.raises(UsageError, match="3 labels or prompts for 2 images"):
        check_edit_inputs(torch.zeros(1, 16, dtype=torch.bool), 2, 3)


# ---------------------------------------------------------------------------------------------------------- command
def test_the_edit_command_writes_images_a_grid_and_the_record(tmp_path):
    from PIL import Image

    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    config, ckpt = fit_tiny_checkpoint(tmp_path, root, steps=2)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # the pixel tokenizer of the shards: 4x4 grey images, 12 levels
        levels = rng.integers(0, 12, (4, 4))  # pixels exactly on the tokenizer's levels, so encoding is lossless
        Image.fromarray(np.round(levels * 255 / 11).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "edits"
    main(["edit", f"--config={config}", f"--ckpt_path={ckpt}", f"--images={folder}", "--mask=half:top",
          "--labels", "2", "--seeds", "0", "1", f"--out={out}"])  # fmt: skip
    record = json.loads((out / "edits.json").read_text())
    assert record["columns"] == ["input", "mask", "seed 0", "seed 1"] and len(record["edits"]) == 3
    first = record["edits"][0]
    assert first["kept_tokens"] == 8 and first["regenerated_tokens"] == 8 and first["condition"] == 2
    edited = np.asarray(Image.open(out / first["files"][0]))
    original = np.asarray(Image.open(folder / "0.png"))
    assert np.array_equal(edited[:2], original[:2])  # the kept half: the pixel tokenizer reconstructs it exactly
    assert (out / "grid.png").exists()
    with pytest.raises(UsageError, match="the tokenizer takes 4x4"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "big.png")
        main(["edit", f"--config={config}", f"--ckpt_path={ckpt}", f"--images={folder}", "--mask=half",
              f"--out={tmp_path / 'x'}"])  # fmt: skip
