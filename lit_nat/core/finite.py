"""Finiteness checks and the training guard: where NaN/inf are caught (training steps, checkpoints written and read).

The checks run on the tensors' own device and return a device boolean, so a caller decides where the one host read
happens (the training guard reads it once per optimiser step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lit_nat.core.errors import NonFiniteError


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every element of every floating-point tensor is finite (True for no tensors)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.is_floating_point()]
    if not flags:
        return torch.tensor(True)
    device = flags[0].device
    return torch.stack([f.to(device) for f in flags]).all()


def nonfinite_keys(state_dict: Mapping[str, Any], limit: int = 5) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or inf (at most ``limit``; empty if none).

    One fused check first, so a clean state dict costs one host read whatever its size.
    """
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not tensors or bool(all_finite(tensors.values())):
        return []
    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())][:limit]


NONFINITE_POLICIES = ("skip", "stop")


@dataclass
class NonFiniteGuard:
    """What a training step with a non-finite loss or gradient does: ``skip`` it (the weights, optimiser moments and
    EMA stay as they were) until ``max_consecutive`` such steps in a row, or ``stop`` at the first one. Stopping raises
    :class:`~lit_nat.core.errors.NonFiniteError` naming the steps; since the bad steps never touched the weights, every
    checkpoint written before stays finite."""

    policy: str = "skip"
    max_consecutive: int = 10
    consecutive: int = 0
    total: int = 0
    first_bad_step: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite policy must be one of {NONFINITE_POLICIES}, got {self.policy!r}")
        if self.max_consecutive < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_consecutive}")

    def update(self, finite: bool, step: int) -> bool:
        """Record optimiser step ``step``; returns whether to skip it, or raises when the policy says stop."""
        if finite:
            self.consecutive, self.first_bad_step = 0, None
            return False
        self.total += 1
        self.consecutive += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
        if self.policy == "stop" or self.consecutive >= self.max_consecutive:
            steps = f"step {step}" if self.consecutive == 1 else f"steps {self.first_bad_step}-{step}"
            raise NonFiniteError(
                f"non-finite loss or gradients at optimiser {steps} ({self.consecutive} in a row, policy "
                f"{self.policy!r}, max {self.max_consecutive}); those steps did not change the weights, so the last "
                "checkpoint is finite. Lower --model.lr, check the data, or resume from an earlier checkpoint"
            )
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total, "first_bad_step": self.first_bad_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
        self.first_bad_step = state.get("first_bad_step")


def gradient_norm_and_finite(parameters: Iterable[torch.nn.Parameter], loss_finite: torch.Tensor | None,
                             trainer: Any) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """The step's gradient norm and whether the step is finite on *every* rank (losses and gradients): the one host
    read of an optimiser step. The norm is fused and non-finite iff some gradient is (or the norm overflows)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    finite = torch.isfinite(grad_norm)
    if loss_finite is not None:
        finite = finite & loss_finite.to(finite.device)
    bad = (~finite).float()
    if trainer.world_size > 1:  # every rank must take the same decision
        bad = trainer.strategy.reduce(bad, reduce_op="sum")
    return grad_norm, not bool(bad > 0)
