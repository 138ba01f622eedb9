"""The official layouts of AutoNAT (U-ViT) and ENAT checkpoints, random state dicts in them and independent reference
forwards over them, written from the reference note: what the parity, import and CLI tests compare lit_nat with.

Everything is at the tiny size of ``tests/helpers/tiny.py`` (``K, N, C, D, H``; ``UVIT_BACKBONE``, ``ENAT_BACKBONE``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.helpers.tiny import DEC, ENC, UVIT_BACKBONE, C, D, K, N


# ------------------------------------------------------------------------------------------------ both: the head
def official_head_shapes(d: int, codebook_size: int) -> dict[str, tuple[int, ...]]:
    """The final norm and MLM head, the same keys in both official code bases (AutoNAT and ENAT)."""
    return {"norm.weight": (d,), "norm.bias": (d,), "mlm_layer.bias": (1, 1, codebook_size + 1),
            "mlm_layer.fc.weight": (d, d), "mlm_layer.fc.bias": (d,), "mlm_layer.ln.weight": (d,),
            "mlm_layer.ln.bias": (d,)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- AutoNAT (U-ViT)
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


def random_official_autonat_state_dict(seed: int = 0, small_stream: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout, scaled so that a parity test sees every LayerNorm eps and GELU flavour.

    ``small_stream=True`` keeps the residual stream and the head pre-activations small (std ~0.05) so that the variance
    entering every LayerNorm is comparable to eps: swapping 1e-5 and 1e-6 anywhere moves the logits far beyond the
    tolerance. ``small_stream=False`` uses signal-preserving weights and head pre-activations of order 2, where exact
    and tanh GELU differ visibly.
    """
    g = torch.Generator().manual_seed(seed)
    small = 0.05 if small_stream else 1.0
    sd = {}
    for key, shape in official_autonat_shapes(K, N, C, D, UVIT_BACKBONE["num_layers"]).items():
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


def reference_autonat(
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


def tiny_autonat_inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, K + 1, (batch, N), generator=g)  # includes the mask id K
    labels = torch.randint(0, C + 1, (batch,), generator=g)  # includes the null class C
    labels[0] = C
    return ids, labels


# ---------------------------------------------------------------------------------------------------------- ENAT
def official_enat_shapes(
    codebook_size: int, num_tokens: int, num_classes: int, width: int, num_blocks: int, mlp_ratio: int = 4
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ENAT (DiT) state_dict (reference note, section 3.9)."""
    d, hidden = width, mlp_ratio * width
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.word_embeddings.weight": (codebook_size + 1, d),
        "x_embedder.position_embeddings.weight": (num_tokens, d),
        "x_embedder.LayerNorm.weight": (d,),
        "x_embedder.LayerNorm.bias": (d,),
        "y_embedder.embedding_table.weight": (num_classes + 1, d),
    }
    for prefix in ("prev_embedder", "prev_proj.mlp"):
        shapes.update(
            {
                f"{prefix}.fc1.weight": (hidden, d),
                f"{prefix}.fc1.bias": (hidden,),
                f"{prefix}.fc2.weight": (d, hidden),
                f"{prefix}.fc2.bias": (d,),
            }
        )
    shapes["prev_proj.norm.weight"] = (d,)
    shapes["prev_proj.norm.bias"] = (d,)
    for i in range(num_blocks):
        p = f"blocks.{i}"
        for name, rows in (("attn.q", d), ("attn.kv.A", 2 * d), ("attn.kv.B", 2 * d), ("attn.proj", d)):
            shapes[f"{p}.{name}.weight"] = (rows, d)
            shapes[f"{p}.{name}.bias"] = (rows,)
        shapes.update(
            {
                f"{p}.mlp.fc1.weight": (hidden, d),
                f"{p}.mlp.fc1.bias": (hidden,),
                f"{p}.mlp.fc2.weight": (d, hidden),
                f"{p}.mlp.fc2.bias": (d,),
                f"{p}.adaLN_modulation.1.weight": (8 * d, d),
                f"{p}.adaLN_modulation.1.bias": (8 * d,),
            }
        )
    shapes.update(official_head_shapes(d, codebook_size))
    return shapes


def random_official_enat_state_dict(seed: int = 0, small_stream: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout with every part active.

    The official init zeroes the adaLN Linear (all gates 0: every block is the identity) and starts affine norms at
    the identity, which would hide most mistakes; here gates, shifts and scales are O(0.5), norms are perturbed, and
    the word table is large enough that the logits (features @ table) vary by O(1). ``small_stream=True`` keeps the
    residual stream at std ~0.005 (small embedding LN, small residual-writing projections), so its variance is
    comparable to the LayerNorm eps and a wrong eps anywhere moves the logits far beyond the tolerance.
    """
    g = torch.Generator().manual_seed(seed)
    small = 0.005 if small_stream else 1.0
    sd = {}
    for key, shape in official_enat_shapes(K, N, C, D, ENC + DEC).items():
        x = torch.randn(shape, generator=g)
        if "embedding" in key:  # word, position and label tables
            x = 0.5 * x
        elif ("LayerNorm" in key or "norm" in key or ".ln." in key) and key.endswith("weight"):
            x = 1 + 0.2 * x
        elif key.endswith("bias"):
            x = 0.1 * x
        elif "adaLN_modulation" in key:
            x = 0.5 * x / math.sqrt(shape[-1])
        elif key == "mlm_layer.fc.weight":
            x = 2.0 * x / math.sqrt(shape[-1])  # head pre-activations of order 2: exact vs tanh GELU differ
        else:
            x = x / math.sqrt(shape[-1])
        if key.startswith("x_embedder.LayerNorm") or key.endswith(("attn.proj.weight", "fc2.weight")):
            x = small * x  # the embedding and every residual branch write small values
        sd[key] = x
    return sd


def reference_enat(
    sd: dict[str, torch.Tensor],
    ids: torch.Tensor,
    labels: torch.Tensor,
    num_heads: int,
    encoder_layers: int,
    prev: dict[str, torch.Tensor] | None = None,
    wrong: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Independent ENAT forward (eval mode) over the official state_dict, written from the reference note 3.3-3.6.

    Boolean-mask gathers and explicit softmax attention, as in the official code. ``prev`` is the dict returned by
    the previous call (``masking``, ``feat``). ``wrong`` injects one deliberate mistake, for negative controls.
    """
    word = sd["x_embedder.word_embeddings.weight"]
    mask_id, d = word.shape[0] - 1, word.shape[1]
    num_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})

    def ln(x, eps, p=None):
        if x.numel() == 0:  # an empty token block (nothing visible / nothing masked)
            return x
        y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        return y * sd[f"{p}.weight"] + sd[f"{p}.bias"] if p else y

    def lin(x, p):
        return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    def gelu_exact(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    block_gelu = gelu_exact if wrong == "exact_gelu" else gelu_tanh
    eps = {"block": 1e-6, "context": 1e-6, "prev": 1e-6, "final": 1e-5}
    if wrong in ("block_eps", "context_eps", "prev_eps"):
        eps[wrong[:-4]] = 1e-5
    elif wrong == "final_eps":
        eps["final"] = 1e-6

    def attend(q, k, v):
        b, nq, nk, dh = q.shape[0], q.shape[1], k.shape[1], d // num_heads
        q = q.view(b, nq, num_heads, dh).transpose(1, 2)
        k = k.view(b, nk, num_heads, dh).transpose(1, 2)
        v = v.view(b, nk, num_heads, dh).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-2, -1) * dh**-0.5, dim=-1)
        return (a @ v).transpose(1, 2).reshape(b, nq, d)

    c = sd["y_embedder.embedding_table.weight"][labels.reshape(-1)]  # (B, D)

    def block(i, x, ctx):
        p = f"blocks.{i}"
        chunks = [t[:, None] for t in lin(F.silu(c), f"{p}.adaLN_modulation.1").chunk(8, dim=-1)]
        sh, sc, sh_, sc_, g_msa, sh_mlp, sc_mlp, g_mlp = chunks
        if wrong == "chunk_order":
            sh, sh_ = sh_, sh
        a, bb = ("kv.B", "kv.A") if wrong == "swap_kv" else ("kv.A", "kv.B")
        h = ln(x, eps["block"]) * (1 + sc) + sh
        kv = lin(h, f"{p}.attn.{bb}")
        if ctx is not None and ctx.shape[1] > 0:
            kv = torch.cat([lin(ln(ctx, eps["context"]) * (1 + sc_) + sh_, f"{p}.attn.{a}"), kv], dim=1)
        k, v = kv[..., :d], kv[..., d:]
        x = x + g_msa * lin(attend(lin(h, f"{p}.attn.q"), k, v), f"{p}.attn.proj")
        hid = block_gelu(lin(ln(x, eps["block"]) * (1 + sc_mlp) + sh_mlp, f"{p}.mlp.fc1"))
        return x + g_mlp * lin(hid, f"{p}.mlp.fc2")

    b, n = ids.shape
    x = word[ids] + sd["x_embedder.position_embeddings.weight"][:n]
    x = ln(x, 1e-6, "x_embedder.LayerNorm")
    masking = ids == mask_id
    counts = masking.sum(1)
    assert bool((counts == counts[0]).all())
    visible = ~masking

    if prev is None:
        enc = x[visible].view(b, -1, d)
        if enc.shape[1] > 0:
            for i in range(encoder_layers):
                enc = block(i, enc, None)
    else:
        assert bool((masking <= prev["masking"]).all())  # masked now => masked before
        prev_visible = ~prev["masking"]
        p = prev["feat"][prev_visible].view(b, -1, d)
        if wrong != "no_prev_proj":
            hid = gelu_tanh(lin(ln(p, eps["prev"], "prev_proj.norm"), "prev_proj.mlp.fc1"))
            p = p + lin(hid, "prev_proj.mlp.fc2")
        new_mask = visible & prev["masking"]
        new = x[new_mask].view(b, -1, d)
        if new.shape[1] > 0:
            for i in range(encoder_layers):
                new = block(i, new, p)
        full = torch.zeros(b, n, d)
        full[prev_visible] = p.reshape(-1, d)
        full[new_mask] = new.reshape(-1, d)
        enc = full[visible].view(b, -1, d)

    dec = x[masking].view(b, -1, d)
    for i in range(encoder_layers, num_blocks):
        dec = block(i, dec, enc)
    feat = torch.zeros(b, n, d)
    feat[visible] = enc.reshape(-1, d)
    feat[masking] = dec.reshape(-1, d)

    h = ln(gelu_exact(lin(ln(feat, eps["final"], "norm"), "mlm_layer.fc")), 1e-5, "mlm_layer.ln")
    logits = h @ word.T + sd["mlm_layer.bias"]  # (B, N, K + 1)
    return logits[..., :-1], {"masking": masking, "feat": feat}
