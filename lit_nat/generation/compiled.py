"""``torch.compile`` for the decoding loop, by mode name (``benchmark --compile``, ``sample --compile``).

- ``false``: eager.
- ``true``: ``torch.compile`` in its default mode.
- ``freeze``: ``torch.compile`` with inductor's *freezing*: the weights become constants of the compiled graph, so
  inductor folds autocast's weight casts away, pre-packs the weights for oneDNN on a CPU and fuses each linear layer
  with its GELU. Inference only, and the weights are read once: a change to them after the first call is not seen
  (the sampling commands never change them). On this project's CPU it is the mode that pays (``measurements.md``);
  the default mode fuses elementwise work but keeps autocast's weight casts and runs each GELU outside its matmul.
- ``cuda_graphs``: ``torch.compile(mode="reduce-overhead")``, CUDA only (the loop has no host synchronisation).

Every mode computes the same function at the level of float rounding: the tokens of a seed can differ from eager's
where two candidates' scores are within an ulp (the tests find eager's tokens and images at a tiny size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPILE_MODES = ("false", "true", "freeze", "cuda_graphs")


def check_compile_mode(mode: str, device: torch.device | str) -> str:
    """``mode`` lower-cased, or a one-line error naming it (and a CPU's lack of CUDA graphs)."""
    mode = str(mode).lower()
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if mode == "cuda_graphs" and torch.device(device).type != "cuda":
        raise ValueError(f"compile mode cuda_graphs (CUDA graphs: torch.compile reduce-overhead) needs a CUDA device, "
                         f"not {device}")  # fmt: skip
    return mode


class FrozenCompiled(nn.Module):
    """A backbone compiled with inductor's freezing: every call runs with ``freezing`` on, so the first call and any
    recompilation (the loop's token counts change from step to step) fold the weights as constants. Attributes other
    than the call (``prepare_condition``, ``num_tokens``, ...) are the backbone's."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        object.__setattr__(self, "compiled", torch.compile(backbone))  # not a submodule: the weights appear once

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():  # freezing would silently not apply: the weights' gradients are wanted
            raise RuntimeError("a backbone compiled with compile mode 'freeze' runs under torch.no_grad only")
        import torch._inductor.config as inductor_config  # (importing inductor costs seconds: only when used)

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["backbone"], name)


def compile_for_sampling(backbone: nn.Module, mode: str, device: torch.device | str = "cpu") -> nn.Module:
    """``backbone`` for :func:`~lit_nat.generation.decoding.generate` under compile ``mode`` (module docstring);
    ``false`` returns it unchanged. The backbone is wrapped, not copied."""
    mode = check_compile_mode(mode, device)
    if mode == "false":
        return backbone
    if mode == "freeze":
        return FrozenCompiled(backbone)
    return torch.compile(backbone, mode="reduce-overhead" if mode == "cuda_graphs" else None)


class SamplingCompiler:
    """The backbones a model samples with, each compiled once in ``mode`` on first use: after a checkpoint's (and
    merged adapters') weights are in place, which ``freeze`` reads once. ``false`` (the default) compiles nothing.
    Not a module: nothing of it enters a checkpoint."""

    def __init__(self, mode: str = "false", device: torch.device | str = "cpu") -> None:
        self.mode = check_compile_mode(mode, device)
        self._compiled: dict[int, tuple[nn.Module, nn.Module]] = {}  # id -> (backbone, kept alive; its compiled form)

    def __call__(self, backbone: nn.Module) -> nn.Module:
        if self.mode == "false":
            return backbone
        if id(backbone) not in self._compiled:
            device = next(backbone.parameters()).device
            self._compiled[id(backbone)] = backbone, compile_for_sampling(backbone, self.mode, device)
        return self._compiled[id(backbone)][1]
