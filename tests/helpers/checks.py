"""Assertions shared by the reliability tests."""

from __future__ import annotations

from typing import Any

import torch


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two Lightning checkpoints hold bit-identical training states: step, online and EMA weights, optimiser moments
    and LR schedule (max abs difference 0, not merely close)."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        other = b["state_dict"][name]
        assert torch.equal(value, other), f"{name} differs by {(value - other).abs().max()}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for key, value in state.items():
                assert torch.equal(value, opt_b["state"][index][key]), f"optimiser state {index}.{key} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]
