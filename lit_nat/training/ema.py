"""Exponential moving average of a backbone's weights (AutoNAT/ENAT: 0.9999 every optimiser step, from step 0)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def make_ema_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy that starts equal to ``module`` (the official EMA starts at the initial weights)."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    return ema.eval()


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay used at optimiser step ``step``.

    Without warmup this is the constant ``decay`` of the papers. With warmup it is ``min(decay, (1 + step) /
    (10 + step))``, so short runs (the digits demo: a few thousand steps) get an EMA that has moved away from the
    random initialisation; at 500k steps the two are the same.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * online`` over parameters, in one fused call; buffers are copied.

    The update is torch's public EMA function of ``torch.optim.swa_utils`` (a fused ``lerp`` over the parameter list,
    the same arithmetic as a hand-written ``torch._foreach_lerp_``), without its ``AveragedModel`` wrapper: our EMA
    copy is a plain module the checkpoint and the sampler address directly.
    """
    ema_params = [p for p in ema.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    if len(ema_params) != len(online_params):
        raise RuntimeError("EMA and online backbones have different parameter lists")
    get_ema_multi_avg_fn(decay)(ema_params, online_params, None)
    for ema_buffer, buffer in zip(ema.buffers(), online.buffers()):
        ema_buffer.copy_(buffer)
