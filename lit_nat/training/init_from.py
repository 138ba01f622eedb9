"""Fine-tuning: a new run that starts from the weights of another checkpoint (``fit --model.init_from CKPT``).

The checkpoint is any that lit_nat wrote or imported (its own fits, ``import-checkpoint`` of official AutoNAT/ENAT
weights or aMUSEd). Its online and EMA backbones are loaded into the new module before training starts; the
optimizer, the step, the data position and the schedule search start afresh. A resumed fine-tuning run
(``--ckpt_path``) restores its own checkpoint instead and never reads ``init_from`` again.

What may differ between the checkpoint and the config, each said in one line when it happens:

- **class count**: a new class embedding for the new classes; the null (unconditional) row is kept;
- **token grid** (e.g. 256 px -> 512 px): the position embeddings are interpolated (bicubic, per channel);
- **condition** (class labels -> text, text -> class labels, or another text encoder): the condition input layer
  (``context_embed``, the projection of the text encoder's states) starts afresh or is dropped; everything else,
  the class table included, is loaded;

anything else (codebook size, width, depth, another backbone) is an error naming the tensor or the setting, never a
partial load.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
import torch.nn.functional as F

from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError


def grid_of(hparams: dict[str, Any], tokens: int) -> tuple[int, int]:
    """(h, w) of a token grid: the recorded ``grid_size`` (an int or a pair), else the square of ``tokens``."""
    grid = hparams.get("grid_size")
    if isinstance(grid, (list, tuple)) and len(grid) == 2:
        return int(grid[0]), int(grid[1])
    side = int(grid) if grid is not None else math.isqrt(tokens)
    return side, side


def interpolate_positions(have: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Position embeddings ``(h*w, D)`` of one grid resampled to another (bicubic over the grid, per channel)."""
    width = have.shape[-1]
    grid = have.reshape(*old, width).permute(2, 0, 1)[None].float()  # (1, D, h, w)
    out = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).reshape(new[0] * new[1], width).to(have.dtype)


def adapt_tensor(key: str, have: torch.Tensor, want: torch.Tensor, saved: dict[str, Any], config: dict[str, Any],
                 source: str) -> tuple[torch.Tensor, str | None]:  # fmt: skip
    """The checkpoint's tensor for ``key`` shaped for the new model, and the note that says how (None: as it was)."""
    if have.shape == want.shape:
        return have, None
    old_classes, new_classes = saved.get("num_classes"), config.get("num_classes")
    if ("class" in key and have.ndim == 2 and have.shape[1:] == want.shape[1:] and old_classes is not None
            and have.shape[0] == old_classes + 1 and want.shape[0] == new_classes + 1):  # fmt: skip
        table = want.clone()
        table[-1] = have[-1]  # the null class: unconditional generation and guidance keep what they learned
        return table, f"new class embedding ({old_classes} -> {new_classes} classes; the null row kept)"
    if key.endswith("position") and have.ndim == want.ndim == 2 and have.shape[1] == want.shape[1]:
        old, new = grid_of(saved, have.shape[0]), grid_of(config, want.shape[0])
        if old[0] * old[1] == have.shape[0] and new[0] * new[1] == want.shape[0]:
            return interpolate_positions(have, old, new), f"position embeddings interpolated ({old} -> {new} grid)"
    raise CheckpointError(
        f"{source}: {key} has shape {tuple(have.shape)} but the config's model needs {tuple(want.shape)}; "
        "--model.init_from allows another class count or token grid, not another codebook, width or depth"
    )


#: The backbones' condition input for text (U-ViT and ENAT: ``TextEmbedding``); what starts afresh on a new condition.
CONDITION_INPUT = "context_embed."


def adapted_state(source_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], saved: dict[str, Any],
                  config: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], set[str]]:  # fmt: skip
    """Every tensor of ``target`` from ``source_state`` (adapted where the rules allow) and the notes of how."""
    notes = set()
    if note := condition_change(saved, config, any(k.startswith(CONDITION_INPUT) for k in target)):
        notes.add(note)  # the condition input keeps the new model's initialisation; the checkpoint's is not used
        target = {k: v for k, v in target.items() if not k.startswith(CONDITION_INPUT)}
        source_state = {k: v for k, v in source_state.items() if not k.startswith(CONDITION_INPUT)}
    missing, unexpected = sorted(set(target) - set(source_state)), sorted(set(source_state) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: its backbone does not fit the config's (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"--model.init_from needs the same architecture (the checkpoint's arch is {saved.get('arch')!r})"
        )
    state = {}
    for key, want in target.items():
        state[key], note = adapt_tensor(key, source_state[key], want, saved, config, source)
        if note:
            notes.add(note)
    return state, notes


def condition_name(text_encoder: dict[str, Any] | None) -> str:
    """What a model is conditioned on: class labels, or a text encoder by name and weights (its recorded sha256 where
    there is one, so a moved copy of the same encoder is the same condition)."""
    if not text_encoder:
        return "class labels"
    weights = text_encoder.get("sha256") or text_encoder.get("path")
    if not weights:  # an encoder defined by its config alone (e.g. a word list): a digest of the whole config
        weights = hashlib.sha256(json.dumps(text_encoder, sort_keys=True, default=str).encode()).hexdigest()
    return f"text ({text_encoder.get('name')} {str(weights)[:16]})"


def condition_change(saved: dict[str, Any], config: dict[str, Any], new_has_input: bool) -> str | None:
    """The note for a checkpoint conditioned otherwise than the config's model (None: the same condition). The
    backbone is shared; only the layer that reads the text encoder's states cannot carry over."""
    have, want = condition_name(saved.get("text_encoder")), condition_name(config.get("text_encoder"))
    if have == want:
        return None
    how = "starts afresh" if new_has_input else "is dropped"
    return f"condition changed ({have} -> {want}): the condition input ({CONDITION_INPUT[:-1]}) {how}, the rest loaded"


def initialise_from(module: Any, source: str) -> list[str]:
    """Load ``source``'s online and EMA backbones into ``module`` by the rules above; returns the notes."""
    checkpoint = read_checkpoint(source, require_finite=True)
    state, saved = checkpoint.get("state_dict"), checkpoint.get("hyper_parameters") or {}
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: not a lit_nat checkpoint (no state_dict); import official weights with "
                              "python -m lit_nat import-checkpoint first")  # fmt: skip
    config = dict(module.hparams)
    notes: set[str] = set()
    for name in ("backbone", "ema_backbone"):
        prefix = f"{name}." if any(k.startswith(f"{name}.") for k in state) else "backbone."
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        target = getattr(module, name)
        fresh = target.state_dict()
        adapted, found = adapted_state(part, fresh, saved, config, source)
        target.load_state_dict({**fresh, **adapted}, strict=True)  # what is not adapted (a new condition input) stays
        notes |= found
    return sorted(notes)
