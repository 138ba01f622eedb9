"""Conversion of official checkpoints onto our backbones.

Each official format is a list of renaming rules (regex on the official key -> our key, with an optional value
transform) plus a function that reads the model dimensions off the tensors. The generic part -- unwrapping a saved
object, stripping ``module.`` prefixes, applying the rules, comparing with a target model, loading -- is shared, so a
new format is one more rule list and one more entry in :data:`CONVERTERS` (``"autonat"``, ``"enat"``).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from lit_nat.core.checkpointing import read_checkpoint

__all__ = [
    "AUTONAT_RULES",
    "CONVERTERS",
    "ENAT_RULES",
    "ENAT_UNUSED",
    "CheckpointFormat",
    "ConversionReport",
    "Rule",
    "compare_with_target",
    "convert_autonat_state_dict",
    "convert_enat_state_dict",
    "infer_autonat_dims",
    "infer_enat_dims",
    "load_official",
    "load_official_autonat",
    "load_official_enat",
    "unwrap_state_dict",
]

#: Keys under which training scripts commonly nest the weights (tried in this order).
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "nnet_ema", "nnet", "ema", "model_state_dict", "module")
#: Prefixes added by DDP (``module.``) and ``torch.compile`` (``_orig_mod.``); stripped repeatedly.
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

OfficialInput = Mapping[str, Any] | str | os.PathLike


@dataclass
class ConversionReport:
    """What a conversion did, and what did not fit.

    Attributes:
        source_format: Name of the official format (``"autonat"``, ``"enat"``).
        renamed: Our key -> the official key it came from.
        dropped: Official keys ignored on purpose (``position_ids`` buffers; ENAT's never-called ``prev_embedder``).
        unexpected: Official keys with no home: no rule matched, or the target model has no such parameter.
        missing: Target keys that received no value (filled by :func:`compare_with_target`).
        mismatched: One message per shape mismatch, naming the key, the expected and the given shape.
        notes: Why keys were dropped, one line per reason (shown by :meth:`summary`).
    """

    source_format: str
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every official key found a home of the right shape and every target key got a value."""
        return not (self.unexpected or self.missing or self.mismatched)

    def summary(self) -> str:
        """Human-readable multi-line description, used in error messages and logs."""
        lines = [f"{self.source_format} checkpoint: {len(self.renamed)} tensors converted, {len(self.dropped)} dropped"]
        lines.extend(self.notes)
        problems = {"missing": self.missing, "unexpected": self.unexpected, "mismatched": self.mismatched}
        for title, items in problems.items():
            if items:
                lines.append(f"{len(items)} {title}: " + "; ".join(items))
        return "\n".join(lines)


@dataclass(frozen=True)
class Rule:
    """Rename official keys matching ``pattern`` (full match) to ``repl`` (``re`` template); optionally reshape."""

    pattern: str
    repl: str
    transform: Callable[[Tensor], Tensor] | None = None


def unwrap_state_dict(obj: OfficialInput) -> tuple[dict[str, Tensor], list[str]]:
    """Find the flat name -> tensor dict inside a saved object and normalise its keys.

    Accepts a path, a flat state_dict, or one nested under a common wrapper key (``state_dict``, ``model``, ``nnet``,
    ...). Strips ``module.`` / ``_orig_mod.`` prefixes and drops ``position_ids`` buffers.

    Returns:
        The flat dict and the list of keys dropped.
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = read_checkpoint(obj)
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(
                "could not find a state_dict: expected name -> tensor entries or one of the wrapper keys "
                f"{list(WRAPPER_KEYS)}; top-level keys are {sorted(map(str, obj))[:20]}"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a mapping of name -> tensor, got {type(obj).__name__}")

    flat: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in obj.items():
        name = key
        while name.startswith(STRIP_PREFIXES):
            name = name.split(".", 1)[1]
        if "position_ids" in name:  # HF-style index buffers; the official loaders filter them too
            dropped.append(key)
        else:
            flat[name] = value
    return flat, dropped


def _apply_rules(
    official: OfficialInput,
    rules: tuple[Rule, ...],
    source_format: str,
    unused: Mapping[str, str] | None = None,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename every key by the first matching rule; keys matching an ``unused`` pattern (pattern -> reason) are
    dropped and the reason noted; anything else is reported as unexpected."""
    flat, dropped = unwrap_state_dict(official)
    report = ConversionReport(source_format, dropped=dropped)
    converted: dict[str, Tensor] = {}
    compiled = [(re.compile(r.pattern), r) for r in rules]
    unused_compiled = [(re.compile(p), reason) for p, reason in (unused or {}).items()]
    unused_hits: dict[str, list[str]] = {}
    for key, value in flat.items():
        reason = next((why for regex, why in unused_compiled if regex.fullmatch(key)), None)
        if reason is not None:
            report.dropped.append(key)
            unused_hits.setdefault(reason, []).append(key)
            continue
        for regex, rule in compiled:
            if regex.fullmatch(key):
                name = regex.sub(rule.repl, key)
                converted[name] = rule.transform(value) if rule.transform else value
                report.renamed[name] = key
                break
        else:
            report.unexpected.append(key)
    for reason, keys in unused_hits.items():
        report.notes.append(f"dropped {len(keys)} unused tensor(s) ({', '.join(keys)}): {reason}")
    return converted, report


def compare_with_target(
    converted: Mapping[str, Tensor], target: Mapping[str, Tensor], report: ConversionReport
) -> ConversionReport:
    """Fill ``report`` with the keys ``target`` lacks or expects, and the shape mismatches (official names quoted)."""
    for name, value in converted.items():
        origin = report.renamed.get(name, name)
        label = name if origin == name else f"{name} (official {origin})"
        if name not in target:
            report.unexpected.append(label)
        elif tuple(value.shape) != tuple(target[name].shape):
            report.mismatched.append(f"{label}: expected shape {tuple(target[name].shape)}, got {tuple(value.shape)}")
    report.missing.extend(name for name in target if name not in converted)
    return report


# ---------------------------------------------------------------------------------------------------------- AutoNAT
_BLOCK = r"(in_blocks\.\d+|mid_block|out_blocks\.\d+)"
_PARAM = r"(weight|bias)"

#: Official AutoNAT (``libs/nat_model.py`` UViT) key -> :class:`~lit_nat.models.uvit.UViT` key.
AUTONAT_RULES: tuple[Rule, ...] = (
    Rule(r"token_emb\.word_embeddings\.weight", r"token_embed.word.weight"),
    Rule(r"token_emb\.position_embeddings\.weight", r"token_embed.position"),
    Rule(rf"token_emb\.LayerNorm\.{_PARAM}", r"token_embed.norm.\1"),
    Rule(r"context_embed\.word_embeddings\.weight", r"class_embed.word.weight"),
    Rule(r"context_embed\.position_embeddings\.weight", r"class_embed.position"),
    Rule(rf"context_embed\.LayerNorm\.{_PARAM}", r"class_embed.norm.\1"),
    Rule(rf"{_BLOCK}\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.{_PARAM}", r"\1.\2.\3"),
    Rule(rf"(out_blocks\.\d+)\.skip_linear\.{_PARAM}", r"\1.skip_proj.\2"),
    Rule(rf"norm\.{_PARAM}", r"final_norm.\1"),
    Rule(r"mlm_layer\.bias", r"head.bias", transform=lambda t: t.reshape(-1)),  # (1, 1, K + 1) -> (K + 1,)
    Rule(rf"mlm_layer\.fc\.{_PARAM}", r"head.fc.\1"),
    Rule(rf"mlm_layer\.ln\.{_PARAM}", r"head.norm.\1"),
)


def convert_autonat_state_dict(official: OfficialInput) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official AutoNAT state_dict (path, flat dict, or wrapped dict) to :class:`UViT` names.

    Returns:
        The converted dict and a report whose ``unexpected`` lists official keys no rule maps; ``missing`` and
        ``mismatched`` stay empty until :func:`compare_with_target` checks against a model.
    """
    return _apply_rules(official, AUTONAT_RULES, "autonat")


def _block_indices(keys: list[str], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.", k))})


def _require(sd: dict[str, Tensor], format_name: str, keys: tuple[str, ...]) -> None:
    absent = [k for k in keys if k not in sd]
    if absent:
        raise ValueError(f"not an {format_name} state_dict: missing {absent}")


def _square_side(num_tokens: int) -> int:
    """Side of the square token grid with ``num_tokens`` position rows (official grids are square)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} position rows is not a square grid; give grid_size explicitly")
    return side


def infer_autonat_dims(official: OfficialInput) -> dict[str, Any]:
    """Read :class:`UViT` constructor arguments off an official AutoNAT state_dict.

    Returns ``codebook_size``, ``grid_size``, ``num_classes``, ``width``, ``num_layers``, ``mlp_ratio`` and
    ``qkv_bias``. ``num_heads`` leaves no trace in the weights and must come from the caller (8 for AutoNAT-L).

    Raises:
        ValueError: A required key is absent, the block lists are inconsistent, or the grid is not square.
    """
    sd, _ = unwrap_state_dict(official)
    _require(
        sd,
        "AutoNAT",
        (
            "token_emb.word_embeddings.weight",
            "token_emb.position_embeddings.weight",
            "context_embed.word_embeddings.weight",
            "mid_block.mlp.fc1.weight",
        ),
    )
    words = sd["token_emb.word_embeddings.weight"]
    side = _square_side(sd["token_emb.position_embeddings.weight"].shape[0])

    keys = list(sd)
    ins, outs = _block_indices(keys, "in_blocks"), _block_indices(keys, "out_blocks")
    if ins != list(range(len(ins))) or outs != list(range(len(outs))) or len(ins) != len(outs):
        raise ValueError(f"inconsistent U-ViT blocks: in_blocks {ins}, out_blocks {outs} (need 0..n-1 each, equal n)")

    width = words.shape[1]
    return dict(
        codebook_size=words.shape[0] - 1,
        grid_size=(side, side),
        num_classes=sd["context_embed.word_embeddings.weight"].shape[0] - 1,
        width=width,
        num_layers=2 * len(ins) + 1,
        mlp_ratio=sd["mid_block.mlp.fc1.weight"].shape[0] / width,
        qkv_bias="mid_block.attn.qkv.bias" in sd,
    )


# ---------------------------------------------------------------------------------------------------------- ENAT
#: Official ENAT (``libs/models.py`` DiT with multiway K/V) key -> :class:`~lit_nat.models.enat.ENAT` key. Blocks keep
#: their index (encoder and decoder share one list), so the rules hold for any width, depth and split.
ENAT_RULES: tuple[Rule, ...] = (
    Rule(r"x_embedder\.word_embeddings\.weight", r"token_embed.word.weight"),
    Rule(r"x_embedder\.position_embeddings\.weight", r"token_embed.position"),
    Rule(rf"x_embedder\.LayerNorm\.{_PARAM}", r"token_embed.norm.\1"),
    Rule(r"y_embedder\.embedding_table\.weight", r"class_embed.weight"),
    Rule(rf"prev_proj\.(norm|mlp\.fc1|mlp\.fc2)\.{_PARAM}", r"prev_proj.\1.\2"),
    Rule(rf"blocks\.(\d+)\.attn\.(q|proj)\.{_PARAM}", r"blocks.\1.attn.\2.\3"),
    Rule(rf"blocks\.(\d+)\.attn\.kv\.A\.{_PARAM}", r"blocks.\1.attn.kv_context.\2"),  # A: context tokens
    Rule(rf"blocks\.(\d+)\.attn\.kv\.B\.{_PARAM}", r"blocks.\1.attn.kv_self.\2"),  # B: the updated tokens
    Rule(rf"blocks\.(\d+)\.mlp\.(fc1|fc2)\.{_PARAM}", r"blocks.\1.mlp.\2.\3"),
    Rule(rf"blocks\.(\d+)\.adaLN_modulation\.1\.{_PARAM}", r"blocks.\1.modulation.\2"),  # index 0 is the SiLU
    Rule(rf"norm\.{_PARAM}", r"final_norm.\1"),
    Rule(r"mlm_layer\.bias", r"head.bias", transform=lambda t: t.reshape(-1)),  # (1, 1, K + 1) -> (K + 1,)
    Rule(rf"mlm_layer\.fc\.{_PARAM}", r"head.fc.\1"),
    Rule(rf"mlm_layer\.ln\.{_PARAM}", r"head.norm.\1"),
)

#: Official ENAT keys that have no counterpart on purpose (pattern -> reason).
ENAT_UNUSED: Mapping[str, str] = MappingProxyType(
    {rf"prev_embedder\.(fc1|fc2)\.{_PARAM}": "ENAT's prev_embedder is constructed and saved but never called"}
)


def convert_enat_state_dict(official: OfficialInput) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official ENAT state_dict (path, flat dict, or wrapped dict) to :class:`ENAT` names.

    The dead ``prev_embedder.*`` tensors are dropped and listed in ``report.dropped`` (with a note); every other key
    must match a rule or is reported as unexpected.
    """
    return _apply_rules(official, ENAT_RULES, "enat", unused=ENAT_UNUSED)


def infer_enat_dims(official: OfficialInput, decoder_layers: int = 2) -> dict[str, Any]:
    """Read :class:`ENAT` constructor arguments off an official ENAT state_dict.

    Returns ``codebook_size``, ``grid_size``, ``num_classes``, ``width``, ``encoder_layers``, ``decoder_layers`` and
    ``mlp_ratio``. The weights fix only the total block count: encoder and decoder blocks have identical parameters,
    so the split is ``decoder_layers`` (2 in every released model) from the caller. ``num_heads`` leaves no trace
    either (16 for ENAT-L).

    Raises:
        ValueError: A required key is absent, the block indices are not 0..n-1, the split does not fit, or the grid is
            not square.
    """
    sd, _ = unwrap_state_dict(official)
    _require(
        sd,
        "ENAT",
        (
            "x_embedder.word_embeddings.weight",
            "x_embedder.position_embeddings.weight",
            "y_embedder.embedding_table.weight",
            "blocks.0.mlp.fc1.weight",
        ),
    )
    words = sd["x_embedder.word_embeddings.weight"]
    side = _square_side(sd["x_embedder.position_embeddings.weight"].shape[0])
    blocks = _block_indices(list(sd), "blocks")
    if blocks != list(range(len(blocks))):
        raise ValueError(f"inconsistent ENAT blocks: indices {blocks} (need 0..n-1)")
    if not 1 <= decoder_layers <= len(blocks):
        raise ValueError(f"decoder_layers={decoder_layers} does not fit a checkpoint with {len(blocks)} blocks")

    width = words.shape[1]
    return dict(
        codebook_size=words.shape[0] - 1,
        grid_size=(side, side),
        num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
        width=width,
        encoder_layers=len(blocks) - decoder_layers,
        decoder_layers=decoder_layers,
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
    )


# ---------------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class CheckpointFormat:
    """How to read one official format: rename its keys, and infer the backbone's constructor arguments."""

    convert: Callable[[OfficialInput], tuple[dict[str, Tensor], ConversionReport]]
    infer_dims: Callable[[OfficialInput], dict[str, Any]]


CONVERTERS: Mapping[str, CheckpointFormat] = MappingProxyType(
    {
        "autonat": CheckpointFormat(convert_autonat_state_dict, infer_autonat_dims),
        "enat": CheckpointFormat(convert_enat_state_dict, infer_enat_dims),
    }
)


def load_official(
    backbone: nn.Module, official: OfficialInput, *, format: str, strict: bool = True
) -> ConversionReport:
    """Convert an official checkpoint of ``format`` and copy it into ``backbone``.

    Args:
        backbone: Target model (its parameter shapes decide what fits).
        official: Path, flat state_dict, or wrapped state_dict.
        format: Key of :data:`CONVERTERS`.
        strict: Raise on any missing, unexpected or mis-shaped key; otherwise load what fits and warn.

    Raises:
        ValueError: Unknown format, or (``strict``) the checkpoint does not fit the model; the message lists every key.
    """
    if format not in CONVERTERS:
        raise ValueError(f"unknown checkpoint format {format!r}; valid formats: {', '.join(sorted(CONVERTERS))}")
    converted, report = CONVERTERS[format].convert(official)
    target = backbone.state_dict()
    compare_with_target(converted, target, report)
    if not report.ok:
        if strict:
            raise ValueError(f"official checkpoint does not fit {type(backbone).__name__}:\n{report.summary()}")
        warnings.warn(report.summary(), stacklevel=2)
    fitting = {k: v for k, v in converted.items() if k in target and v.shape == target[k].shape}
    backbone.load_state_dict(fitting, strict=strict)
    return report


def load_official_autonat(backbone: nn.Module, official_sd: OfficialInput, strict: bool = True) -> ConversionReport:
    """Load an official AutoNAT checkpoint (``nnet_ema.pth``, or its dict) into a UViT; see :func:`load_official`."""
    return load_official(backbone, official_sd, format="autonat", strict=strict)


def load_official_enat(backbone: nn.Module, official_sd: OfficialInput, strict: bool = True) -> ConversionReport:
    """Load an official ENAT checkpoint (``nnet_ema.pth``, or its dict) into an ENAT; see :func:`load_official`."""
    return load_official(backbone, official_sd, format="enat", strict=strict)
