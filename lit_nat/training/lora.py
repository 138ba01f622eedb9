"""LoRA fine-tuning through peft (``fit --model.init_from BASE --model.lora.rank 8``) and LoRA adapters applied to
any checkpoint (``sample``/``edit``/``search --adapters A B --adapter_weights 0.7 0.3``, ``merge-adapter``).

Training (needs peft: ``pip install 'lit_nat[lora]'``): the base checkpoint's EMA weights (those that sample) go into
both the online and the EMA backbone, peft injects low-rank adapters ``W + (alpha / r) B A`` into the target Linear
layers (``B`` starts at zero, so a fresh adapter is the base exactly), and only the adapters train, are averaged by the
EMA and are saved: a LoRA run's checkpoints hold the adapter tensors, their optimiser moments and the base's path and
sha256, never the base itself. Each fit also writes the EMA adapters in peft's own layout,
``<run dir>/adapter/adapter_model.safetensors`` (the config in its metadata too) and ``adapter_config.json``.

Applying adapters needs no peft: :func:`merge_adapters` adds ``weight * scale * B A`` to the Linear weights of a
state dict, for any number of adapters, in the float32 arithmetic of peft's own merge.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError, UsageError
from lit_nat.core.io import atomic_write_bytes, atomic_write_json, file_sha256, json_safe
from lit_nat.training.init_from import initialise_from

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # peft's key prefix in its adapter files
#: the attention and MLP Linear layers each backbone adapts by default (module-name suffixes, matched as peft does)
DEFAULT_TARGETS = {
    "UViT": ("qkv", "proj", "fc1", "fc2"),
    "ENAT": ("q", "kv_context", "kv_self", "proj", "fc1", "fc2"),
    "AmusedBackbone": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters trained instead of the whole backbone (needs ``--model.init_from``, the base they adapt).

    Args:
        rank: the adapters' rank r.
        alpha: their scale is alpha / r (peft's ``lora_alpha``).
        dropout: dropout on an adapter's input while training.
        target_modules: names of the Linear layers to adapt, matched as the end of a module's name (``qkv`` matches
            ``mid_block.attn.qkv``); default: the backbone's attention and MLP layers.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] | None = None


def lora_settings(value: Any) -> LoraSettings | None:
    """``--model.lora`` (settings, or the dict a checkpoint's hyper-parameters hold) checked; None: no LoRA."""
    if value is None or isinstance(value, LoraSettings):
        settings = value
    else:
        known = set(LoraSettings.__dataclass_fields__)
        unknown = sorted(set(dict(value)) - known)
        if unknown:
            raise UsageError(f"--model.lora: unknown setting {unknown[0]!r}; the settings are {sorted(known)}")
        settings = LoraSettings(**dict(value))
    if settings is not None and (settings.rank < 1 or not 0 <= settings.dropout < 1):
        raise UsageError(f"--model.lora: rank must be >= 1 and dropout in [0, 1), got rank {settings.rank}, "
                         f"dropout {settings.dropout}")  # fmt: skip
    return settings


def require_peft() -> Any:
    """The peft package, or a one-line error that says how to install it."""
    try:
        import peft
    except ImportError:
        raise UsageError("a LoRA model (--model.lora) needs peft: pip install 'lit_nat[lora]'") from None
    return peft


def target_names(backbone: torch.nn.Module, settings: LoraSettings) -> list[str]:
    """The target names to adapt, each checked to name at least one Linear layer of ``backbone`` (as peft matches)."""
    linears = [n for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)]
    kind = type(backbone).__name__
    names = list(settings.target_modules or DEFAULT_TARGETS.get(kind, ()))
    if not names:
        raise UsageError(f"--model.lora.target_modules: no default for a {kind} backbone; name its Linear layers")
    for name in names:
        if not any(n == name or n.endswith(f".{name}") for n in linears):
            ends = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise UsageError(f"--model.lora.target_modules: {name!r} names no Linear layer of this {kind} backbone "
                             f"(its Linear layers end in {', '.join(ends)})")  # fmt: skip
    return names


def peft_config(settings: LoraSettings, targets: list[str]) -> Any:
    """peft's ``LoraConfig`` of these settings (B starts at zero: a fresh adapter changes nothing)."""
    peft = require_peft()
    return peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=targets, bias="none", init_lora_weights=True)  # fmt: skip


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def add_adapters(backbone: torch.nn.Module, settings: LoraSettings) -> dict[str, Any]:
    """Inject peft's LoRA layers into ``backbone`` in place and freeze everything else; returns peft's config dict."""
    config = peft_config(settings, target_names(backbone, settings))
    require_peft().inject_adapter_in_model(config, backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(is_adapter_key(name))
    return json_safe({k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()})


def adapter_parameters(backbone: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in backbone.named_parameters() if is_adapter_key(n)]


@torch.no_grad()
def update_adapter_ema(ema: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """The EMA of the adapters alone (the frozen base is the same in both backbones): the fused update of
    :func:`lit_nat.training.ema.update_ema` over what trains."""
    get_ema_multi_avg_fn(decay)(adapter_parameters(ema), [p.detach() for p in adapter_parameters(online)], None)


def adapter_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of a peft-injected backbone under peft's file keys (``base_model.model.<layer>.lora_A.weight``)."""
    return {PEFT_PREFIX + k.replace(".default.", "."): v.detach().clone() for k, v in backbone.state_dict().items()
            if is_adapter_key(k)}  # fmt: skip


def base_identity(path: str) -> dict[str, Any]:
    """What a LoRA run records of its base: the path and its file's sha256 (the base is never copied)."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: the base checkpoint of this LoRA model is missing; a LoRA run's checkpoints "
                              "hold only its adapters, so give the base again: --model.init_from (fit, a config), "
                              "--lora_base (sample, edit, load_model)")  # fmt: skip
    size, digest = file_sha256(path)
    return {"path": str(path), "sha256": digest, "bytes": size}


def attach(module: Any, lora: Any) -> dict[str, Any] | None:
    """Make ``module`` (a fresh NATModule) a LoRA model of its ``init_from`` when ``lora`` (``--model.lora``) is given:
    the base's EMA weights in both backbones, the same fresh adapters on each, only the online adapters trainable.
    Returns the base's identity and peft's config (None without LoRA); the hyper-parameters get the settings as a
    plain dict, so checkpoints load weights-only."""
    settings = lora_settings(lora)
    module.hparams.update(lora=None if settings is None else asdict(settings))
    if settings is None:
        return None
    source = module.hparams.get("init_from")
    if not source:
        raise UsageError("--model.lora needs --model.init_from: the checkpoint whose weights the adapters adapt")
    require_peft()
    base = base_identity(source)
    for note in initialise_from(module, source):
        rank_zero_info(f"init_from {source}: {note}")
    module.backbone.load_state_dict(module.ema_backbone.state_dict())  # adapters learn on the weights that sample
    config = add_adapters(module.backbone, settings)
    add_adapters(module.ema_backbone, settings)
    module.ema_backbone.load_state_dict(module.backbone.state_dict())
    share_base(module.ema_backbone, module.backbone)
    module.ema_backbone.requires_grad_(False)
    return {"base": base, "peft_config": config}


def share_base(ema: torch.nn.Module, online: torch.nn.Module) -> None:
    """The frozen base as one set of tensors in both backbones (they hold the same weights, which never change):
    one copy of the base in memory instead of two; each backbone keeps its own adapters."""
    sources = dict(online.named_modules())
    for name, module in ema.named_modules():
        for key, parameter in list(module.named_parameters(recurse=False)):
            if not is_adapter_key(f"{name}.{key}"):
                setattr(module, key, getattr(sources[name], key))  # registers the online module's Parameter


def save_lora_state(checkpoint: dict[str, Any], lora: dict[str, Any]) -> None:
    """A LoRA checkpoint keeps the adapters (online and EMA) and the base's identity, not the base's weights."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_adapter_key(k)}
    checkpoint["lit_nat_lora"] = {"base": lora["base"]}


def restore_lora_state(module: Any, checkpoint: dict[str, Any], lora: dict[str, Any]) -> None:
    """Complete a LoRA checkpoint's ``state_dict`` with the base already in ``module``, once the base is checked to
    be the file the adapters were trained on."""
    saved = (checkpoint.get("lit_nat_lora") or {}).get("base")
    have = lora["base"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{have['path']}: the checkpoint restored into this LoRA model holds no LoRA adapters "
                              "(a plain checkpoint is a base: pass it as --model.init_from)")  # fmt: skip
    if saved.get("sha256") != have["sha256"]:
        raise CheckpointError(f"{have['path']}: not the base these adapters were trained on (sha256 "
                              f"{have['sha256'][:12]}..., recorded {str(saved.get('sha256'))[:12]}... of "
                              f"{saved.get('path')}); give the original with --model.init_from or "
                              "--lora_base")  # fmt: skip
    state = {k: v for k, v in module.state_dict().items() if not is_adapter_key(k)}
    checkpoint["state_dict"] = {**state, **checkpoint["state_dict"]}


# ---------------------------------------------------------------------------------------------------- adapter files
def write_adapter(folder: str | Path, backbone: torch.nn.Module, lora: dict[str, Any]) -> Path:
    """``backbone``'s adapters in peft's layout: ``adapter_model.safetensors`` (each file written whole; the config
    and the base's identity also in its metadata, so the file alone is enough) and ``adapter_config.json``."""
    folder = Path(folder)
    config = {**lora["peft_config"], "base_model_name_or_path": lora["base"]["path"]}
    atomic_write_json(folder / ADAPTER_CONFIG, config)
    metadata = {"format": "pt", "adapter_config": json.dumps(config), "lit_nat_base": json.dumps(lora["base"])}
    return atomic_write_bytes(folder / ADAPTER_WEIGHTS, safetensors_bytes(adapter_state(backbone), metadata))


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter as read: per adapted layer, ``(A, B)`` and the scale ``alpha / r``."""

    source: str
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float


def adapter_scale(config: dict[str, Any], source: str) -> float:
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{source}: per-layer ranks or alphas (rank_pattern/alpha_pattern) are not supported")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / rank**0.5 if config.get("use_rslora") else alpha / rank


def read_adapter(path: str | Path) -> Adapter:
    """An adapter folder (peft's layout), its ``.safetensors`` file, or a LoRA run's checkpoint (its EMA adapters);
    anything else is a one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return adapter_of_checkpoint(path)
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{path}: no such adapter (a folder with {ADAPTER_WEIGHTS}, that file, or a LoRA .ckpt)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(metadata.get("adapter_config") or (weights.parent / ADAPTER_CONFIG).read_text())
        return Adapter(str(path), pair_layers(state, str(path)), adapter_scale(config, str(path)))
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: not a readable LoRA adapter ({str(err).splitlines()[0]})") from None


def adapter_of_checkpoint(path: Path) -> Adapter:
    """The EMA adapters of a LoRA run's checkpoint (what its samples use)."""
    checkpoint = read_checkpoint(path, require_finite=True)
    settings = lora_settings((checkpoint.get("hyper_parameters") or {}).get("lora"))
    if settings is None:
        raise CheckpointError(f"{path}: not a LoRA checkpoint (no lora settings); merge adapters into it instead")
    prefix = "ema_backbone."
    state = {PEFT_PREFIX + k[len(prefix):].replace(".default.", "."): v
             for k, v in checkpoint["state_dict"].items() if k.startswith(prefix) and is_adapter_key(k)}  # fmt: skip
    return Adapter(str(path), pair_layers(state, str(path)), settings.alpha / settings.rank)


def pair_layers(state: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft's keys ``<prefix><layer>.lora_A.weight`` / ``.lora_B.weight`` -> ``{layer: (A, B)}``, both present."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            if key.endswith(f".{part}.weight"):
                layer = key[: -len(f".{part}.weight")].removeprefix(PEFT_PREFIX)
                layers.setdefault(layer, {})[part] = value.float()
    broken = sorted(k for k, v in layers.items() if len(v) != 2)
    if not layers or broken:
        raise CheckpointError(f"{source}: holds no complete LoRA layer (lora_A and lora_B weights){broken[:1]}")
    return {k: (v["lora_A"], v["lora_B"]) for k, v in layers.items()}


def merge_adapters(state: dict[str, torch.Tensor], adapters: list[tuple[Adapter, float]]) -> dict[str, torch.Tensor]:
    """``state`` (a backbone's, plain or peft-injected) with ``W += weight * scale * B @ A`` for every adapted layer
    of every adapter; a layer the model lacks, or of another shape, is a one-line error naming the adapter."""
    merged = dict(state)
    for adapter, weight in adapters:
        for layer, (a, b) in adapter.layers.items():
            key = next((k for k in (f"{layer}.weight", f"{layer}.base_layer.weight") if k in merged), None)
            have = None if key is None else merged[key]
            if have is None or tuple(have.shape) != (b.shape[0], a.shape[1]):
                raise CheckpointError(f"{adapter.source}: adapts {layer} {(b.shape[0], a.shape[1])}, but the model's "
                                      f"layer is {None if have is None else tuple(have.shape)}; was it trained on "
                                      "another base?")  # fmt: skip
            delta = (b.to(have.device) @ a.to(have.device)) * (adapter.scale * weight)  # on the weights' device
            merged[key] = (have.float() + delta).to(have.dtype)
    return merged


@dataclass(frozen=True)
class AdapterSet:
    """LoRA adapters merged into the model's weights before it generates (``fit --model.lora`` writes them).

    Args:
        adapters: adapters to merge, in order: folders in peft's layout (``<run dir>/adapter``), their
            adapter_model.safetensors, or LoRA runs' checkpoints (their EMA adapters).
        adapter_weights: one weight per adapter (default: 1 each); the merged update is the weighted sum.
    """

    adapters: list[str] | None = None
    adapter_weights: list[float] | None = None

    def read(self) -> list[tuple[Adapter, float]]:
        paths, weights = list(self.adapters or []), self.adapter_weights
        if weights is not None and len(weights) != len(paths):
            raise UsageError(f"--adapter_weights: {len(weights)} weights for {len(paths)} adapters; give one each")
        return [(read_adapter(p), float(w)) for p, w in zip(paths, weights or [1.0] * len(paths))]

    def record(self) -> dict[str, list]:
        """What was merged, for the files a run writes (``samples.json``, a merged checkpoint); empty without any."""
        if not self.adapters:
            return {}
        return {"adapters": list(self.adapters), "adapter_weights": list(self.adapter_weights or [1.0] * len(self.adapters))}

    def apply(self, model: Any) -> None:
        """Merge the adapters into ``model``'s online and EMA backbones (nothing when none is given)."""
        if not self.adapters:
            return
        adapters = self.read()
        backbones = (model.backbone, model.ema_backbone)
        # both merged from the weights as they were: a LoRA model's two backbones share one base tensor
        merged = [merge_adapters(backbone.state_dict(), adapters) for backbone in backbones]
        for backbone, state in zip(backbones, merged):
            backbone.load_state_dict(state)
        rank_zero_info(f"adapters merged: {', '.join(f'{a.source} x {w:g}' for a, w in adapters)}")

    @contextlib.contextmanager
    def merged_in(self, trainer: L.Trainer) -> Iterator[None]:
        """A Trainer run during which the adapters are merged into the restored model before it generates."""
        callback = MergeAdapters(self)
        trainer.callbacks.insert(0, callback)  # first: before the callbacks that read the weights' digest
        try:
            yield
        finally:
            trainer.callbacks.remove(callback)


class MergeAdapters(L.Callback):
    """Merges an :class:`AdapterSet` once a ``predict``/``validate`` run has restored its checkpoint."""

    def __init__(self, adapters: AdapterSet) -> None:
        self.adapters, self.done = adapters, False

    def _merge(self, pl_module: L.LightningModule) -> None:
        if not self.done:
            self.adapters.apply(pl_module)
            self.done = True

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._merge(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._merge(pl_module)


def own_adapter(module: Any) -> Adapter:
    """The EMA adapters of a LoRA model (what it samples with) as an :class:`Adapter`, to merge into its base."""
    settings = lora_settings(module.hparams.get("lora"))
    return Adapter("the LoRA checkpoint", pair_layers(adapter_state(module.ema_backbone), "the LoRA checkpoint"),
                   settings.alpha / settings.rank)  # fmt: skip


def merged_state(module: Any, adapters: list[tuple[Adapter, float]]) -> dict[str, torch.Tensor]:
    """The plain backbone state of ``module``'s EMA weights with its own adapters (a LoRA model) and ``adapters``
    merged in: what a checkpoint without LoRA holds."""
    own = [(own_adapter(module), 1.0)] if module.lora else []
    state = merge_adapters(module.ema_backbone.state_dict(), own + adapters)
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if not is_adapter_key(k)}
