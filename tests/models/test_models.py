"""Backbones, registry and official-checkpoint conversion (lit_nat.models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_nat.models import (
    ARCHITECTURES,
    UViT,
    build_backbone,
    convert_autonat_state_dict,
    count_parameters,
    infer_autonat_dims,
    load_official_autonat,
)
from lit_nat.models.convert import compare_with_target
from tests.helpers.official import (
    official_autonat_shapes,
    random_official_autonat_state_dict,
    reference_autonat,
    tiny_autonat_inputs,
)
from tests.helpers.tiny import UVIT_BACKBONE, C, D, H, K, N


def tiny_uvit(**overrides) -> UViT:
    return UViT(**{**UVIT_BACKBONE, **overrides})


# ------------------------------------------------------------------------------------------------------ 1. sizes
@pytest.mark.parametrize(
    "arch, grid, expected",
    [("autonat-l", 16, 193_655_297), ("autonat-s", 16, 45_546_497), ("autonat-l", 32, 193_655_297 + 768 * 768)],
)
def test_parameter_counts_on_meta(arch, grid, expected):
    with torch.device("meta"):
        model = build_backbone(arch, codebook_size=1024, grid_size=grid, num_classes=1000)
    assert count_parameters(model) == expected
    assert model.num_tokens == grid * grid and model.grid_size == (grid, grid)


def test_official_l_layout_matches_model_on_meta():
    shapes = official_autonat_shapes(1024, 256, 1000, 768, 25)
    assert len(shapes) == 314 and sum(math.prod(s) for s in shapes.values()) == 193_655_297
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        model = build_backbone("autonat-l", codebook_size=1024, grid_size=16, num_classes=1000)
    converted, report = convert_autonat_state_dict(official)
    compare_with_target(converted, model.state_dict(), report)
    assert report.ok, report.summary()
    assert infer_autonat_dims(official) == dict(
        codebook_size=1024,
        grid_size=(16, 16),
        num_classes=1000,
        width=768,
        num_layers=25,
        mlp_ratio=4.0,
        qkv_bias=False,
    )


# ---------------------------------------------------------------------------------------------------- 2. forward
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cond_shape", ["flat", "column"])
def test_forward_contract(batch, cond_shape):
    model = tiny_uvit().eval()
    ids, labels = tiny_autonat_inputs(batch)
    cond = labels if cond_shape == "flat" else labels[:, None]
    logits, state = model(ids, cond)
    assert logits.shape == (batch, N, K)  # K columns: the mask id is never a prediction
    assert logits.dtype == torch.float32 and state is None
    assert model.mask_id == K and model.null_class == C and model.num_tokens == N
    again, _ = model(ids, cond, state=None)
    assert torch.equal(logits, again)  # eval mode is deterministic


def test_grid_as_pair_and_condition_shapes_agree():
    model = tiny_uvit(grid_size=(2, 8)).eval()
    ids, labels = tiny_autonat_inputs()
    assert torch.equal(model(ids, labels)[0], model(ids, labels[:, None])[0])


def test_train_mode_uses_embedding_dropout():
    torch.manual_seed(0)
    model = tiny_uvit().train()
    ids, labels = tiny_autonat_inputs()
    assert not torch.allclose(model(ids, labels)[0], model(ids, labels)[0])


def test_input_validation():
    model = tiny_uvit()
    ids, labels = tiny_autonat_inputs()
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        model(ids[:, :-1], labels)
    with pytest.raises(ValueError, match="condition"):
        model(ids, labels[:2])
    with pytest.raises(ValueError, match="odd"):
        tiny_uvit(num_layers=4)
    with pytest.raises(ValueError, match="divisible"):
        tiny_uvit(num_heads=5)


# ----------------------------------------------------------------------------------------------------- 3. parity
@pytest.mark.parametrize("small_stream", [True, False])
def test_official_forward_parity(small_stream):
    official = random_official_autonat_state_dict(small_stream=small_stream)
    model = tiny_uvit().eval()
    report = load_official_autonat(model, official)
    assert report.ok and not report.dropped and len(report.renamed) == len(official)
    ids, labels = tiny_autonat_inputs()
    with torch.no_grad():
        ours, _ = model(ids, labels)
        ref = reference_autonat(official, ids, labels, num_heads=H)
        # Negative controls: the reference (hence the test) is sharp enough to see each of these mistakes.
        wrongs = [dict(emb_eps=1e-5), dict(block_eps=1e-6), dict(head_eps=1e-6)] if small_stream else [dict(tanh=True)]
        for wrong in [*wrongs, dict(mirror=False)]:
            other = reference_autonat(official, ids, labels, num_heads=H, **wrong)
            assert not torch.allclose(ref, other, atol=1e-5, rtol=1e-5), wrong
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_round_trip_through_file_with_prefix_and_position_ids(tmp_path):
    official = random_official_autonat_state_dict(seed=3)
    path = tmp_path / "nnet_ema.pth"
    wrapped = {"module." + k: v for k, v in official.items()}
    wrapped["module.token_emb.position_ids"] = torch.arange(N)[None]
    torch.save({"nnet": wrapped, "step": 7}, path)

    model = tiny_uvit().eval()
    report = load_official_autonat(model, torch.load(path, weights_only=True))
    assert report.ok and report.dropped == ["module.token_emb.position_ids"]
    assert load_official_autonat(tiny_uvit(), path).ok  # a path works too
    ids, labels = tiny_autonat_inputs()
    with torch.no_grad():
        ref = reference_autonat(official, ids, labels, H)
        torch.testing.assert_close(model(ids, labels)[0], ref, atol=1e-5, rtol=1e-5)


def test_unexpected_missing_and_mismatched_keys_raise():
    official = random_official_autonat_state_dict()
    with pytest.raises(ValueError, match=r"stray\.weight"):
        load_official_autonat(tiny_uvit(), {**official, "stray.weight": torch.zeros(1)})

    incomplete = dict(official)
    del incomplete["mid_block.attn.proj.bias"]
    with pytest.raises(ValueError, match=r"missing: mid_block\.attn\.proj\.bias"):
        load_official_autonat(tiny_uvit(), incomplete)

    bad = {**official, "token_emb.word_embeddings.weight": torch.zeros(K, D)}
    with pytest.raises(ValueError, match=r"token_emb\.word_embeddings\.weight.*\(17, 32\), got \(16, 32\)"):
        load_official_autonat(tiny_uvit(), bad)

    with pytest.raises(ValueError, match=r"out_blocks\.1\.skip_linear"):  # deeper checkpoint than the model
        load_official_autonat(tiny_uvit(num_layers=3), official)


def test_non_strict_loads_what_fits():
    official = random_official_autonat_state_dict()
    del official["norm.bias"]
    model = tiny_uvit()
    with pytest.warns(UserWarning, match="norm.bias"):
        report = load_official_autonat(model, official, strict=False)
    assert report.missing == ["final_norm.bias"]
    assert torch.equal(model.final_norm.weight, official["norm.weight"])


def test_infer_dims_builds_a_loadable_model():
    official = random_official_autonat_state_dict()
    dims = infer_autonat_dims({"state_dict": official})
    assert dims == dict(
        codebook_size=K, grid_size=(4, 4), num_classes=C, width=D, num_layers=5, mlp_ratio=4.0, qkv_bias=False
    )
    assert load_official_autonat(UViT(**dims, num_heads=H), official).ok
    with pytest.raises(ValueError, match="square"):
        infer_autonat_dims({**official, "token_emb.position_embeddings.weight": torch.zeros(12, D)})
    with pytest.raises(ValueError, match="not an AutoNAT"):
        infer_autonat_dims({"foo": torch.zeros(1)})


# ----------------------------------------------------------------------------------------------------- 4. detach
def test_head_does_not_train_the_word_table():
    torch.manual_seed(0)
    model = tiny_uvit().eval()
    ids = torch.randint(0, 8, (2, N))  # codes 8..15 and the mask row 16 never appear in the input
    ids[0, 0] = K  # ... except the mask row, which does
    logits, _ = model(ids, torch.tensor([1, C]))
    F.cross_entropy(logits.reshape(-1, K), torch.randint(0, K, (2 * N,))).backward()
    grad = model.token_embed.word.weight.grad
    used = torch.zeros(K + 1, dtype=torch.bool)
    used[ids.unique()] = True
    assert torch.all(grad[~used] == 0)  # the head multiplies by these rows, yet they get no gradient
    assert torch.all(grad[used].abs().sum(-1) > 0)
    assert model.head.bias.grad[:K].abs().sum() > 0 and model.head.bias.grad[K] == 0


# --------------------------------------------------------------------------------------------------- 5. registry
def test_registry_errors():
    data = dict(codebook_size=K, grid_size=4, num_classes=C)
    with pytest.raises(ValueError, match=r"'autonat-xxl'.*autonat-l"):
        build_backbone("autonat-xxl", **data)
    with pytest.raises(ValueError, match=r"'depth'.*num_layers"):
        build_backbone("autonat-tiny", **data, overrides={"depth": 3})
    with pytest.raises(ValueError, match="codebook_size"):
        build_backbone("autonat-tiny", **data, overrides={"codebook_size": 3})


def test_registry_overrides_apply():
    model = build_backbone("autonat-tiny", codebook_size=K, grid_size=4, num_classes=C, overrides={"num_layers": 3})
    assert isinstance(model, UViT) and len(model.in_blocks) == 1
    # every native size names its width; aMUSEd's size is its diffusers config, given at import
    assert all("width" in spec.defaults for name, spec in ARCHITECTURES.items() if name != "amused")
