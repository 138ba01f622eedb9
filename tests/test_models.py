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

# Tiny AutoNAT dims used throughout: 2 in-blocks + mid + 2 out-blocks, so a wrong skip pairing shows.
TINY = dict(codebook_size=16, grid_size=4, num_classes=10, width=32, num_layers=5, num_heads=4)
K, N, C, D, H = 16, 16, 10, 32, 4


def tiny_uvit(**overrides) -> UViT:
    return UViT(**{**TINY, **overrides})


# ------------------------------------------------------------------------------------------------ official layout
def official_head_shapes(d: int, codebook_size: int) -> dict[str, tuple[int, ...]]:
    """The final norm and MLM head, the same keys in both official code bases (AutoNAT and ENAT)."""
    return {"norm.weight": (d,), "norm.bias": (d,), "mlm_layer.bias": (1, 1, codebook_size + 1),
            "mlm_layer.fc.weight": (d, d), "mlm_layer.fc.bias": (d,), "mlm_layer.ln.weight": (d,),
            "mlm_layer.ln.bias": (d,)}  # fmt: skip


def official_autonat_shapes(
    codebook_size: int, num_tokens: int, num_classes: int, width: int, num_layers: int, mlp_ratio: int = 4
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official AutoNAT UViT state_dict (reference note, section 2)."""
    d, hidden, depth = width, mlp_ratio * width, (num_layers - 1) // 2
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, vocab, positions in (
        ("token_emb", codebook_size + 1, num_tokens),
        ("context_embed", num_classes + 1, 1),
    ):
        shapes[f"{prefix}.word_embeddings.weight"] = (vocab, d)
        shapes[f"{prefix}.position_embeddings.weight"] = (positions, d)
        shapes[f"{prefix}.LayerNorm.weight"] = (d,)
        shapes[f"{prefix}.LayerNorm.bias"] = (d,)

    def block(prefix: str, skip: bool) -> None:
        shapes.update(
            {
                f"{prefix}.norm1.weight": (d,),
                f"{prefix}.norm1.bias": (d,),
                f"{prefix}.attn.qkv.weight": (3 * d, d),
                f"{prefix}.attn.proj.weight": (d, d),
                f"{prefix}.attn.proj.bias": (d,),
                f"{prefix}.norm2.weight": (d,),
                f"{prefix}.norm2.bias": (d,),
                f"{prefix}.mlp.fc1.weight": (hidden, d),
                f"{prefix}.mlp.fc1.bias": (hidden,),
                f"{prefix}.mlp.fc2.weight": (d, hidden),
                f"{prefix}.mlp.fc2.bias": (d,),
            }
        )
        if skip:
            shapes[f"{prefix}.skip_linear.weight"] = (d, 2 * d)
            shapes[f"{prefix}.skip_linear.bias"] = (d,)

    for i in range(depth):
        block(f"in_blocks.{i}", skip=False)
    block("mid_block", skip=False)
    for i in range(depth):
        block(f"out_blocks.{i}", skip=True)
    shapes.update(official_head_shapes(d, codebook_size))
    return shapes


def random_official_state_dict(seed: int = 0, small_stream: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout, scaled so that a parity test sees every LayerNorm eps and GELU flavour.

    ``small_stream=True`` keeps the residual stream and the head pre-activations small (std ~0.05) so that the variance
    entering every LayerNorm is comparable to eps: swapping 1e-5 and 1e-6 anywhere moves the logits far beyond the
    tolerance. ``small_stream=False`` uses signal-preserving weights and head pre-activations of order 2, where exact
    and tanh GELU differ visibly.
    """
    g = torch.Generator().manual_seed(seed)
    small = 0.05 if small_stream else 1.0
    sd = {}
    for key, shape in official_autonat_shapes(K, N, C, D, TINY["num_layers"]).items():
        x = torch.randn(shape, generator=g)
        name = key.rsplit(".", 2)[-2] if key.count(".") >= 2 else key  # e.g. "qkv", "LayerNorm", "norm1"
        if "embeddings" in key:
            x = 0.02 * x  # like the real N(0, 0.02) tables
        elif name == "LayerNorm" or key.startswith("norm."):
            x = small * (1 + 0.1 * x) if key.endswith("weight") else 0.01 * x  # small stream in, small stream out
        elif name in ("norm1", "norm2", "ln"):
            x = (1 + 0.1 * x) if key.endswith("weight") else 0.1 * x
        elif key.endswith("bias"):
            x = 0.01 * x
        elif name in ("proj", "fc2"):
            x = small * x / math.sqrt(shape[-1])  # residual-writing projections
        elif key == "mlm_layer.fc.weight":
            x = (0.1 if small_stream else 2.0) * x / math.sqrt(shape[-1])  # head pre-activations
        else:
            x = x / math.sqrt(shape[-1])  # qkv, fc1, skip_linear: signal-preserving
        sd[key] = x
    return sd


def reference_forward(
    sd: dict[str, torch.Tensor],
    ids: torch.Tensor,
    labels: torch.Tensor,
    num_heads: int,
    emb_eps: float = 1e-6,
    block_eps: float = 1e-5,
    head_eps: float = 1e-5,
    mirror: bool = True,
    tanh: bool = False,
) -> torch.Tensor:
    """Independent AutoNAT forward over the official state_dict, written from the reference note (eval mode)."""
    d = sd["norm.weight"].shape[0]

    def ln(x, p, eps):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * sd[f"{p}.weight"] + sd[f"{p}.bias"]

    def lin(x, p):
        y = x @ sd[f"{p}.weight"].T
        return y + sd[f"{p}.bias"] if f"{p}.bias" in sd else y

    def gelu(x):
        if tanh:  # the wrong flavour, for negative controls only
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def embed(prefix, tok):
        x = sd[f"{prefix}.word_embeddings.weight"][tok] + sd[f"{prefix}.position_embeddings.weight"][: tok.shape[1]]
        return ln(x, f"{prefix}.LayerNorm", emb_eps)

    def attention(x, p):
        b, n, _ = x.shape
        dh = d // num_heads
        qkv = lin(x, f"{p}.qkv").view(b, n, 3, num_heads, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, Dh)
        a = torch.softmax((q @ k.transpose(-2, -1)) * dh**-0.5, dim=-1)
        return lin((a @ v).transpose(1, 2).reshape(b, n, d), f"{p}.proj")

    def block(x, p, skip=None):
        if skip is not None:
            x = lin(torch.cat([x, skip], dim=-1), f"{p}.skip_linear")
        x = x + attention(ln(x, f"{p}.norm1", block_eps), f"{p}.attn")
        return x + lin(gelu(lin(ln(x, f"{p}.norm2", block_eps), f"{p}.mlp.fc1")), f"{p}.mlp.fc2")

    depth = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    x = torch.cat([embed("context_embed", labels.view(-1, 1)), embed("token_emb", ids)], dim=1)
    skips = []
    for i in range(depth):
        x = block(x, f"in_blocks.{i}")
        skips.append(x)
    x = block(x, "mid_block")
    for i in range(depth):
        x = block(x, f"out_blocks.{i}", skips.pop() if mirror else skips[i])
    x = ln(x, "norm", block_eps)
    h = ln(gelu(lin(x, "mlm_layer.fc")), "mlm_layer.ln", head_eps)
    logits = h @ sd["token_emb.word_embeddings.weight"].detach().T + sd["mlm_layer.bias"]  # (B, 1 + N, K + 1)
    return logits[:, 1:, :-1]


def tiny_inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, K + 1, (batch, N), generator=g)  # includes the mask id K
    labels = torch.randint(0, C + 1, (batch,), generator=g)  # includes the null class C
    labels[0] = C
    return ids, labels


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
    ids, labels = tiny_inputs(batch)
    cond = labels if cond_shape == "flat" else labels[:, None]
    logits, state = model(ids, cond)
    assert logits.shape == (batch, N, K)  # K columns: the mask id is never a prediction
    assert logits.dtype == torch.float32 and state is None
    assert model.mask_id == K and model.null_class == C and model.num_tokens == N
    again, _ = model(ids, cond, state=None)
    assert torch.equal(logits, again)  # eval mode is deterministic


def test_grid_as_pair_and_condition_shapes_agree():
    model = tiny_uvit(grid_size=(2, 8)).eval()
    ids, labels = tiny_inputs()
    assert torch.equal(model(ids, labels)[0], model(ids, labels[:, None])[0])


def test_train_mode_uses_embedding_dropout():
    torch.manual_seed(0)
    model = tiny_uvit().train()
    ids, labels = tiny_inputs()
    assert not torch.allclose(model(ids, labels)[0], model(ids, labels)[0])


def test_input_validation():
    model = tiny_uvit()
    ids, labels = tiny_inputs()
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
    official = random_official_state_dict(small_stream=small_stream)
    model = tiny_uvit().eval()
    report = load_official_autonat(model, official)
    assert report.ok and not report.dropped and len(report.renamed) == len(official)
    ids, labels = tiny_inputs()
    with torch.no_grad():
        ours, _ = model(ids, labels)
        ref = reference_forward(official, ids, labels, num_heads=H)
        # Negative controls: the reference (hence the test) is sharp enough to see each of these mistakes.
        wrongs = [dict(emb_eps=1e-5), dict(block_eps=1e-6), dict(head_eps=1e-6)] if small_stream else [dict(tanh=True)]
        for wrong in [*wrongs, dict(mirror=False)]:
            other = reference_forward(official, ids, labels, num_heads=H, **wrong)
            assert not torch.allclose(ref, other, atol=1e-5, rtol=1e-5), wrong
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_round_trip_through_file_with_prefix_and_position_ids(tmp_path):
    official = random_official_state_dict(seed=3)
    path = tmp_path / "nnet_ema.pth"
    wrapped = {"module." + k: v for k, v in official.items()}
    wrapped["module.token_emb.position_ids"] = torch.arange(N)[None]
    torch.save({"nnet": wrapped, "step": 7}, path)

    model = tiny_uvit().eval()
    report = load_official_autonat(model, torch.load(path, weights_only=True))
    assert report.ok and report.dropped == ["module.token_emb.position_ids"]
    assert load_official_autonat(tiny_uvit(), path).ok  # a path works too
    ids, labels = tiny_inputs()
    with torch.no_grad():
        ref = reference_forward(official, ids, labels, H)
        torch.testing.assert_close(model(ids, labels)[0], ref, atol=1e-5, rtol=1e-5)


def test_unexpected_missing_and_mismatched_keys_raise():
    official = random_official_state_dict()
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
    official = random_official_state_dict()
    del official["norm.bias"]
    model = tiny_uvit()
    with pytest.warns(UserWarning, match="norm.bias"):
        report = load_official_autonat(model, official, strict=False)
    assert report.missing == ["final_norm.bias"]
    assert torch.equal(model.final_norm.weight, official["norm.weight"])


def test_infer_dims_builds_a_loadable_model():
    official = random_official_state_dict()
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
