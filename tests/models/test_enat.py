"""ENAT backbone: sizes, parity with an independent reference over the official layout, reuse, sampling, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_nat.generation.decoding import generate, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import (
    ENAT,
    ENATState,
    build_backbone,
    convert_enat_state_dict,
    count_parameters,
    infer_enat_dims,
    load_official_enat,
)
from lit_nat.models.convert import CONVERTERS, compare_with_target
from tests.helpers.official import official_enat_shapes, random_official_enat_state_dict, reference_enat
from tests.helpers.tiny import ENAT_BACKBONE, ENC, C, D, H, K, N

ENAT_L_TOTAL = 574_298_113  # official ENAT-L at 256 px, dead prev_embedder included (reference note 3.9)


def tiny_enat(**overrides) -> ENAT:
    return ENAT(**{**ENAT_BACKBONE, **overrides})


def dead_prev_embedder(width: int, mlp_ratio: int = 4) -> int:
    """Parameters of the official, never-called prev_embedder Mlp (D -> 4D -> D)."""
    return 2 * width * mlp_ratio * width + mlp_ratio * width + width


def random_mask(batch: int, num_masked: int, g: torch.Generator, within: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) bool with ``num_masked`` True per row; if ``within`` is given, a subset of it (which must be large
    enough)."""
    scores = torch.rand(batch, N, generator=g)
    if within is not None:
        scores = scores.masked_fill(~within, 2.0)  # never pick positions outside ``within``
    mask = torch.zeros(batch, N, dtype=torch.bool)
    return mask.scatter(1, scores.argsort(dim=1)[:, :num_masked], True)


def tiny_inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (batch, N), generator=g)
    labels = torch.randint(0, C + 1, (batch,), generator=g)
    labels[0] = C  # the null class
    return tokens, labels


def loaded_tiny(seed: int = 0, small_stream: bool = False) -> tuple[ENAT, dict[str, torch.Tensor]]:
    official = random_official_enat_state_dict(seed, small_stream)
    model = tiny_enat().eval()
    report = load_official_enat(model, official)
    assert report.ok, report.summary()
    return model, official


# ------------------------------------------------------------------------------------------------------ 1. sizes
def test_enat_l_parameter_count_on_meta():
    for grid, extra in ((16, 0), (32, (1024 - 256) * 1024)):
        with torch.device("meta"):
            model = build_backbone("enat-l", codebook_size=1024, grid_size=grid, num_classes=1000)
        assert count_parameters(model) == ENAT_L_TOTAL - dead_prev_embedder(1024) + extra
    assert ENAT_L_TOTAL - dead_prev_embedder(1024) == 565_904_385
    assert model.supports_reuse and model.num_tokens == 1024 and model.null_class == 1000 and model.mask_id == 1024


def test_enat_b_matches_the_paper_size():
    with torch.device("meta"):
        model = build_backbone("enat-b", codebook_size=1024, grid_size=16, num_classes=1000)
    total = count_parameters(model) + dead_prev_embedder(model.width)  # the paper counts the official module
    assert 219_000_000 <= total < 220_000_000, total
    with torch.device("meta"):
        small = build_backbone("enat-s", codebook_size=1024, grid_size=16, num_classes=1000)
    assert count_parameters(small) < count_parameters(model)


@pytest.mark.parametrize("grid, total", [(16, ENAT_L_TOTAL), (32, 575_084_545)])
def test_official_l_layout_converts_on_meta(grid, total):
    shapes = official_enat_shapes(1024, grid * grid, 1000, 1024, 24)
    assert len(shapes) == 358 and sum(math.prod(s) for s in shapes.values()) == total
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        model = build_backbone("enat-l", codebook_size=1024, grid_size=grid, num_classes=1000)
    converted, report = convert_enat_state_dict(official)
    compare_with_target(converted, model.state_dict(), report)
    assert report.ok, report.summary()
    assert sorted(report.dropped) == sorted(k for k in shapes if k.startswith("prev_embedder."))
    assert len(report.dropped) == 4 and "prev_embedder" in report.summary()
    assert len(converted) == 354 == len(model.state_dict())
    dims = CONVERTERS["enat"].infer_dims(official)
    assert dims == dict(
        codebook_size=1024,
        grid_size=(grid, grid),
        num_classes=1000,
        width=1024,
        encoder_layers=22,
        decoder_layers=2,
        mlp_ratio=4.0,
    )


def test_infer_dims_split_and_errors():
    official = random_official_enat_state_dict()
    dims = infer_enat_dims({"nnet": official}, decoder_layers=1)
    assert (dims["encoder_layers"], dims["decoder_layers"], dims["width"]) == (3, 1, D)
    assert load_official_enat(ENAT(**dims, num_heads=H), official).ok  # the split is not visible in the weights
    with pytest.raises(ValueError, match="decoder_layers=5"):
        infer_enat_dims(official, decoder_layers=5)
    with pytest.raises(ValueError, match="square"):
        infer_enat_dims({**official, "x_embedder.position_embeddings.weight": torch.zeros(12, D)})
    with pytest.raises(ValueError, match="not an ENAT"):
        infer_enat_dims({"foo": torch.zeros(1)})


# ----------------------------------------------------------------------------------------------------- 2. parity
PLAIN_CASES = {"some masked": 9, "all masked": N, "none masked": 0, "one visible": N - 1}
# (previous masked count, current masked count); the current mask is a subset of the previous one.
REUSE_CASES = {
    "new tokens": (12, 7),
    "nothing new": (7, 7),
    "previous all masked": (N, 5),
    "now fully visible": (6, 0),
    "one new": (8, 7),
}


@pytest.mark.parametrize("small_stream", [False, True])
@pytest.mark.parametrize("case", PLAIN_CASES)
def test_parity_without_reuse(case, small_stream):
    model, official = loaded_tiny(small_stream=small_stream)
    tokens, labels = tiny_inputs(batch=3)
    g = torch.Generator().manual_seed(2)
    ids = tokens.masked_fill(random_mask(3, PLAIN_CASES[case], g), K)
    with torch.no_grad():
        ref, ref_dict = reference_enat(official, ids, labels, H, ENC)
        for given in (None, PLAIN_CASES[case]):
            logits, state = model(ids, labels, num_masked=given)
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(state.features, ref_dict["feat"], atol=1e-5, rtol=1e-5)
    assert state.num_masked == PLAIN_CASES[case]
    assert torch.equal(state.visible_positions, torch.nonzero(ids != K)[:, 1].view(3, -1))  # ascending per row


@pytest.mark.parametrize("small_stream", [False, True])
@pytest.mark.parametrize("case", REUSE_CASES)
def test_parity_with_reuse(case, small_stream):
    model, official = loaded_tiny(seed=4, small_stream=small_stream)
    tokens, labels = tiny_inputs(batch=3, seed=5)
    before, now = REUSE_CASES[case]
    g = torch.Generator().manual_seed(6)
    prev_mask = random_mask(3, before, g)
    mask = random_mask(3, now, g, within=prev_mask)
    prev_ids, ids = tokens.masked_fill(prev_mask, K), tokens.masked_fill(mask, K)
    with torch.no_grad():
        _, prev_dict = reference_enat(official, prev_ids, labels, H, ENC)
        ref, ref_dict = reference_enat(official, ids, labels, H, ENC, prev=prev_dict)
        _, state = model(prev_ids, labels, num_masked=before)
        torch.testing.assert_close(state.features, prev_dict["feat"], atol=1e-5, rtol=1e-5)
        logits, new_state = model(ids, labels, state, num_masked=now)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new_state.features, ref_dict["feat"], atol=1e-5, rtol=1e-5)
        if case == "new tokens":
            # Negative controls: the reference (hence this test) sees each of these mistakes.
            plain, _ = reference_enat(official, ids, labels, H, ENC)
            assert not torch.allclose(ref, plain, atol=1e-4), "reuse changes nothing"
            wrongs = ("block_eps", "context_eps", "prev_eps", "final_eps") if small_stream else ("exact_gelu",)
            for wrong in ("swap_kv", "chunk_order", "no_prev_proj", *wrongs):
                other, _ = reference_enat(official, ids, labels, H, ENC, prev=prev_dict, wrong=wrong)
                assert not torch.allclose(ref, other, atol=1e-4, rtol=1e-4), wrong


def test_repeated_projection_accumulates():
    """A token visible since the first step is projected once per later step (official behaviour): after three steps
    its feature is prev_proj(prev_proj(first-step feature)), not a single projection."""
    model, official = loaded_tiny(seed=7)
    tokens, labels = tiny_inputs(batch=2, seed=8)
    g = torch.Generator().manual_seed(9)
    masks = [random_mask(2, 14, g)]
    for count in (10, 6):
        masks.append(random_mask(2, count, g, within=masks[-1]))
    state, prev, states = None, None, []
    with torch.no_grad():
        for mask in masks:
            ids = tokens.masked_fill(mask, K)
            ref, prev = reference_enat(official, ids, labels, H, ENC, prev=prev)
            logits, state = model(ids, labels, state)
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            states.append(state)
        first_visible = ~masks[0]
        first = states[0].features[first_visible].view(2, -1, D)
        twice = model.prev_proj(model.prev_proj(first))
        torch.testing.assert_close(states[-1].features[first_visible].view(2, -1, D), twice)
        assert not torch.allclose(model.prev_proj(first), twice, atol=1e-3)


# ------------------------------------------------------------------------------------------------------ 3. reuse
def test_reuse_of_an_all_masked_step_equals_no_reuse():
    model, _ = loaded_tiny()
    tokens, labels = tiny_inputs()
    ids = tokens.masked_fill(random_mask(3, 11, torch.Generator().manual_seed(0)), K)
    with torch.no_grad():
        _, first = model(torch.full_like(ids, K), labels)
        reused, state = model(ids, labels, first)
        plain, plain_state = model(ids, labels)
    assert first.num_masked == N and first.visible_positions.shape == (3, 0)
    torch.testing.assert_close(reused, plain, atol=0, rtol=0)
    torch.testing.assert_close(state.features, plain_state.features, atol=0, rtol=0)


def test_reuse_trains_prev_proj_but_not_the_previous_step():
    torch.manual_seed(0)
    model = tiny_enat(embed_dropout=0.0, class_dropout=0.0)
    for block in model.blocks:  # leave adaLN-Zero: with zero gates no gradient would reach the blocks' inputs
        nn.init.normal_(block.modulation.weight, std=0.05)
    tokens, labels = tiny_inputs()
    prev_mask = random_mask(3, 10, torch.Generator().manual_seed(1))
    mask = random_mask(3, 5, torch.Generator().manual_seed(2), within=prev_mask)
    _, state = model(tokens.masked_fill(prev_mask, K), labels)
    assert not state.features.requires_grad  # the state never keeps the previous graph alive
    logits, _ = model(tokens.masked_fill(mask, K), labels, state, num_masked=5)
    F.cross_entropy(logits[mask], tokens[mask]).backward()
    assert model.prev_proj.mlp.fc1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- 4. sampling
class Recorder(nn.Module):
    """Wraps a backbone and keeps every call's ids, incoming state, num_masked and outgoing state."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.calls: list[tuple[torch.Tensor, torch.Tensor, ENATState | None, int | None, ENATState]] = []

    def forward(self, ids, condition, state=None, num_masked=None):
        logits, new_state = self.backbone(ids, condition, state, num_masked=num_masked)
        self.calls.append((ids.clone(), condition.clone(), state, num_masked, new_state))
        return logits, new_state


def test_state_through_the_generation_loop():
    model, _ = loaded_tiny()
    recorder = Recorder(model)
    schedule = GenerationSchedule.enat(steps=5)
    labels = torch.tensor([1, 4])
    out = generate(recorder, labels, schedule, make_generator(0, "cpu"), num_tokens=N, mask_id=K, null_condition=C).ids
    assert out.shape == (2, N) and bool((out < K).all())

    counts = [N, *schedule.masked_counts(N)[:-1]]  # masked count entering each step
    assert len(recorder.calls) == schedule.steps
    previous = None
    for t, (ids, condition, state_in, num_masked, state_out) in enumerate(recorder.calls):
        rows = ids.shape[0]
        assert rows == 4 and torch.equal(condition, torch.tensor([1, 4, C, C]))  # both branches, one batch
        assert state_in is previous  # the loop hands back exactly what the model returned
        assert num_masked == counts[t] == state_out.num_masked
        assert state_out.features.shape == (rows, N, D)
        assert state_out.visible_positions.shape == (rows, N - counts[t])
        assert torch.equal(state_out.visible_positions, torch.nonzero(ids != K)[:, 1].view(rows, -1))
        assert torch.equal(ids[:2], ids[2:])  # both branches decode the same ids ...
        if t > 0:
            assert not torch.allclose(state_out.features[:2], state_out.features[2:])  # ... with their own states
            # Rows are independent: the conditional half alone, with its half of the state, gives the same state.
            half_in = ENATState(state_in.features[:2], state_in.visible_positions[:2], state_in.num_masked)
            with torch.no_grad():
                _, half_out = model(ids[:2], condition[:2], half_in, num_masked=num_masked)
            torch.testing.assert_close(half_out.features, state_out.features[:2], atol=1e-5, rtol=1e-5)
        previous = state_out


def test_generation_is_deterministic_under_a_seed():
    model, _ = loaded_tiny()
    schedule = GenerationSchedule.enat(steps=4)
    labels = torch.tensor([0, 3, 7])

    def run(seed):
        return generate(model, labels, schedule, make_generator(seed, "cpu"), num_tokens=N, mask_id=K, null_condition=C)

    assert torch.equal(run(3).ids, run(3).ids)
    assert not torch.equal(run(3).ids, run(4).ids)


# ------------------------------------------------------------------------------------------------------ 5. import
def test_import_from_file_with_module_prefix(tmp_path):
    official = random_official_enat_state_dict(seed=11)
    path = tmp_path / "nnet_ema.pth"
    torch.save({"module." + k: v for k, v in official.items()}, path)

    model = tiny_enat().eval()
    report = load_official_enat(model, path)
    assert report.ok and len(report.renamed) == len(official) - 4
    assert sorted(report.dropped) == sorted(k for k in official if k.startswith("prev_embedder."))  # prefix gone
    tokens, labels = tiny_inputs(seed=12)
    ids = tokens.masked_fill(random_mask(3, 6, torch.Generator().manual_seed(13)), K)
    with torch.no_grad():
        ref, _ = reference_enat(official, ids, labels, H, ENC)
        torch.testing.assert_close(model(ids, labels)[0], ref, atol=1e-5, rtol=1e-5)


def test_import_errors_name_keys_and_shapes():
    official = random_official_enat_state_dict()
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q\.weight.*expected shape \(48, 48\), got \(32, 32\)"):
        load_official_enat(tiny_enat(width=48), official)
    with pytest.raises(ValueError, match=r"x_embedder\.position_embeddings\.weight.*\(64, 32\), got \(16, 32\)"):
        load_official_enat(tiny_enat(grid_size=8), official)
    with pytest.raises(ValueError, match=r"stray\.weight"):
        load_official_enat(tiny_enat(), {**official, "stray.weight": torch.zeros(1)})
    incomplete = {k: v for k, v in official.items() if k != "blocks.3.attn.kv.A.bias"}
    with pytest.raises(ValueError, match=r"missing: blocks\.3\.attn\.kv_context\.bias"):
        load_official_enat(tiny_enat(), incomplete)
    with pytest.raises(ValueError, match=r"blocks\.3\.attn"):  # deeper checkpoint than the model
        load_official_enat(tiny_enat(decoder_layers=1), official)


# ------------------------------------------------------------------------------------------------------ 6. errors
def test_bad_input_errors():
    model = tiny_enat().eval()
    tokens, labels = tiny_inputs()
    mask = random_mask(3, 6, torch.Generator().manual_seed(0))
    ids = tokens.masked_fill(mask, K)
    uneven = ids.clone()
    uneven[0, mask[0].nonzero()[0]] = 1  # row 0 now has 5 masked tokens
    with pytest.raises(ValueError, match="same number of masked tokens in every row"):
        model(uneven, labels)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        model(ids[:, :-1], labels)
    with pytest.raises(ValueError, match="condition"):
        model(ids, labels[:2])
    with pytest.raises(ValueError, match="num_masked"):
        model(ids, labels, num_masked=N + 1)

    with torch.no_grad():
        _, state = model(ids, labels)
    with pytest.raises(ValueError, match="same rows"):
        model(ids[:2], labels[:2], state)  # a state from another batch size
    with pytest.raises(ValueError, match="later step"):
        model(torch.full_like(ids, K), labels, state)  # 16 masked now, 6 in the state
    with pytest.raises(TypeError, match="ENATState"):
        model(ids, labels, {"feat": state.features})
    with pytest.raises(ValueError, match=r"expected \(3, 16, 48\)"):  # a state from another model
        tiny_enat(width=48)(ids, labels, state)


def test_debug_checks():
    model = tiny_enat().eval()
    tokens, labels = tiny_inputs()
    g = torch.Generator().manual_seed(0)
    prev_mask = random_mask(3, 8, g)
    mask = random_mask(3, 6, g, within=prev_mask)
    not_subset = ~prev_mask  # 8 masked, all where the previous step had visible tokens
    with torch.no_grad():
        _, state = model(tokens.masked_fill(prev_mask, K), labels)
        model(tokens.masked_fill(mask, K), labels, num_masked=5)  # silently wrong without the checks
        model.check_inputs = True
        with pytest.raises(ValueError, match="num_masked=5"):
            model(tokens.masked_fill(mask, K), labels, num_masked=5)
        with pytest.raises(ValueError, match="masked set must shrink"):
            model(tokens.masked_fill(not_subset, K), labels, state)


# ---------------------------------------------------------------------------------------------- 7. label dropout
def test_train_mode_label_dropout_and_eval_determinism():
    model, _ = loaded_tiny()
    model.token_embed.dropout.p = 0.0  # isolate the label dropout
    model.class_dropout = 0.5
    batch = 64
    ids = tiny_inputs(batch=1)[0].expand(batch, -1).masked_fill(torch.arange(N) % 3 == 0, K)
    labels = torch.full((batch,), 2)
    with torch.no_grad():
        kept, _ = model(ids, labels)
        dropped, _ = model(ids, torch.full_like(labels, C))
        again, _ = model(ids, labels)
        torch.manual_seed(0)
        train, _ = model.train()(ids, labels)
    assert torch.equal(kept, again)  # eval mode: no label (or embedding) dropout
    is_kept = (train - kept).abs().amax(dim=(1, 2)) < 1e-6
    is_dropped = (train - dropped).abs().amax(dim=(1, 2)) < 1e-6
    assert bool((is_kept ^ is_dropped).all())  # every row saw either its label or the null class
    assert 10 < int(is_dropped.sum()) < 54


def test_registry_tiny_runs():
    model = build_backbone("enat-tiny", codebook_size=K, grid_size=4, num_classes=C).eval()
    ids = tiny_inputs()[0].masked_fill(random_mask(3, 4, torch.Generator().manual_seed(0)), K)
    logits, state = model(ids, torch.tensor([[0], [1], [C]]))
    assert logits.shape == (3, N, K) and state.features.shape == (3, N, 128)
    # Fresh init is adaLN-Zero: every block is the identity, so the features are the token embeddings.
    torch.testing.assert_close(state.features, model.token_embed(ids))
