"""Numeric precision of a decoding call, by Lightning's names (``32-true``, ``bf16-mixed``, ``bf16-true``,
``16-mixed``): the context the loop runs in and the cast of the backbone, for code that drives :func:`generate`
itself (``benchmark``); ``sample`` takes the same names through ``--trainer.precision``.

- ``*-mixed`` is autocast, as ``--trainer.precision bf16-mixed`` trains: weights stay float32 and each matmul casts
  them. The loop runs under ``torch.no_grad`` rather than ``torch.inference_mode`` on purpose: autocast keeps the
  casts of the weights for the rest of the region only outside inference mode, and inside it re-casts every weight
  at every step (ENAT-L on CPU, batch 8, T = 8: 6,328 copies against 3,047; in wall time the best of four
  interleaved calls took 5.10 s against 4.62, the same tokens: ``scripts/profile_sampling.py
  --compare_inference_mode true``). ``sample`` and ``predict`` therefore run
  Lightning's predict loop with ``inference_mode=False``; validation keeps inference mode, and its FID evaluation
  leaves it for the generation alone (``GenerativeEvaluation``).
- ``bf16-true`` casts the backbone's weights to bfloat16 once, halves its memory and runs without autocast; the
  decoding loop still draws tokens from float32 log-probabilities.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: the precisions by name: autocast dtype of the ``-mixed`` ones, weight dtype of the ``-true`` ones
PRECISIONS = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16,
              "bf16-true": torch.bfloat16}  # fmt: skip


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def autocast_for(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast in the dtype of a ``-mixed`` precision; nothing for a ``-true`` one."""
    if check_precision(precision).endswith("-mixed"):
        return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])
    return contextlib.nullcontext()


def sampling_context(device: torch.device | str, precision: str = "32-true") -> contextlib.ExitStack:
    """No gradients, and autocast for a ``-mixed`` precision (see the module's note on inference mode)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(autocast_for(device, precision))
    return stack


def cast_for_sampling(backbone: nn.Module, precision: str = "32-true") -> nn.Module:
    """The backbone in the weight dtype of ``precision``: cast in place for ``bf16-true``, unchanged otherwise."""
    if check_precision(precision) == "bf16-true":
        backbone.to(PRECISIONS[precision])
    return backbone
