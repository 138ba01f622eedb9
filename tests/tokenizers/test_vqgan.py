"""The MaskGIT/MAGE VQGAN tokenizer: official checkpoint layout, strict loading, quantizer, encode/decode contracts."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

import lit_nat
from lit_nat.tokenizers import VQGANTokenizer, load_tokenizer, tokenizer_from_config
from lit_nat.tokenizers.vqgan import VectorQuantizer, save_random_checkpoint

# the official depth (5 levels, 16x downsampling, 168 keys) at a quarter of the width: fast on a CPU
DEEP = dict(ch=32, z_channels=16, codebook_size=64)
# 2 levels (2x downsampling): for checks that only need some network
TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=32)


def official_keys() -> set[str]:
    """The 168 keys of official-implementations.md section 8.4, written out independently of the model code."""
    block = ["norm1.weight", "norm1.bias", "conv1.weight", "norm2.weight", "norm2.bias", "conv2.weight"]
    keys = {"encoder.conv_in.weight", "encoder.norm_out.weight", "encoder.norm_out.bias"}
    keys |= {"encoder.conv_out.weight", "encoder.conv_out.bias", "decoder.conv_in.weight", "decoder.conv_in.bias"}
    keys |= {"decoder.norm_out.weight", "decoder.norm_out.bias", "decoder.conv_out.weight", "decoder.conv_out.bias"}
    for part, levels in (("encoder", "down"), ("decoder", "up")):
        keys |= {f"{part}.{levels}.{i}.block.{j}.{p}" for i in range(5) for j in range(2) for p in block}
        keys |= {f"{part}.mid.block_{j}.{p}" for j in (1, 2) for p in block}
    keys |= {f"encoder.down.{i}.block.0.nin_shortcut.weight" for i in (2, 4)}
    keys |= {f"decoder.up.{i}.block.0.nin_shortcut.weight" for i in (1, 3)}
    keys |= {f"decoder.up.{i}.upsample.conv.{p}" for i in (1, 2, 3, 4) for p in ("weight", "bias")}
    return keys | {"quantize.embedding.weight"}


def smooth_images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, side, side)`` in [0, 1]: random colour blobs plus a little pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 6, 6, generator=gen), size=(side, side), mode="bilinear")
    return (0.85 * coarse + 0.15 * torch.rand(n, 3, side, side, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two oneDNN threads competing with other processes made this
    file 5-10x slower (spinning workers); with one it takes a few seconds either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory) -> str:
    return save_random_checkpoint(tmp_path_factory.mktemp("vqgan") / "deep.ckpt", seed=3, **DEEP)


@pytest.fixture(scope="module")
def tiny() -> VQGANTokenizer:
    return VQGANTokenizer(checkpoint=None, image_size=16, **TINY)


# --------------------------------------------------------------------------------------------- architecture
def test_full_default_architecture_matches_the_official_layout():
    with torch.device("meta"):
        tok = VQGANTokenizer(checkpoint=None)
    state = tok.state_dict()
    assert len(state) == 168 and set(state) == official_keys() and not list(tok.buffers())
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 256, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.up.4.block.0.conv1.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 256, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 128, 1, 1),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "quantize.embedding.weight": (1024, 256),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert (count(tok.encoder), count(tok.decoder), count(tok.quantize)) == (23_775_104, 30_478_339, 262_144)
    assert count(tok) == 54_515_587
    assert (tok.codebook_size, tok.grid_size, tok.image_size, tok.channels) == (1024, (16, 16), (256, 256), 3)


def test_random_weights_are_frozen_seeded_and_use_many_codes(tiny):
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())
    again = VQGANTokenizer(checkpoint=None, image_size=16, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), again.state_dict().values()))
    ids = tiny.encode(smooth_images(8, 16))  # (8, 64)
    assert ids.shape == (8, 64) and ids.dtype == torch.long
    assert ids.unique().numel() >= 16  # half of the 32 codes at least
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tiny.encode(smooth_images(8, 16)), ids)  # encoding ignores autocast: float32 throughout


# --------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("wrap", [True, False], ids=["state_dict-wrapper", "flat"])
def test_strict_load_round_trips_the_official_layout(tmp_path, wrap):
    path = save_random_checkpoint(tmp_path / "vq.ckpt", seed=1, wrap=wrap, **DEEP)
    saved = torch.load(path, weights_only=True)
    assert ("state_dict" in saved) == wrap
    saved = saved["state_dict"] if wrap else saved
    assert set(saved) == official_keys()
    tok = VQGANTokenizer(checkpoint=path, image_size=32, **DEEP)
    assert tok.state_dict().keys() == saved.keys()
    assert all(torch.equal(tok.state_dict()[k], v) for k, v in saved.items())
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())


def _edited(tmp_path, deep_ckpt, edit) -> str:
    state = torch.load(deep_ckpt, weights_only=True)["state_dict"]
    edit(state)
    path = str(tmp_path / "edited.ckpt")
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("decoder.up.3.block.0.nin_shortcut.weight"), "1 missing: decoder.up.3.block.0.nin_shortcut"),
        (lambda s: s.update({"loss.logvar": torch.zeros(())}), "1 unexpected: loss.logvar"),
        (
            lambda s: s.update({"quantize.embedding.weight": torch.zeros(64, 8)}),
            "quantize.embedding.weight: expected (64, 16), found (64, 8)",
        ),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_mismatched_checkpoints_are_refused_with_the_keys_listed(tmp_path, deep_ckpt, edit, expected):
    path = _edited(tmp_path, deep_ckpt, edit)
    with pytest.raises(ValueError) as err:
        VQGANTokenizer(checkpoint=path, **DEEP)
    assert expected in str(err.value) and path in str(err.value)


def test_stock_taming_and_nat_checkpoints_are_refused(tmp_path, deep_ckpt):
    def stock(state):  # a stock taming VQGAN has quant convs and attention blocks
        state["quant_conv.weight"] = torch.zeros(16, 16, 1, 1)
        state["post_quant_conv.weight"] = torch.zeros(16, 16, 1, 1)
        state["encoder.mid.attn_1.q.weight"] = torch.zeros(512, 512, 1, 1)

    with pytest.raises(ValueError, match=r"(?s)3 unexpected: .*quant_conv.weight.*stock taming"):
        VQGANTokenizer(checkpoint=_edited(tmp_path, deep_ckpt, stock), **DEEP)

    from lit_nat.models.uvit import UViT

    uvit = UViT(codebook_size=64, grid_size=2, num_classes=3, width=32, num_layers=3, num_heads=2)
    path = str(tmp_path / "uvit.ckpt")
    torch.save({"state_dict": uvit.state_dict()}, path)
    with pytest.raises(ValueError, match=r"(?s)168 missing: encoder\.conv_in\.weight.*\(\+158 more\).*unexpected: "):
        VQGANTokenizer(checkpoint=path, **DEEP)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_tokenizer("vqgan", checkpoint=tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt: not a readable checkpoint"):
        load_tokenizer("vqgan", checkpoint=junk)
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="list.ckpt: expected a checkpoint dictionary, found a list"):
        load_tokenizer("vqgan", checkpoint=tmp_path / "list.ckpt")


# --------------------------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("side, batch", [(256, 2), (512, 1)])
def test_encode_decode_shapes_at_16x_downsampling(deep_ckpt, side, batch):
    tok = load_tokenizer("vqgan", checkpoint=deep_ckpt, image_size=side, **DEEP)
    grid = side // 16
    assert tok.grid_size == (grid, grid) and tok.num_tokens == grid * grid
    ids = tok.encode(smooth_images(batch, side))
    assert ids.shape == (batch, grid * grid) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 64
    images = tok.decode(ids)
    assert images.shape == (batch, 3, side, side) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_ids_do_not_depend_on_the_batch(deep_ckpt):
    tok = load_tokenizer("vqgan", checkpoint=deep_ckpt, image_size=64, **DEEP)
    images = smooth_images(5, 64, seed=4)
    alone = torch.cat([tok.encode(images[i : i + 1]) for i in range(5)])
    for batch in (1, 3, 5):
        assert torch.equal(tok.encode(images[:batch]), alone[:batch])
    assert alone.unique().numel() > 8


def test_quantizer_matches_a_brute_force_argmin_and_is_batch_independent():
    torch.manual_seed(0)
    quant = VectorQuantizer(64, 16)
    z = torch.randn(5, 16, 6, 7)
    ids = quant(z)  # (5, 42), raster order: h then w
    flat = z.double().permute(0, 2, 3, 1).reshape(5, 42, 1, 16)
    brute = (flat - quant.embedding.weight.double()).square().sum(-1).argmin(-1)
    assert ids.shape == (5, 42) and torch.equal(ids, brute)
    for batch in (1, 3):
        assert torch.equal(quant(z[:batch]), ids[:batch])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quant(z), ids)  # distances stay float32


def test_quantizer_ties_pick_the_first_index():
    quant = VectorQuantizer(4, 2)
    with torch.no_grad():
        quant.embedding.weight.copy_(torch.tensor([[5.0, 5.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]))
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)  # equidistant from codes 1, 2 (and 3); on 1 = 3
    assert quant(z).tolist() == [[1, 1]]


def test_decode_dtype_bf16_returns_float32_images(deep_ckpt):
    tok = load_tokenizer("vqgan", checkpoint=deep_ckpt, image_size=32, decode_dtype="bf16", **DEEP)
    images = tok.decode(torch.arange(8).view(2, 4))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert tok.config()["decode_dtype"] == "bf16"


# --------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("side", [100, 8, 0])
def test_image_size_must_be_a_multiple_of_16(side):
    with pytest.raises(ValueError, match=rf"image_size must be a positive multiple of 16, got {side}"):
        VQGANTokenizer(checkpoint=None, image_size=side, **DEEP)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="multiples of 32"):
        VQGANTokenizer(checkpoint=None, ch=16)
    with pytest.raises(ValueError, match="decode_dtype"):
        VQGANTokenizer(checkpoint=None, decode_dtype="fp8", **TINY)
    with pytest.raises(TypeError, match="checkpoint"):
        load_tokenizer("vqgan")  # random weights only on request: checkpoint=None


def test_bad_inputs_are_refused(tiny):
    good = smooth_images(2, 16)
    bad_images = {
        "above one": good * 2,
        "below zero": good - 0.5,
        "nan": torch.full_like(good, float("nan")),
        "grey": good[:, :1],
        "wrong size": smooth_images(2, 32),
        "no batch": good[0],
        "uint8": (good * 255).to(torch.uint8),
    }
    for images in bad_images.values():
        with pytest.raises(ValueError, match="VQGANTokenizer.encode expects"):
            tiny.encode(images)
    ids = tiny.encode(good)
    for bad in (ids[:, :-1], ids.float(), ids[0], ids + 32, ids - 1):
        with pytest.raises(ValueError, match="VQGANTokenizer.decode"):
            tiny.decode(bad)
    assert tiny.encode(good[:0]).shape == (0, 64)


# --------------------------------------------------------------------------------------------- config and registry
def test_config_rebuilds_the_same_tokenizer(deep_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(deep_ckpt, tmp_path)
    tok = VQGANTokenizer(checkpoint=relative, image_size=32, **DEEP)
    config = tok.config()
    assert config == {"name": "vqgan", "checkpoint": deep_ckpt, "image_size": 32, "ch": 32, "z_channels": 16,
                      "codebook_size": 64}  # fmt: skip
    images = smooth_images(3, 32)
    rebuilt = tokenizer_from_config(json.loads(json.dumps(config)))
    assert isinstance(rebuilt, VQGANTokenizer) and rebuilt.config() == config
    assert torch.equal(rebuilt.encode(images), tok.encode(images))

    random = VQGANTokenizer(checkpoint=None, image_size=16, seed=5, batch_invariant=False, **TINY)
    config = random.config()
    assert config["checkpoint"] is None and config["seed"] == 5 and config["ch_mult"] == [1, 2]
    assert torch.equal(
        tokenizer_from_config(config).encode(images[:, :, :16, :16]), random.encode(images[:, :, :16, :16])
    )
    assert VQGANTokenizer(checkpoint=None, **TINY).config()["image_size"] == 256


def test_package_entry_points_build_both_tokenizers(deep_ckpt):
    tok = lit_nat.load_tokenizer("vqgan", checkpoint=deep_ckpt, image_size=512, **DEEP)
    assert isinstance(tok, VQGANTokenizer) and tok.grid_size == (32, 32) and not tok.training
    pixel = lit_nat.load_tokenizer("pixel", levels=17, image_size=8)
    assert pixel.name == "pixel" and pixel.grid_size == (8, 8)


def test_make_random_vqgan_script(tmp_path, capsys):
    import runpy

    out = tmp_path / "rand.ckpt"
    script = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "scripts", "make_random_vqgan.py")
    namespace = runpy.run_path(script)
    namespace["main"]([str(out), "--ch", "32", "--seed", "2"])
    assert "wrote random VQGAN weights" in capsys.readouterr().out
    tok = load_tokenizer("vqgan", checkpoint=out, ch=32, image_size=32)
    assert tok.encode(smooth_images(1, 32)).shape == (1, 4)
