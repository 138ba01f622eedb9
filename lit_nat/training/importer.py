"""``python -m lit_nat import-checkpoint``: official weights -> a lit_nat (Lightning) checkpoint.

The official file holds bare backbone weights (``nnet_ema.pth``). We build the NATModule that the given config
describes, with the token space inferred from the weights themselves (codebook, grid and class-table sizes), load
the weights strictly into both the online and the EMA backbone, and write a complete Lightning checkpoint (fresh
optimiser and scheduler state at step 0), so that ``fit``, ``validate``, ``test`` and ``predict`` accept it with
``--ckpt_path`` and :func:`lit_nat.load_model` returns the official model.

aMUSEd (``--format amused``) is a diffusers folder instead: the folder itself describes the model (transformer config,
VQ-GAN, CLIP text encoder, scheduler), so no config is needed; :func:`amused_module` is the same from Python.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml

from lit_nat.core.assets import is_url
from lit_nat.core.checkpointing import read_checkpoint, save_checkpoint_file
from lit_nat.core.errors import UsageError
from lit_nat.data.shards import read_metadata
from lit_nat.data.tokenize_plan import tokenizer_kwargs
from lit_nat.models import ARCHITECTURES
from lit_nat.models.amused import load_amused_transformer
from lit_nat.models.amused_folder import amused_location, read_amused_folder
from lit_nat.models.convert import CONVERTERS, load_official
from lit_nat.tokenizers import TOKENIZERS, pinned, resolve_checkpoint, token_space
from lit_nat.training.module import NATModule

#: model arguments that come from the weights (or the data's meta.json), never from the config's model section
TOKEN_SPACE_ARGS = ("codebook_size", "grid_size", "num_classes", "tokenizer")
#: source layouts: the official state_dict converters and aMUSEd's diffusers folder
FORMATS = (*CONVERTERS, "amused")


def read_model_section(config: Path) -> dict[str, Any]:
    """The ``model:`` section of a lit_nat config, checked against NATModule's arguments."""
    if not config.is_file():
        raise FileNotFoundError(f"config file {config} does not exist")
    data = yaml.safe_load(config.read_text()) or {}
    section = dict(data.get("model") or {})
    accepted = set(inspect.signature(NATModule.__init__).parameters) - {"self"}
    unknown = sorted(set(section) - accepted)
    if unknown:
        raise ValueError(f"{config}: model section has unknown keys {unknown}; NATModule accepts {sorted(accepted)}")
    return {key: value for key, value in section.items() if key not in TOKEN_SPACE_ARGS}


def read_data_meta(config: Path) -> dict[str, Any] | None:
    """The data meta.json named by the config (``data.root``), if it exists here."""
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    root = data.get("root") if isinstance(data, dict) else None
    meta_path = Path(root) / "meta.json" if root else None
    if meta_path is None or not meta_path.is_file():
        return None

    meta = read_metadata(root)
    return {
        "codebook_size": meta.codebook_size,
        "grid_size": tuple(meta.grid_size),
        "num_classes": meta.num_classes,
        "tokenizer": meta.tokenizer,
    }


def build_checkpoint(module: NATModule, extra: dict[str, Any]) -> dict[str, Any]:
    """A complete Lightning checkpoint at step 0 for ``module`` (what ``Trainer.save_checkpoint`` would write)."""
    optim_config = module.configure_optimizers()
    checkpoint: dict[str, Any] = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "optimizer_states": [optim_config["optimizer"].state_dict()],
        "lr_schedulers": [optim_config["lr_scheduler"]["scheduler"].state_dict()],
        "callbacks": {},
        "lit_nat": extra,
    }
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def import_checkpoint(format: Literal["autonat", "enat", "amused"], src: Path, dst: Path,
                      model_config: Path | None = None, num_heads: int | None = None, overwrite: bool = False,
                      tokenizer: str | None = None, tokenizer_checkpoint: str | None = None,
                      tokenizer_arg: list[str] | None = None) -> Path:  # fmt: skip
    """Convert an official checkpoint (nnet_ema.pth) or an aMUSEd diffusers folder into a lit_nat checkpoint that fit,
    validate, test, predict, sample, edit and search accept with --ckpt_path.

    Args:
        format: layout of the source: ``autonat`` (LeapLabTHU/ImprovedNAT ``nnet_ema.pth``), ``enat``
            (LeapLabTHU/ENAT ``nnet_ema.pth`` / ``nnet_ema_512.pth``; its unused ``prev_embedder`` is dropped) or
            ``amused`` (a local diffusers folder of ``amused/amused-256`` or ``-512``; see :func:`import_amused`).
        src: the official state_dict file (``amused``: the folder).
        model_config: the lit_nat config whose ``model`` section describes the architecture (e.g.
            configs/autonat_l.yaml); for ``amused`` optional (the folder describes the model; the config may set other
            model arguments).
        dst: the lit_nat checkpoint to write.
        num_heads: override the attention head count (it cannot be read from the weights); default: the config's.
        overwrite: replace an existing ``dst`` (by default an existing file is never touched).
        tokenizer: the tokenizer to record in the checkpoint (e.g. ``vqgan``), so ``sample`` and ``edit`` decode images
            from the checkpoint alone; default: the one of the config's data ``meta.json``, if it exists.
        tokenizer_checkpoint: that tokenizer's weights: a local file (recorded by its absolute path and sha256, e.g.
            ``assets/vqgan_jax_strongaug.ckpt``) or ``URL#sha256=<hex>`` (fetched into torch.hub's cache; recorded as
            it is). ``sample``/``edit``/``search``/``validate --tokenizer_checkpoint`` point a moved copy elsewhere.
        tokenizer_arg: further tokenizer arguments as ``KEY=VALUE``; its ``image_size`` follows from the weights' grid.
    """
    if format == "amused":
        return import_amused(src, dst, config=model_config, overwrite=overwrite)
    if format not in CONVERTERS:
        raise ValueError(f"unknown checkpoint format {format!r}; expected one of {sorted(FORMATS)}")
    if model_config is None:
        raise UsageError(f"import-checkpoint --format {format}: --model_config is required (the architecture it "
                         "describes)")  # fmt: skip
    src, config, dst = Path(src), Path(model_config), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    if not src.is_file():
        raise FileNotFoundError(f"official checkpoint {src} does not exist")
    official = read_checkpoint(src)

    model_args = read_model_section(config)
    overrides = dict(model_args.get("arch_overrides") or {})
    dims = official_dims(format, official, model_args.get("arch", "autonat-s"), overrides, config)
    token_space = token_space_of(src, config, dims, tokenizer, tokenizer_checkpoint, tokenizer_arg)
    overrides.update(dims)  # width and depth come from the weights
    if num_heads is not None:
        overrides["num_heads"] = num_heads
    model_args["arch_overrides"] = overrides

    module = NATModule(**model_args, **token_space)
    report = load_official(module.backbone, official, format=format, strict=True)
    module.ema_backbone.load_state_dict(module.backbone.state_dict())

    checkpoint = build_checkpoint(module, {"imported_from": str(src), "format": format, "report": report.summary()})
    save_checkpoint_file(checkpoint, dst)  # atomic: never a half-written checkpoint under the final name
    print(f"import-checkpoint: {src} -> {dst}\n{report.summary()}")
    return dst


def token_space_of(src: Path, config: Path, dims: dict[str, Any], tokenizer: str | None,
                   tokenizer_checkpoint: str | None, tokenizer_arg: list[str] | None) -> dict[str, Any]:  # fmt: skip
    """The token space read from the weights (``dims`` loses those keys), checked against the config's data
    ``meta.json`` where it exists, with the tokenizer to record (``--tokenizer`` over the data's)."""
    token_space = {key: dims.pop(key) for key in ("codebook_size", "grid_size", "num_classes")}
    meta = read_data_meta(config)
    if meta is not None:
        mismatched = {k: (meta[k], v) for k, v in token_space.items() if _norm(meta[k]) != _norm(v)}
        if mismatched:
            raise ValueError(f"{src} does not match the data of {config}: (data meta.json, checkpoint) = {mismatched}")
        token_space["tokenizer"] = meta["tokenizer"]
    if tokenizer is not None:
        token_space["tokenizer"] = tokenizer_record(tokenizer, tokenizer_checkpoint, tokenizer_arg, token_space)
    return token_space


def official_dims(format: str, official: dict, arch: str, overrides: dict, config: Path) -> dict[str, Any]:
    """Widths, depths and token space read from the official weights (the encoder/decoder split of ENAT is not
    visible in them: it comes from the config's ``decoder_layers``, registry default 2)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"{config}: unknown model.arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    infer = CONVERTERS[format].infer_dims
    if "decoder_layers" in inspect.signature(infer).parameters:
        split = overrides.get("decoder_layers", ARCHITECTURES[arch].defaults.get("decoder_layers", 2))
        return infer(official, decoder_layers=split)
    return infer(official)


def tokenizer_record(name: str, checkpoint: str | None, args: list[str] | None, space: dict[str, Any]) -> dict:
    """The config of tokenizer ``name`` for the weights' token space (its ``image_size`` chosen so that its grid is the
    weights' grid), checked without loading it: a tokenizer of another codebook or grid is a one-line error."""
    if checkpoint is not None and not (is_url(checkpoint) or Path(checkpoint).exists()):
        raise UsageError(f"--tokenizer_checkpoint {checkpoint}: no such file")
    config = {"name": name, **tokenizer_kwargs(name, checkpoint, args)}
    grid = tuple(space["grid_size"]) if isinstance(space["grid_size"], (list, tuple)) else (space["grid_size"],) * 2
    if "image_size" not in config and "image_size" in inspect.signature(TOKENIZERS[name]).parameters:
        probe = token_space({**config, "image_size": 1024})[1][0]  # the tokenizer's downsampling: 1024 / probe
        config["image_size"] = grid[0] * (1024 // probe)
    codes, tokens = token_space(config)
    if (codes, tuple(tokens)) != (space["codebook_size"], grid):
        raise UsageError(f"tokenizer {name} gives {codes} codes on a {tokens} grid, the weights expect "
                         f"{space['codebook_size']} codes on {grid}")  # fmt: skip
    if checkpoint is not None:
        resolve_checkpoint(name, config)  # a URL: fetched into torch.hub's cache and checked against its sha256 now
    return pinned(config)  # a local file: absolute, with its sha256


def amused_module(src: str | Path, config: Path | None = None, **model_args: Any) -> NATModule:
    """A NATModule holding aMUSEd from a local diffusers folder (weights loaded strictly into the online and EMA
    backbones; the VQ-GAN and CLIP text encoder are referenced by their sub-folders, loaded on first use). Other
    model arguments come from ``config``'s model section and ``model_args`` (e.g. ``schedule_params``)."""
    folder, recorded_as = amused_location(src)
    args = read_amused_folder(folder, recorded_as)
    extra = read_model_section(config) if config is not None else {}
    extra.update(model_args)
    fixed = sorted(set(extra) & (set(args) - {"schedule"}))
    if fixed:
        raise UsageError(f"aMUSEd folder {src} fixes {fixed}; leave them out of the config / arguments")
    module = NATModule(**{**args, **extra})
    load_amused_transformer(module.backbone, folder)
    module.ema_backbone.load_state_dict(module.backbone.state_dict())
    return module.eval()


def import_amused(src: Path | str, dst: Path, config: Path | None = None, overwrite: bool = False) -> Path:
    """``import-checkpoint --format amused``: an aMUSEd diffusers folder, or its hub id (``amused/amused-256``, through
    huggingface_hub's cache) -> a lit_nat checkpoint at step 0 with the ``amused`` schedule preset (aMUSEd's own
    12-step strategy), for ``sample``, ``edit``, ``search`` and ``validate``. The checkpoint holds the transformer
    twice (online and EMA: about 4.8 GB for aMUSEd-256 in fp32); the VQ-GAN and the text encoder are recorded by
    location (absolute path or ``hf://`` id) and sha256: a moved folder is given to ``sample`` with
    ``--tokenizer_checkpoint FOLDER/vqvae --text_encoder FOLDER/text_encoder``."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    module = amused_module(src, config)
    source = str(Path(src).resolve()) if Path(src).exists() else str(src)
    checkpoint = build_checkpoint(module, {"imported_from": source, "format": "amused"})
    save_checkpoint_file(checkpoint, dst)
    params = sum(p.numel() for p in module.backbone.parameters())
    print(f"import-checkpoint: {src} -> {dst}\naMUSEd transformer: {params:,} parameters, all keys loaded strictly")
    return dst


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value
