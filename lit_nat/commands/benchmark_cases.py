"""The cases of ``python -m lit_nat benchmark``: each times one thing (the decoding loop, a training step, the VQ
decode, the token draw, a dense matmul) after ``warmup`` untimed calls and returns the median of ``repeats`` timed
calls, with the GFLOPs of one image from the same accounting as ``python -m lit_nat flops``
(:mod:`lit_nat.models.flops`: measured by ``FlopCounterMode`` on a meta-device copy, so counting costs nothing)."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lit_nat.conditioning.condition import TextCondition
from lit_nat.generation.compiled import compile_for_sampling
from lit_nat.generation.decoding import categorical_draw, generate, make_generator
from lit_nat.generation.precision import autocast_for, cast_for_sampling, sampling_context
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models.amused import AmusedBackbone
from lit_nat.models.flops import WithoutReuse, generation_flops
from lit_nat.training.objective import masked_token_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-true": torch.bfloat16}
#: ``--dtype`` -> sampling precision (:mod:`lit_nat.generation.precision`): bf16 and fp16 are autocast, as training
#: runs them; bf16-true casts the weights once (Lightning's bf16-true)
PRECISION_OF = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed", "bf16-true": "bf16-true"}
DRAW_METHODS = ("gumbel", "inverse_cdf")


class Skip(Exception):
    """A case that cannot run here; its message is the reason written in the case's JSON line."""


@dataclass
class Target:
    """A model to benchmark: its real backbone (random or loaded weights), a builder of the same backbone on the meta
    device (for the FLOPs), and its tokenizer when one is available (for ``decode``)."""

    name: str
    backbone: nn.Module
    meta_builder: Callable[[], nn.Module]
    tokenizer: Any = None
    no_tokenizer_reason: str = "no tokenizer: give --model_configs with a model.tokenizer or --ckpt_path"

    @property
    def reuses(self) -> bool:
        return bool(getattr(self.backbone, "supports_reuse", False))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (compilation, caches, allocator)."""
    return paired_timing(fn, None, warmup, repeats, device)[0]


def paired_timing(fn: Callable[[], Any], probe: Callable[[], float] | None, warmup: int, repeats: int,
                  device: torch.device) -> tuple[float, list[float]]:  # fmt: skip
    """``(median seconds of fn, the probe's values)``, the probe (the matmul peak) measured before each timed call and
    after the last, so the probes bracket every repeat: this project's 2-core CPU switches between ~1.6 and ~0.7 bf16
    TFLOP/s in episodes of seconds, so a fraction of peak is only meaningful against peaks sampled through the same
    stretch of time as the work (:func:`peak_summary` reduces them)."""
    for _ in range(warmup):
        fn()
    (times,), peaks = bracketed([lambda: seconds_of(fn, device)], probe, repeats)
    return statistics.median(times), peaks


def bracketed(measures: list[Callable[[], float]], probe: Callable[[], float] | None,
              repeats: int) -> tuple[list[list[float]], list[float]]:  # fmt: skip
    """``repeats`` rounds of: the probe, then each measure in turn (each returns its seconds); one more probe after the
    last round. Returns (each measure's values, the probe's values)."""
    values: list[list[float]] = [[] for _ in measures]
    peaks: list[float] = []
    for _ in range(repeats):
        if probe is not None:
            peaks.append(probe())
        for column, measure in zip(values, measures):
            column.append(measure())
    if probe is not None:
        peaks.append(probe())
    return values, peaks


def significant(value: float | None, digits: int = 4) -> float | None:
    """``value`` to ``digits`` significant digits (a tiny model's TFLOP/s is not rounded to zero)."""
    return None if value is None else float(f"{value:.{digits}g}")


def peak_summary(peaks: list[float]) -> dict[str, Any]:
    """The adjacent peak of a case: the median of its bracketing probes, and their range (how much the machine
    drifted while the case ran: a wide range means the fraction of peak is rough)."""
    if not peaks:
        return {}
    return {"adjacent_peak_tflops": statistics.median(peaks), "peak_range": [min(peaks), max(peaks)]}


def matmul_probe(size: int, dtype: str, device: torch.device) -> Callable[[], float]:
    """A callable returning the TFLOP/s of one ``size``-square matmul in ``dtype`` (the best of two)."""
    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    a @ b  # warm: allocator and kernel choice
    return lambda: 2 * size**3 / min(seconds_of(lambda: a @ b, device) for _ in range(2)) / 1e12


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision as ``--trainer.precision bf16-mixed`` runs it (weights in fp32, matmuls in ``dtype``)."""
    if dtype == "bf16-true":
        raise Skip("bf16-true (weights cast to bfloat16) is a sampling precision; train in bf16 with autocast (bf16)")
    return autocast_for(device, PRECISION_OF[dtype])


def compiled(backbone: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """:func:`compile_for_sampling`; a mode this device cannot run (CUDA graphs on a CPU) is a skipped case (the
    modes themselves are checked with the request)."""
    try:
        return compile_for_sampling(backbone, mode, device)
    except ValueError as err:
        raise Skip(str(err)) from None


def text_shape(backbone: nn.Module) -> tuple[int, int] | None:
    """``(width, tokens)`` of the text states a text backbone takes (aMUSEd's CLIP-L: 768 x 77), None for classes."""
    inner = getattr(backbone, "inner", backbone)  # (WithoutReuse)
    if isinstance(inner, AmusedBackbone):
        return int(inner.model.config.encoder_hidden_size), 77
    embed = getattr(inner, "context_embed", None)  # U-ViT and ENAT built with a text encoder's context
    return (embed.proj.in_features, embed.position.shape[0]) if embed is not None else None


def conditions(backbone: nn.Module, batch: int, device: torch.device) -> tuple[Any, Any]:
    """``(condition, null condition)`` of ``batch`` rows: class ids and the null class, or (a text backbone) random
    encoder states standing in for the text tower's, whose cost is not part of the loop."""
    shape = text_shape(backbone)
    if shape is None:
        return torch.arange(batch, device=device) % backbone.num_classes, backbone.null_class
    width, length = shape

    def text() -> TextCondition:
        return TextCondition(torch.randn(batch, length, width, device=device),
                             torch.ones(batch, length, dtype=torch.bool, device=device),
                             torch.randn(batch, width, device=device))  # fmt: skip

    return text(), text()


def sampling_gflops(target: Target, steps: int, reuse: bool) -> float:
    """GFLOPs of one guided image over ``steps`` steps, as ``flops`` counts it (reuse off: :class:`WithoutReuse`);
    a text backbone is counted with text conditions of its width."""
    with torch.device("meta"):
        meta = target.meta_builder().eval()
    model = meta if reuse or not getattr(meta, "supports_reuse", False) else WithoutReuse(meta)
    rows = conditions(meta, 2, torch.device("meta"))[0] if text_shape(meta) is not None else None
    return sum(generation_flops(model, GenerationSchedule.enat(steps), guided=True, condition=rows)) / 1e9


def sampling(target: Target, *, batch: int, steps: int, dtype: str, compile: str, reuse: bool,
             device: torch.device, warmup: int, repeats: int, probe: Callable[[], float] | None = None,
             draw: str = "auto") -> dict[str, Any]:  # fmt: skip
    """The decoding loop of ``sample`` (:func:`sampling_call`) timed, with the peak next to each repeat."""
    run = sampling_call(target, batch=batch, steps=steps, dtype=dtype, compile=compile, reuse=reuse, draw=draw,
                        device=device)  # fmt: skip
    seconds, peaks = paired_timing(run, probe, warmup, repeats, device)
    return {"seconds": seconds, "images": batch, "gflops_per_image": sampling_gflops(target, steps, reuse),
            **peak_summary(peaks)}  # fmt: skip


def sampling_call(target: Target, *, batch: int, steps: int, dtype: str, compile: str, reuse: bool, draw: str,
                  device: torch.device) -> Callable[[], None]:  # fmt: skip
    """One call of the decoding loop of ``sample`` (guided ENAT schedule with token draw ``draw``, two backbone rows
    per image and step) in the sampling precision of ``dtype`` (:data:`PRECISION_OF`), tokens out."""
    precision = PRECISION_OF[dtype]
    backbone = target.backbone
    if precision == "bf16-true":  # a copy: the fp32 weights serve the other cases
        backbone = cast_for_sampling(copy.deepcopy(backbone), precision)
    backbone = backbone if reuse or not target.reuses else WithoutReuse(backbone)
    model = compiled(backbone, compile, device)
    condition, null = conditions(target.backbone, batch, device)
    schedule = replace(GenerationSchedule.enat(steps), draw=draw)

    def run() -> None:
        with sampling_context(device, precision):
            generate(model, condition, schedule, make_generator(0, device), num_tokens=target.backbone.num_tokens,
                     mask_id=target.backbone.mask_id, null_condition=null)  # fmt: skip

    return run


def training_step(backbone: nn.Module, optimizer: torch.optim.Optimizer, batch: int, device: torch.device,
                  dtype: str) -> None:  # fmt: skip
    """One AdamW step of the masked-token objective on random tokens, half of each row masked (the same count in every
    row, as ENAT needs), without reuse training."""
    n, masked = backbone.num_tokens, backbone.num_tokens // 2
    targets = torch.randint(0, backbone.codebook_size, (batch, n), device=device)
    mask = torch.rand(batch, n, device=device).argsort(dim=1) < masked
    condition, _ = conditions(backbone, batch, device)
    with autocast(device, dtype):
        logits, _ = backbone(targets.masked_fill(mask, backbone.mask_id), condition, None, num_masked=masked)
    loss, _ = masked_token_loss(logits, targets.masked_fill(~mask, -100))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated: they are part of the step's memory


def train(target: Target, *, batch: int, dtype: str, device: torch.device, warmup: int, repeats: int,
          probe: Callable[[], float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Images/s of a training step and its memory: CUDA's peak allocation, or on CPU the bytes of parameters,
    gradients and AdamW state (activations are freed by the step, and the process's peak RSS is shared with
    everything else it ran)."""
    backbone = target.backbone.train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds, peaks = paired_timing(lambda: training_step(backbone, optimizer, batch, device, dtype), probe, warmup,
                                      max(repeats, 1), device)  # fmt: skip
        if device.type == "cuda":
            memory, measure = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
        else:
            memory, measure = state_bytes(backbone, optimizer), "parameters + gradients + AdamW state (no activations)"
    finally:
        backbone.eval()
        backbone.zero_grad(set_to_none=True)
    return {"seconds": seconds, "images": batch, "gflops_per_image": train_gflops(target),
            **peak_summary(peaks), "memory_bytes": memory, "memory_measure": measure}  # fmt: skip


def state_bytes(backbone: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = [p for p in backbone.parameters()] + [p.grad for p in backbone.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def train_gflops(target: Target) -> float:
    """Forward and backward of one image (half masked) on a meta copy; the optimizer's elementwise update is not a
    matmul and is not counted."""
    with torch.device("meta"):
        meta = target.meta_builder().train()
    n, masked = meta.num_tokens, meta.num_tokens // 2
    ids = torch.zeros(1, n, dtype=torch.long, device="meta")
    condition, _ = conditions(meta, 1, torch.device("meta"))
    counter = FlopCounterMode(display=False)
    with counter:
        logits, _ = meta(ids, condition, None, num_masked=masked)
        logits.float().sum().backward()
    return counter.get_total_flops() / 1e9


def decode(target: Target, *, batch: int, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """The tokenizer's decode of ``batch`` random token grids to images."""
    if target.tokenizer is None:
        raise Skip(target.no_tokenizer_reason)
    tokenizer = target.tokenizer.to(device)
    ids = torch.randint(0, tokenizer.codebook_size, (batch, tokenizer.num_tokens), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        tokenizer.decode(ids[:1])
    with torch.inference_mode():
        seconds = median_seconds(lambda: tokenizer.decode(ids), warmup, repeats, device)
    return {"seconds": seconds, "images": batch, "gflops_per_image": counter.get_total_flops() / 1e9}


def draw(*, shape: tuple[int, int, int], method: str, device: torch.device, warmup: int,
         repeats: int) -> dict[str, Any]:  # fmt: skip
    """One step's token draw (:func:`categorical_draw`) at ``(B, N, K)``: images/s counts the B images of the step."""
    log_probs = torch.log_softmax(torch.randn(*shape, device=device), dim=-1)
    generator = make_generator(0, device)
    seconds = median_seconds(lambda: categorical_draw(log_probs, 1.0, generator, method=method), warmup, repeats,
                             device)  # fmt: skip
    return {"seconds": seconds, "images": shape[0], "gflops_per_image": None}


def matmul(*, size: int, dtype: str, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """A dense ``size``-square matmul in ``dtype``: the achieved TFLOP/s that serves as the peak of that dtype."""
    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    seconds = median_seconds(lambda: a @ b, max(warmup, 1), max(repeats, 3), device)
    return {"seconds": seconds, "images": None, "gflops": 2 * size**3 / 1e9}
