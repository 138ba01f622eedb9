"""Checkpoint files: written whole or not at all, never with non-finite weights, read with errors that name the file.

:class:`DurableCheckpointIO` is the Trainer's checkpoint plugin (``NATTrainer`` installs it unless another one is
given), so ModelCheckpoint's files, SLURM's ``hpc_ckpt_N.ckpt`` and the preemption checkpoint all go through
:func:`lit_nat.core.io.atomic_write`. (Lightning's own writer buffers the whole checkpoint in memory and then writes it
through an fsspec transaction whose temporary file lives in ``$TMPDIR``; when that is another filesystem than the run
directory, the final move is a copy, and a kill during it leaves a truncated ``last.ckpt`` with the good copy gone.)

:func:`read_checkpoint` is the one way a lit_nat checkpoint is read (the Trainer's restore, ``load_model``, the CLI's
look at the saved hyper-parameters, the importers): a missing, empty, truncated or foreign file is a
:class:`~lit_nat.core.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_nat.core.errors import CheckpointError
from lit_nat.core.finite import nonfinite_keys
from lit_nat.core.io import atomic_write, verify_archive

#: what torch.load raises on a damaged file
_READ_ERRORS = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError, KeyError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash (BLAKE2b) of a state dict's names, shapes, dtypes and values: equal iff the weights are equal,
    whatever file or path they came from."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(state_dict.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_finite_weights(checkpoint: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` if the checkpoint's ``state_dict`` holds NaN or inf (naming the tensors)."""
    bad = nonfinite_keys(checkpoint.get("state_dict") or {})
    if bad:
        raise CheckpointError(
            f"{source}: non-finite weights (NaN or inf) in {', '.join(bad)}; this checkpoint cannot be used: take an "
            "earlier one"
        )


def read_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights_only: bool | None = True,
    mmap: bool = False,
    require_finite: bool = False,
    verify: bool | None = None,
    legacy_format: bool = False,
) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file, or a one-line :class:`CheckpointError` that names the file and the fault.

    ``verify`` (default: unless ``mmap``, which is a look at the hyper-parameters, not a load of the weights) checks
    the archive's CRCs first (:func:`verify_archive`). ``legacy_format`` also reads torch's pre-1.6 (non-zip) format,
    which has no CRCs, for third-party weights of that age (Inception, VQGAN); lit_nat never writes it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes): a write was cut off; use another one")
    if not legacy_format and not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or damaged (not a torch.save archive)")
    if verify if verify is not None else not mmap:
        verify_archive(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as err:
        if weights_only and "global" in str(err):  # "... was not an allowed global": a class or function inside
            raise CheckpointError(
                f"{path}: holds Python objects that a weights-only load refuses ({_first_line(err)}); re-save it as "
                "a plain state_dict"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
    except _READ_ERRORS as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or damaged ({_first_line(err)}); use an earlier one"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dictionary, found a {type(checkpoint).__name__}")
    if require_finite:
        check_finite_weights(checkpoint, str(path))
    return checkpoint


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically after checking its weights are finite (a NaN checkpoint is never written)."""
    check_finite_weights(checkpoint, str(path))
    return atomic_write(path, lambda f: torch.save(checkpoint, f), reserve=tensor_bytes(checkpoint))


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a (nested) checkpoint: a lower bound of its file's size."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with atomic, finite-only writes and reads that name a damaged file.

    Remote paths (``s3://`` and other fsspec URLs) fall back to Lightning's own implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if is_remote(path):
            return super().load_checkpoint(path, map_location, weights_only)
        # None: Lightning's default; our checkpoints hold only tensors and plain data, so weights_only=True reads them
        return read_checkpoint(path, map_location, True if weights_only is None else weights_only, require_finite=True)


def is_remote(path: Any) -> bool:
    return "://" in str(path)


# ----------------------------------------------------------------------------------------------------------------------
# diffusers model folders (aMUSEd's transformer/ and vqvae/): read as plain state dicts, then loaded strictly
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"


def read_diffusers_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers model folder in float32: ``diffusion_pytorch_model.safetensors`` (or ``.bin``, or
    a sharded ``.safetensors.index.json``), else the ``fp16`` variant of those, upcast. A folder without weights or a
    damaged file is a :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for variant in ("", ".fp16"):
        stem = folder / f"{DIFFUSERS_WEIGHTS}{variant}"
        single, binary, sharded = (stem.with_name(stem.name + ext) for ext in (".safetensors", ".bin",
                                                                             ".safetensors.index.json"))  # fmt: skip
        try:
            if single.is_file():
                state = load_file(single)
            elif sharded.is_file():
                shards = sorted(set(json.loads(sharded.read_text())["weight_map"].values()))
                state = {k: v for shard in shards for k, v in load_file(folder / shard).items()}
            elif binary.is_file():
                state = torch.load(binary, map_location="cpu", weights_only=True)
            else:
                continue
        except Exception as err:  # safetensors, JSON and pickle errors alike
            raise CheckpointError(f"{folder}: cannot read the weights ({_first_line(err)})") from None
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    raise CheckpointError(f"{folder}: no weights ({DIFFUSERS_WEIGHTS}[.fp16].safetensors or .bin)")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` requiring every key with its shape and nothing else; the error lists what
    is missing, unexpected or of the wrong shape (first few of each) and names ``source``."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = [f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
                for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if items]  # fmt: skip
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the model of its config: {'; '.join(problems)}")
    module.load_state_dict(state)
