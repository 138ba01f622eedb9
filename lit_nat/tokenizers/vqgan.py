"""The MaskGIT/MAGE VQGAN (f16, 1024 codes) used by AutoNAT and ENAT, behind the :class:`Tokenizer` interface.

Architecture (official-implementations.md section 8; it differs from stock taming VQGANs):

    images (B, 3, H, W) in [0, 1] -> Encoder -> z (B, 256, H/16, W/16) -> nearest code -> ids (B, H/16 * W/16)
    ids -> codebook rows (B, 256, H/16, W/16) -> Decoder -> images (B, 3, H, W), clamped to [0, 1]

No attention, no quant_conv/post_quant_conv, parameter-free 2x2 average-pool downsampling, bias-free 3x3 convs in the
residual blocks, and a 1x1 shortcut applied to the block's *output* when the width changes. The module names below
make ``state_dict()`` exactly the 168 keys of the official checkpoint (``vqgan_jax_strongaug.ckpt``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.tokenizers.base import SquareConvTokenizer

__all__ = [
    "Decoder",
    "Encoder",
    "ResnetBlock",
    "VQGANTokenizer",
    "VectorQuantizer",
    "check_state_dict",
    "read_vqgan_checkpoint",
    "save_random_checkpoint",
]

#: The official f16 architecture (``vq-f16-jax.yaml``); config() lists only the arguments that differ from these.
DEFAULT_ARCH: dict[str, Any] = dict(
    ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, codebook_size=1024
)
DECODE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_GROUPS = 32


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-swish-conv3x3 twice (convs without bias). Same width: ``x + h``. Width change: ``h + nin_shortcut(h)``,
    a bias-free 1x1 conv on ``h`` (not on ``x``; the input is dropped), as the checkpoint's (c_out, c_out) shapes need.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W)`` -> ``(B, c_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.nin_shortcut(h) if self.nin_shortcut is not None else x + h


class _Level(nn.Module):
    """One resolution level: ``block.{j}`` ResnetBlocks, then (decoder levels > 0) ``upsample``: nearest x2, conv3x3."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, upsample: bool = False) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if j == 0 else c_out, c_out) for j in range(num_blocks)])
        up = dict(nearest=nn.Upsample(scale_factor=2.0, mode="nearest"), conv=nn.Conv2d(c_out, c_out, 3, padding=1))
        self.upsample = nn.Sequential(OrderedDict(up)) if upsample else None


def _mid(channels: int) -> nn.Sequential:
    """The two middle ResnetBlocks, ``mid.block_1`` and ``mid.block_2`` (no attention between them)."""
    return nn.Sequential(OrderedDict(block_1=ResnetBlock(channels, channels), block_2=ResnetBlock(channels, channels)))


class Encoder(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, z_channels, H / 2**(L-1), W / 2**(L-1))`` with L = len(ch_mult) levels."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList([_Level(([ch] + widths)[i], widths[i], num_res_blocks) for i in range(len(widths))])
        self.mid = _mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)  # parameter-free downsampling
        h = self.mid(h)  # (B, ch * ch_mult[-1], h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, h, w)


class Decoder(nn.Module):
    """``(B, z_channels, h, w)`` -> ``(B, 3, h * 2**(L-1), w * 2**(L-1))``; ``up.{i}`` is level i, run from L-1 to 0."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = _mid(widths[-1])
        # level i reads the width of level i + 1 (the one run before it) and upsamples unless it is level 0
        self.up = nn.ModuleList(
            [
                _Level((widths + widths[-1:])[i + 1], widths[i], num_res_blocks, upsample=i > 0)
                for i in range(len(widths))
            ]
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch * ch_mult[-1], h, w)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    """Nearest codebook row by squared Euclidean distance ``|z|^2 + |e|^2 - 2 z.e`` (no normalisation)."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> ids ``(B, h * w)`` long in raster order (h, then w); the first index wins ties.

        Distances are float32 (autocast off) and computed one image at a time, so every image goes through the same
        ``(h*w, C) @ (C, K)`` product whatever the batch size, and its ids do not depend on the batch it came in.
        """
        z = z.float().permute(0, 2, 3, 1).flatten(1, 2)  # (B, h*w, C)
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes = self.embedding.weight.float()  # (K, C)
            codes_sq = codes.square().sum(1)  # (K,)
            ids = []
            for zb in z.unbind(0):  # (h*w, C)
                dist = zb.square().sum(1, keepdim=True) + codes_sq - 2.0 * (zb @ codes.T)  # (h*w, K)
                ids.append(dist.argmin(1))
        return torch.stack(ids) if ids else z.new_zeros(z.shape[:2], dtype=torch.long)  # (B, h*w)


class VQGANTokenizer(SquareConvTokenizer):
    """The MaskGIT/MAGE f16 VQGAN: ``image_size`` px RGB in [0, 1] <-> a ``(image_size / 16)**2`` grid of 1024 codes.

    Frozen and in eval mode. ``encode`` always runs in float32 (autocast off, as the official feature extraction);
    ``decode`` runs in float32 too unless ``decode_dtype`` is ``"bf16"``/``"fp16"`` (autocast, like the official
    samplers' fp16 decoding), and returns float32 images clamped to [0, 1].

    Args:
        checkpoint: Local path of the official checkpoint (:func:`lit_nat.tokenizers.load_tokenizer` also takes a
            ``URL#sha256=<hex>`` through torch.hub's cache) (a flat state_dict or one under ``"state_dict"``), loaded
            strictly: every one of the 168 keys with its shape, nothing else. ``None`` builds *random* weights from
            ``seed`` (for tests and benchmarks; tokens are meaningless) -- it must be given explicitly.
        image_size: Side of the square images; a multiple of ``2**(len(ch_mult) - 1)`` (16). The weights are fully
            convolutional: the same checkpoint serves 256 px (16x16 tokens) and 512 px (32x32 tokens).
        ch, ch_mult, num_res_blocks, z_channels, codebook_size: Architecture; the defaults are the official ones.
        seed: Seed of the random weights when ``checkpoint`` is None (the codebook is drawn from the encoder's own
            outputs, so random weights still use many codes); ignored otherwise.
        decode_dtype: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: autocast dtype of the decoder.
        batch_invariant: Encode one image at a time (default), so an image gets the same ids alone or in any batch.
            Convolution kernels may change with the batch size (seen on CPU: 1e-6 differences in z at batch 1 vs 5),
            which can flip a near-tie between two codes; ``False`` encodes the batch at once (faster on GPUs).
    """

    name = "vqgan"
    checkpoint_kinds = ("path", "url")  # a file: a local path, or a URL#sha256= through torch.hub's cache

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        image_size: int = 256,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 1024,
        seed: int = 0,
        decode_dtype: str = "fp32",
        batch_invariant: bool = True,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        self.arch = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels)
        self.arch["codebook_size"] = codebook_size
        if not ch_mult or min(ch, num_res_blocks, z_channels, codebook_size, *ch_mult) < 1:
            raise ValueError(f"VQGANTokenizer: every architecture argument must be >= 1, got {self.arch}")
        if any(ch * m % NORM_GROUPS for m in ch_mult):
            raise ValueError(
                f"VQGANTokenizer: ch * ch_mult must be multiples of {NORM_GROUPS} (GroupNorm), got {self.arch}"
            )
        self.set_size(image_size, 2 ** (len(ch_mult) - 1))
        if decode_dtype not in DECODE_DTYPES:
            raise ValueError(f"VQGANTokenizer: decode_dtype must be one of {list(DECODE_DTYPES)}, got {decode_dtype!r}")
        self.seed = seed
        self.decode_dtype = decode_dtype
        self.batch_invariant = batch_invariant
        self.checkpoint = None if checkpoint is None else os.path.abspath(os.fspath(checkpoint))
        state = None if self.checkpoint is None else read_vqgan_checkpoint(self.checkpoint)  # fail before building

        with torch.random.fork_rng(devices=[]):  # seeded default init, without touching the global RNG
            torch.manual_seed(seed)
            self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
            self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
            self.quantize = VectorQuantizer(codebook_size, z_channels)
        if state is not None:
            check_state_dict(state, self.state_dict(), self.checkpoint)
            self.load_state_dict(state)
        elif not self.quantize.embedding.weight.is_meta:  # under torch.device("meta") there is nothing to encode
            self._draw_codebook(seed)
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------------------------------ Tokenizer interface
    @classmethod
    def space_of(
        cls, checkpoint: Any = None, image_size: int = 256, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        codebook_size: int = 1024, **_: Any,
    ) -> tuple[int, tuple[int, int]]:  # fmt: skip
        side = int(image_size) // 2 ** (len(ch_mult) - 1)
        return int(codebook_size), (side, side)

    @property
    def codebook_size(self) -> int:
        return self.arch["codebook_size"]

    @property
    def channels(self) -> int:
        return 3

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [0, 1] -> ``(B, h * w)`` long ids in raster order (float32, autocast off)."""
        expected = (3, self._side, self._side)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            raise ValueError(
                f"VQGANTokenizer.encode expects float images (B, {', '.join(map(str, expected))}) in [0, 1], "
                f"got {images.dtype} {tuple(images.shape)} (uint8 pixels: divide by 255 first)"
            )
        if bool(((images < 0) | (images > 1) | images.isnan()).any()):
            lo, hi = images.nan_to_num(0.5).aminmax()
            raise ValueError(f"VQGANTokenizer.encode expects values in [0, 1] (no NaN), got range [{lo}, {hi}]")
        weight = self.encoder.conv_in.weight
        with torch.autocast(device_type=images.device.type, enabled=False):
            images = images.to(device=weight.device, dtype=weight.dtype)
            chunks = images.split(1) if self.batch_invariant else [images]
            z = torch.cat([self.encoder(chunk) for chunk in chunks])  # (B, z_channels, h, w)
        return self.quantize(z)  # (B, h*w)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """``(B, h * w)`` ids in ``[0, K)`` -> ``(B, 3, H, W)`` float32 in [0, 1]."""
        self.check_ids(ids)
        h, w = self.grid_size
        codes = self.quantize.embedding(ids.to(self.quantize.embedding.weight.device).long())  # (B, h*w, C)
        z = codes.view(ids.shape[0], h, w, -1).permute(0, 3, 1, 2)  # (B, C, h, w)
        dtype = DECODE_DTYPES[self.decode_dtype]
        with torch.autocast(device_type=z.device.type, dtype=dtype, enabled=dtype != torch.float32):
            images = self.decoder(z.contiguous())  # (B, 3, H, W)
        return images.float().clamp(0, 1)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, "checkpoint": self.checkpoint, "image_size": self._side}
        config.update({k: list(v) if k == "ch_mult" else v for k, v in self.arch.items() if v != DEFAULT_ARCH[k]})
        if self.checkpoint is None and self.seed != 0:
            config["seed"] = self.seed
        if self.decode_dtype != "fp32":
            config["decode_dtype"] = self.decode_dtype
        if not self.batch_invariant:
            config["batch_invariant"] = False
        return config

    # ------------------------------------------------------------------------------------------------ random init
    def _draw_codebook(self, seed: int, num_images: int = 2) -> None:
        """Random weights' codebook: encoder outputs of smooth random images (grid 8x8), picked at random, plus noise.

        With a Gaussian codebook most encoder outputs would share the few codes nearest their mean; drawing the codes
        from the encoder's own output distribution makes random weights give varied tokens (for tests, benchmarks and
        pipeline dry runs). Images: 4x4 random colours, bilinearly upsampled, with 10% pixel noise.
        """
        gen = torch.Generator().manual_seed(seed)
        side = 8 * self.factor
        coarse = torch.rand(num_images, 3, 4, 4, generator=gen)
        smooth = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        images = (0.9 * smooth + 0.1 * torch.rand(num_images, 3, side, side, generator=gen)).to(
            self.encoder.conv_in.weight
        )
        with torch.no_grad():
            z = self.encoder(images).permute(0, 2, 3, 1).flatten(0, 2).cpu()  # (num_images * 64, C)
            pick = torch.randint(z.shape[0], (self.codebook_size,), generator=gen)
            noise = torch.randn(self.codebook_size, z.shape[1], generator=gen) * z.std(0)
            self.quantize.embedding.weight.copy_(z[pick] + 0.1 * noise)


def read_vqgan_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read ``path`` (weights only, CRCs checked: :func:`lit_nat.core.checkpointing.read_checkpoint`) and unwrap a
    ``"state_dict"`` entry.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a torch checkpoint (a :class:`~lit_nat.core.errors.CheckpointError`), or not a name -> tensor
            mapping.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQGAN checkpoint not found: {path}")
    obj = read_checkpoint(path, legacy_format=True)  # taming's release predates torch's zip format
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = f"keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"VQGAN checkpoint {path}: expected a name -> tensor state_dict, found {kind}")
    return dict(obj)


def check_state_dict(obj: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: str) -> None:
    """Raise a ValueError listing the keys of ``obj`` (read from ``path``) missing, unexpected or of the wrong shape."""
    missing = [k for k in expected if k not in obj]
    unexpected = [k for k in obj if k not in expected]
    mismatched = [
        f"{k}: expected {tuple(v.shape)}, found {tuple(obj[k].shape)}"
        for k, v in expected.items()
        if k in obj and obj[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"VQGAN checkpoint {path} does not match the MaskGIT VQGAN ({len(expected)} keys; found {len(obj)}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:10]) + more)
        if any(k.startswith(("quant_conv", "post_quant_conv")) or ".attn" in k for k in unexpected):
            lines.append("  (quant_conv / attention keys: a stock taming VQGAN, not the MaskGIT/MAGE f16 tokenizer)")
        raise ValueError("\n".join(lines))


def save_random_checkpoint(path: str | os.PathLike, seed: int = 0, wrap: bool = True, **arch: Any) -> str:
    """Write random VQGAN weights in the official layout (under ``"state_dict"`` if ``wrap``); returns the path.

    For tests, benchmarks and dry runs of the data/sampling pipeline without the real weights: the file loads
    exactly like the official checkpoint and the codebook is drawn so that encodings use many codes, but the tokens
    carry no meaning. ``arch``: the architecture arguments of :class:`VQGANTokenizer` (defaults: official sizes).
    """
    state = VQGANTokenizer(checkpoint=None, seed=seed, **arch).state_dict()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state_dict": state} if wrap else state, path)
    return path
