"""aMUSEd's local diffusers folders: read one into lit_nat's model arguments, or write a random one for tests.

A folder (a local copy of ``amused/amused-256`` or ``-512``, or the hub id itself, fetched into and read from
huggingface_hub's cache: :mod:`lit_nat.core.assets`) holds ``transformer/``
(``UVit2DModel``), ``vqvae/`` (``VQModel``), ``text_encoder/`` (``CLIPTextModelWithProjection``, CLIP-L/14),
``tokenizer/`` and ``scheduler/`` (``AmusedScheduler``). :func:`read_amused_folder` checks it and turns it into the
NATModule's arguments; the backbone is :class:`lit_nat.models.amused.AmusedBackbone`, the VQ-GAN
:class:`lit_nat.tokenizers.amused_vq.AmusedVQTokenizer`, the text encoder lit_nat's ``clip`` encoder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lit_nat.conditioning.text import save_random_clip
from lit_nat.core.assets import hub_folder, hub_uri, sha256_of
from lit_nat.core.errors import UsageError
from lit_nat.core.io import atomic_write_json
from lit_nat.tokenizers.amused_vq import downsampling_factor

SUBFOLDERS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
#: the class each sub-folder's config must name (diffusers writes ``_class_name``)
EXPECTED_CLASSES = {"transformer": "UVit2DModel", "vqvae": "VQModel", "scheduler": "AmusedScheduler"}
AESTHETIC_SCORE = 6.0  # aMUSEd's default micro-condition


def default_micro_conds(image_size: int) -> list[float]:
    """``[width, height, crop top, crop left, aesthetic score]`` as ``AmusedPipeline`` passes by default."""
    return [float(image_size), float(image_size), 0.0, 0.0, AESTHETIC_SCORE]


def _config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name / "config.json"
    if name == "tokenizer":
        if not any((folder / name / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            raise UsageError(f"{folder / name}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
        return {}
    if name == "scheduler":
        path = folder / name / "scheduler_config.json"
    if not path.is_file():
        raise UsageError(f"{folder}: the sub-folder {name}/ (with {path.name}) is missing: not an aMUSEd folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


def amused_location(src: str | os.PathLike) -> tuple[Path, str]:
    """``(local folder, what its sub-folders are recorded under)`` of an aMUSEd location: a local folder (recorded by
    its absolute path), or a hub id such as ``amused/amused-256`` (through huggingface_hub's cache; recorded as
    ``hf://amused/amused-256``, so another machine resolves it from its own cache)."""
    src = os.fspath(src)
    uri = None if Path(src).exists() else hub_uri(src)
    if uri is None:
        folder = Path(src)
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder (an aMUSEd diffusers folder: {', '.join(SUBFOLDERS)}, or a "
                             "hub id such as amused/amused-256)")  # fmt: skip
        return folder, str(folder.resolve())
    revision = f"@{uri.revision}" if uri.revision else ""
    inner = f"/{uri.path_in_repo.strip('/')}" if uri.path_in_repo.strip("/") else ""
    return hub_folder(uri, "the aMUSEd pipeline", "--src"), f"hf://{uri.id}{revision}{inner}"


def read_amused_folder(src: str | os.PathLike, recorded_as: str | None = None) -> dict[str, Any]:
    """Check an aMUSEd diffusers folder (a local folder or a hub id: :func:`amused_location`) and return the NATModule
    arguments it implies (token space, backbone, tokenizer, text encoder, the ``amused`` schedule preset). The VQ-GAN
    and text encoder are recorded under ``recorded_as`` (default: the folder's absolute path or ``hf://`` id), each
    sub-folder with its sha256. A folder of another pipeline is an error naming it."""
    if recorded_as is None:
        src, recorded_as = amused_location(src)
    folder = Path(src)
    index = folder / "model_index.json"
    if index.is_file():
        pipeline = json.loads(index.read_text()).get("_class_name")
        if pipeline and pipeline != "AmusedPipeline":
            raise UsageError(f"{folder}: a {pipeline} folder, not aMUSEd's (AmusedPipeline)")
    configs = {name: _config(folder, name) for name in SUBFOLDERS}
    for name, expected in EXPECTED_CLASSES.items():
        found = configs[name].get("_class_name")
        if found != expected:
            raise UsageError(f"{folder / name}: config of a {found}, expected {expected} (not an aMUSEd folder)")
    transformer = {k: v for k, v in configs["transformer"].items() if not k.startswith("_")}
    vq = configs["vqvae"]
    factor = downsampling_factor(vq)
    side = int(transformer.get("sample_size", 16))
    return {
        "arch": "amused",
        "arch_overrides": {"transformer": transformer, "micro_conds": default_micro_conds(side * factor),
                           "mask_token_id": int(configs["scheduler"]["mask_token_id"])},  # fmt: skip
        "codebook_size": int(transformer["codebook_size"]),
        "grid_size": (side, side),
        "num_classes": 1,
        "tokenizer": {"name": "amused_vq", "checkpoint": f"{recorded_as}/vqvae", "sha256": sha256_of(folder / "vqvae"),
                      "image_size": side * factor},  # fmt: skip
        "text_encoder": {"name": "clip", "path": f"{recorded_as}/text_encoder",
                         "sha256": sha256_of(folder / "text_encoder"), "tokenizer_path": f"{recorded_as}/tokenizer",
                         "tokenizer_sha256": sha256_of(folder / "tokenizer"), "layer": "penultimate",
                         "pooled": "projection", "max_length": 77},  # fmt: skip
        "schedule": "amused",
    }



# ----------------------------------------------------------------------------------------------------------------------
def save_random_amused(
    path: str | Path, *, hidden: int = 8, layers: int = 1, grid: int = 8, codebook: int = 8, vq_levels: int = 2,
    text_width: int = 8, text_layers: int = 2, text_heads: int = 2, transformer: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:  # fmt: skip
    """Write an aMUSEd diffusers folder with *random* weights from tiny configs (the sizes of diffusers' own aMUSEd
    tests by default; nothing downloaded), for tests and benchmarks: ``model_index.json`` and ``transformer/``,
    ``vqvae/``, ``text_encoder/`` + ``tokenizer/`` (a character-level CLIP tokenizer), ``scheduler/``. Images are
    ``grid * 2**(vq_levels - 1)`` px with a ``grid x grid`` token grid of ``codebook`` codes; ``transformer`` overrides
    entries of the ``UVit2DModel`` config (e.g. aMUSEd-256's real sizes for a benchmark)."""
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from diffusers.utils import logging as diffusers_logging


    diffusers_logging.disable_progress_bar()
    path = Path(path)
    vocab = codebook + 1 + (-(codebook + 1)) % 8  # codes + [MASK], rounded up as aMUSEd's 8256
    micro_dim = 2
    overrides = dict(transformer or {})
    transformer = dict(hidden_size=hidden, use_bias=False, cond_embed_dim=text_width, micro_cond_encode_dim=micro_dim,
                       micro_cond_embed_dim=5 * micro_dim, encoder_hidden_size=text_width, vocab_size=vocab,
                       codebook_size=codebook, in_channels=hidden, block_out_channels=hidden, num_res_blocks=1,
                       downsample=True, upsample=True, block_num_heads=1, num_hidden_layers=layers,
                       num_attention_heads=1, intermediate_size=2 * hidden, sample_size=grid)  # fmt: skip
    transformer.update(overrides)
    vq = dict(act_fn="silu", block_out_channels=[8] * vq_levels, down_block_types=["DownEncoderBlock2D"] * vq_levels,
              up_block_types=["UpDecoderBlock2D"] * vq_levels, in_channels=3, out_channels=3, latent_channels=8,
              layers_per_block=1, norm_num_groups=8, num_vq_embeddings=codebook, sample_size=grid,
              mid_block_add_attention=False, lookup_from_codebook=True, force_upcast=True)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UVit2DModel(**transformer).save_pretrained(path / "transformer")
        VQModel(**vq).save_pretrained(path / "vqvae")
    AmusedScheduler(mask_token_id=vocab - 1).save_pretrained(path / "scheduler")
    save_random_clip(path / "text_encoder", hidden=text_width, layers=text_layers, heads=text_heads,
                     projection=text_width, seed=seed)  # fmt: skip
    (path / "tokenizer").mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.move(path / "text_encoder" / name, path / "tokenizer" / name)
    index = {"_class_name": "AmusedPipeline", "transformer": ["diffusers", "UVit2DModel"],
             "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "AmusedScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"]}  # fmt: skip
    atomic_write_json(path / "model_index.json", index, indent=1)
    return path
