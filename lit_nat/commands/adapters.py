"""``python -m lit_nat merge-adapter``: LoRA adapters merged into a checkpoint's weights, written as a plain lit_nat
checkpoint that samples, edits, searches and fine-tunes like any other (no peft, no base file needed)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from lit_nat.core.checkpointing import save_checkpoint_file
from lit_nat.core.errors import UsageError
from lit_nat.training.importer import build_checkpoint
from lit_nat.training.loading import load_model, module_from_hparams
from lit_nat.training.lora import AdapterSet, merged_state


def merge_adapter(ckpt_path: str, out: str, adapters: AdapterSet = AdapterSet(), overwrite: bool = False) -> Path:
    """Merge LoRA adapters into a checkpoint's EMA weights and write a plain checkpoint (the same weights online and
    EMA, the checkpoint's schedule), e.g. a LoRA run's own adapters into its base:
    merge-adapter --ckpt_path runs/x/checkpoints/last.ckpt --out merged.ckpt.

    Args:
        ckpt_path: the checkpoint: a LoRA run's (its adapters are merged into its base) or any lit_nat checkpoint.
        out: the merged checkpoint file to write.
        overwrite: replace an existing --out.
    """
    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true or another --out")
    model = load_model(ckpt_path)
    if not model.lora and not adapters.adapters:
        raise UsageError(f"{ckpt_path}: not a LoRA checkpoint, and no --adapters to merge into it")
    state = merged_state(model, adapters.read())
    hparams = {**dict(model.hparams), "lora": None, "init_from": None}  # stands alone: neither base nor peft needed
    merged = module_from_hparams(hparams, ckpt_path, schedule=model.schedule.to_dict())
    merged.backbone.load_state_dict(state)
    merged.ema_backbone.load_state_dict(state)
    record = {"merged_from": str(ckpt_path), "adapters": [], "adapter_weights": [], **adapters.record()}
    save_checkpoint_file(build_checkpoint(merged, record), path)
    rank_zero_info(f"merge-adapter: wrote {path}")
    return path
