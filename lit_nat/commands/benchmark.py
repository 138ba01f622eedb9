"""``python -m lit_nat benchmark``: throughput of sampling, a training step, the VQ decode and the token draw, with
GFLOPs per image from ``flops``' accounting and the achieved fraction of a peak (given, or this device's measured
dense-matmul TFLOP/s in the same dtype). One JSON line per case, then a Markdown table. The cases are in
:mod:`lit_nat.commands.benchmark_cases`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_nat.commands import benchmark_cases as cases
from lit_nat.commands import benchmark_official as official
from lit_nat.commands.benchmark_cases import significant
from lit_nat.core.errors import UsageError
from lit_nat.core.io import atomic_write_text
from lit_nat.core.progress import progress
from lit_nat.generation.compiled import COMPILE_MODES
from lit_nat.generation.schedule import DRAWS, resolve_draw
from lit_nat.models import build_backbone
from lit_nat.models.amused import AMUSED_256_TRANSFORMER

CASES = ("matmul", "sampling", "train", "decode", "draw")
#: shapes of --arch beyond the registry's names: aMUSEd-256's transformer with random weights (diffusers needed)
SHAPES = {"amused-256": ("amused", {"transformer": AMUSED_256_TRANSFORMER}, dict(codebook_size=8192, grid_size=16,
                                                                                num_classes=1))}


@dataclass
class BenchmarkRequest:
    """What ``python -m lit_nat benchmark`` measures.

    Args:
        arch: registry names with random weights (e.g. enat-l autonat-l; amused-256 for aMUSEd-256's transformer),
            in the token space of --codebook_size/--grid_size/--num_classes.
        arch_overrides: size overrides of every --arch (e.g. "{width: 32, encoder_layers: 1}").
        model_configs: lit_nat configs whose model section (arch, arch_overrides, tokenizer) gives a model.
        ckpt_path: a lit_nat checkpoint: its EMA backbone and its tokenizer.
        cases: what to time (default matmul sampling): matmul (dense matmul TFLOP/s per dtype: the peak when --peak_tflops is not given),
            sampling (the decoding loop, tokens out), train (one AdamW step of the masked-token objective), decode
            (the tokenizer's decode), draw (one step's token draw, gumbel and inverse_cdf, at --draw_shape).
        batch: images per call (default 8); each value is a case.
        steps: decoding steps T (default 8; guided ENAT schedule); each value is a case.
        dtype: fp32 (default), bf16 or fp16 (autocast, as bf16-mixed training runs), bf16-true (weights cast once to
            bfloat16, Lightning's bf16-true; sampling only); each value is a case.
        compile: false (default), true (torch.compile), freeze (torch.compile with inductor's freezing: weights as
            constants, pre-packed and fused on a CPU; inference only, the official pairs too), cuda_graphs
            (torch.compile reduce-overhead; CUDA only); each value is a case.
        reuse: ENAT's feature reuse: both (with and without), true or false; other backbones run once.
        token_draw: how the sampling cases draw tokens (the schedule's draw): auto (default: inverse_cdf from 4,096
            codes on, gumbel below), gumbel (one Gumbel per code) or inverse_cdf (one uniform per token); each value
            is a case (the JSON line's method).
        device: cpu, cuda, cuda:1, or auto.
        warmup: untimed calls before the timed ones (compilation, caches).
        repeats: timed calls; the median is reported.
        peak_tflops: the device's peak TFLOP/s for the fraction of peak (default: a --matmul_size matmul in the same
            dtype timed right before each timed call, since a shared machine's peak drifts; the matmul case's
            without --adjacent_peak).
        adjacent_peak: measure the peak next to every sampling and train repeat (true) or only in the matmul case.
        matmul_size: side of the square matmul (default 4096 on CPU, 8192 on CUDA; 2048 under-reads a CPU's peak).
        draw_shape: (B, N, K) of the draw case (default aMUSEd's 8 x 256 x 8192).
        codebook_size: token codes K of --arch (ImageNet VQGAN: 1024).
        grid_size: token grid side of --arch.
        num_classes: classes of --arch.
        official_enat: a clone of LeapLabTHU/ENAT: its sampling loop, at the size of each ENAT --arch, timed beside
            each of our sampling cases with reuse (see lit_nat.commands.benchmark_official).
        official_autonat: a clone of LeapLabTHU/ImprovedNAT: the official AutoNAT loop, at the size of each U-ViT
            --arch (16 x 16 grid), timed beside each of our sampling cases.
        out: also write the JSON lines to this file (whole or not at all).
    """

    arch: list[str] = field(default_factory=list)
    arch_overrides: dict[str, Any] | None = None
    model_configs: list[str] = field(default_factory=list)
    ckpt_path: str | None = None
    cases: list[str] | None = None
    batch: list[int] | None = None
    steps: list[int] | None = None
    dtype: list[str] | None = None
    compile: list[str] | None = None
    reuse: str = "both"
    token_draw: list[str] | None = None
    device: str = "auto"
    warmup: int = 1
    repeats: int = 3
    peak_tflops: float | None = None
    adjacent_peak: bool = True
    matmul_size: int | None = None
    draw_shape: list[int] | None = None
    codebook_size: int = 1024
    grid_size: int = 16
    num_classes: int = 1000
    official_enat: str | None = None
    official_autonat: str | None = None
    out: str | None = None


#: the list options' defaults (a list default would be extended, not replaced, by the values given after its flag)
LIST_DEFAULTS = dict(cases=["matmul", "sampling"], batch=[8], steps=[8], dtype=["fp32"], compile=["false"],
                     token_draw=["auto"], draw_shape=[8, 256, 8192])  # fmt: skip


def with_defaults(request: BenchmarkRequest) -> BenchmarkRequest:
    return replace(request, **{k: v for k, v in LIST_DEFAULTS.items() if getattr(request, k) is None})


def check_request(request: BenchmarkRequest) -> None:
    """Every option's value against what it may be, one line each."""
    if request.reuse not in ("both", "true", "false"):
        raise UsageError(f"benchmark: --reuse {request.reuse!r} is not one of both, true, false")
    checks = [("--cases", request.cases, CASES), ("--dtype", request.dtype, tuple(cases.DTYPES)),
              ("--compile", [str(c).lower() for c in request.compile], COMPILE_MODES),
              ("--token_draw", request.token_draw, DRAWS)]  # fmt: skip
    for flag, values, valid in checks:
        for value in values:
            if value not in valid:
                raise UsageError(f"benchmark: {flag} {value!r} is not one of {', '.join(valid)}")
    for flag, value in (("--warmup", request.warmup + 1), ("--repeats", request.repeats), *(
            ("--batch", b) for b in request.batch), *(("--steps", s) for s in request.steps)):  # fmt: skip
        if value < 1:
            raise UsageError(f"benchmark: {flag} must be >= 1 (--warmup >= 0), got {value - (flag == '--warmup')}")
    for code, path in official_roots(request).items():
        official.check_official_root(path, code)
    if len(request.draw_shape) != 3:
        raise UsageError(f"benchmark: --draw_shape takes three sizes B N K, got {request.draw_shape}")
    needs_model = set(request.cases) & {"sampling", "train", "decode"}
    if needs_model and not (request.arch or request.model_configs or request.ckpt_path):
        raise UsageError(f"benchmark: cases {', '.join(sorted(needs_model))} need a model: give --arch, "
                         "--model_configs or --ckpt_path")  # fmt: skip


def arch_target(name: str, request: BenchmarkRequest, device: torch.device) -> cases.Target:
    arch, overrides, space = SHAPES.get(name, (name, request.arch_overrides, None))
    space = space or dict(codebook_size=request.codebook_size, grid_size=request.grid_size,
                          num_classes=request.num_classes)  # fmt: skip
    build = partial(build_backbone, arch, overrides=overrides, **space)
    try:
        backbone = build().to(device).eval()
    except ValueError as err:  # unknown name or override: the registry's one line names the valid ones
        raise UsageError(f"benchmark: --arch {name}: {err}") from None
    return cases.Target(name, backbone, build)


def config_target(path: str, request: BenchmarkRequest, device: torch.device) -> cases.Target:
    """A config's model section (arch, arch_overrides, tokenizer; codebook and grid from its tokenizer when given)."""
    from lit_nat.tokenizers import token_space, tokenizer_from_config

    try:
        model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"benchmark: --model_configs {path}: cannot read it ({str(err).splitlines()[0]})") from None
    spec, tokenizer, reason = model.get("tokenizer"), None, f"{path}: no model.tokenizer"
    codebook, grid = token_space(spec) if spec else (request.codebook_size, request.grid_size)
    if spec:
        try:
            tokenizer = tokenizer_from_config(spec)
        except Exception as err:  # a weights file that is not on this machine: decode is skipped, the rest runs
            reason = f"{path}: tokenizer not loaded ({type(err).__name__}: {str(err).splitlines()[0]})"
    build = partial(build_backbone, model.get("arch", "autonat-s"), overrides=model.get("arch_overrides"),
                    codebook_size=codebook, grid_size=grid, num_classes=model.get("num_classes", request.num_classes))
    return cases.Target(Path(path).stem, build().to(device).eval(), build, tokenizer, reason)


def checkpoint_target(path: str, device: torch.device) -> cases.Target:
    from lit_nat.conditioning import text_space
    from lit_nat.training.loading import load_model

    module = load_model(path, map_location=device)
    hp = module.hparams
    context = text_space(hp["text_encoder"]) if hp.get("text_encoder") else None
    build = partial(build_backbone, hp["arch"], overrides=hp.get("arch_overrides"), codebook_size=module.codebook_size,
                    grid_size=module.backbone.grid_size, num_classes=hp["num_classes"], context=context)  # fmt: skip
    return cases.Target(Path(path).stem, module.backbone, build, module.tokenizer, f"{path}: no tokenizer recorded")


def matmul_size(request: BenchmarkRequest, device: torch.device) -> int:
    return request.matmul_size or (8192 if device.type == "cuda" else 4096)


def probes(request: BenchmarkRequest, device: torch.device) -> Callable[[str], Callable[[], float] | None]:
    """``dtype -> probe``: the matmul that measures the peak next to each timed call, one per dtype (its matrices
    made when the plan first names the dtype); None where the peak is given or --adjacent_peak is false."""
    made: dict[str, Callable[[], float]] = {}

    def probe_for(dtype: str) -> Callable[[], float] | None:
        if request.peak_tflops or not request.adjacent_peak:
            return None
        name = "bf16" if dtype == "bf16-true" else dtype
        if name not in made:
            made[name] = cases.matmul_probe(matmul_size(request, device), name, device)
        return made[name]

    return probe_for


def plan(request: BenchmarkRequest, targets: list[cases.Target], device: torch.device) -> list[tuple[dict, Any]]:
    """Every case to run, in order: ``(its identity in the JSON line, the call that measures it)``."""
    timing = dict(device=device, warmup=request.warmup, repeats=request.repeats)
    out: list[tuple[dict, Any]] = []
    size = matmul_size(request, device)
    if "matmul" in request.cases:
        out += [({"case": "matmul", "arch": f"{size}x{size}", "dtype": d}, partial(cases.matmul, size=size, dtype=d,
                 **timing)) for d in request.dtype]  # fmt: skip
    if "draw" in request.cases:
        shape = tuple(request.draw_shape)
        out += [({"case": "draw", "arch": "x".join(map(str, shape)), "method": m}, partial(cases.draw, shape=shape,
                 method=m, **timing)) for m in cases.DRAW_METHODS]  # fmt: skip
    for target in targets:
        out += target_plan(request, target, timing, probes(request, device))
    return out


def target_plan(request: BenchmarkRequest, target: cases.Target, timing: dict,
                probe_for: Callable[[str], Callable[[], float] | None]) -> list[tuple[dict, Any]]:  # fmt: skip
    out: list[tuple[dict, Any]] = []
    reuses = {"both": [True, False], "true": [True], "false": [False]}[request.reuse] if target.reuses else [None]
    draws = dict.fromkeys(resolve_draw(d, target.backbone.codebook_size) for d in request.token_draw)  # in order, once
    for batch in request.batch:
        for dtype in request.dtype:
            if "sampling" in request.cases:
                out += [({"case": "sampling", "arch": target.name, "batch": batch, "steps": steps, "dtype": dtype,
                          "compile": str(mode).lower(), "reuse": reuse, "method": draw},
                         partial(cases.sampling, target, batch=batch, steps=steps, dtype=dtype,
                                 compile=str(mode).lower(), reuse=reuse is not False, draw=draw,
                                 probe=probe_for(dtype), **timing))
                        for steps in request.steps for mode in request.compile for reuse in reuses
                        for draw in draws]  # fmt: skip
                out += official_plan(request, target, timing, batch, dtype)
            if "train" in request.cases:
                out.append(({"case": "train", "arch": target.name, "batch": batch, "dtype": dtype},
                            partial(cases.train, target, batch=batch, dtype=dtype, probe=probe_for(dtype),
                                    **timing)))  # fmt: skip
        if "decode" in request.cases:
            out.append(({"case": "decode", "arch": target.name, "batch": batch},
                        partial(cases.decode, target, batch=batch, **timing)))  # fmt: skip
    return out


def official_roots(request: BenchmarkRequest) -> dict[str, str]:
    """The official clones given: ``{"enat": path, "autonat": path}``, each only where its option was given."""
    given = {"enat": request.official_enat, "autonat": request.official_autonat}
    return {code: path for code, path in given.items() if path}


def official_plan(request: BenchmarkRequest, target: cases.Target, timing: dict, batch: int,
                  dtype: str) -> list[tuple[dict, Any]]:  # fmt: skip
    """The official loops beside our sampling cases of ``target``: ENAT's on ENAT backbones (--official_enat),
    AutoNAT's on U-ViTs (--official_autonat); the official loop eager, paired with ours under each --compile mode."""
    size = matmul_size(request, timing["device"])
    return [({"case": "sampling", "arch": f"official:{target.name}", "batch": batch, "steps": steps, "dtype": dtype,
              "compile": "false", "reuse": True if code == "enat" else None, "paired_compile": mode},
             partial(official.sampling, target, Path(path), batch=batch, steps=steps, dtype=dtype, code=code,
                     compile=mode, matmul_size=size, adjacent_peak=request.adjacent_peak and not request.peak_tflops,
                     **timing))
            for code, path in official_roots(request).items() if official.applies(code, target)
            for steps in request.steps for mode in map(str.lower, map(str, request.compile))]  # fmt: skip


#: identity keys that only some cases have: a sampling case's token draw, an official case's compile mode of ours
OPTIONAL_KEYS = ("method", "paired_compile")


def measured(identity: dict, call: Any, peaks: dict[str, float], request: BenchmarkRequest) -> dict[str, Any]:
    """One JSON line: the identity, the median time, images/s, GFLOPs per image, TFLOP/s and the fraction of peak;
    a case that cannot run here has ``skipped`` with the reason and no numbers."""
    row = {"case": identity["case"], "arch": identity.get("arch"), "batch": identity.get("batch"),
           "steps": identity.get("steps"), "dtype": identity.get("dtype"), "compile": identity.get("compile"),
           "reuse": identity.get("reuse"), **{k: v for k, v in identity.items() if k in OPTIONAL_KEYS}}  # fmt: skip
    try:
        result = call()
    except cases.Skip as reason:
        return {**row, "skipped": str(reason)}
    except torch.OutOfMemoryError:  # a batch too large for this device: the other cases still run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {**row, "skipped": f"out of memory at batch {identity.get('batch')} on this device"}
    seconds, images = result.pop("seconds"), result.pop("images")
    gflops = result.pop("gflops", None)
    per_image = result.pop("gflops_per_image", None)
    if per_image is not None:
        gflops = per_image * images
    tflops = gflops / seconds / 1e3 if gflops is not None else None
    if identity["case"] == "matmul":
        peaks.setdefault(identity["dtype"], tflops)
    adjacent = result.pop("adjacent_peak_tflops", None)
    spread = [significant(v) for v in result.pop("peak_range", [])] if adjacent and not request.peak_tflops else None
    peak, source = ((request.peak_tflops, "given") if request.peak_tflops else (adjacent, "adjacent matmul")
                    if adjacent else (peaks.get(identity.get("dtype")), "matmul case"))  # fmt: skip
    fraction = tflops / peak if tflops is not None and peak else None
    return {**row, "ms_median": significant(seconds * 1e3), "images_per_s": significant(images / seconds if images
            else None), "gflops_per_image": significant(per_image, 7), "tflops": significant(tflops),
            "peak_tflops": significant(peak), "peak_source": source if peak else None, "peak_range": spread,
            "fraction_of_peak": significant(fraction), **result,
            "skipped": None}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    keys = ["case", "arch", "batch", "steps", "dtype", "compile", "reuse", "method", "images_per_s", "ms_median",
            "gflops_per_image", "tflops", "peak_tflops", "peak_range", "fraction_of_peak", "paired_ratio",
            "paired_compile", "skipped"]  # fmt: skip
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def benchmark(request: BenchmarkRequest) -> list[dict[str, Any]]:
    """Time sampling (images/s at batch B and T steps, with and without ENAT's reuse, fp32/bf16, torch.compile on/off,
    CUDA graphs on CUDA), a training step (images/s, memory), the VQ decode and the token draw (gumbel vs
    inverse_cdf), for registry names with random weights (--arch), configs (--model_configs) or a checkpoint
    (--ckpt_path). Warm-up calls are excluded and the median of --repeats is reported, with GFLOPs per image from the
    same accounting as `flops`, the achieved TFLOP/s and its fraction of --peak_tflops (default: the matmul case's
    measured dense-matmul TFLOP/s in the same dtype). Prints one JSON line per case, then a Markdown table; a case
    that cannot run here (CUDA graphs on a CPU, decode without a tokenizer) is a line with `skipped` and the reason.
    """
    request = with_defaults(request)
    check_request(request)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if request.device == "auto"
                          else request.device)  # fmt: skip
    targets = [arch_target(name, request, device) for name in request.arch]
    targets += [config_target(path, request, device) for path in request.model_configs]
    targets += [checkpoint_target(request.ckpt_path, device)] if request.ckpt_path else []
    rows: list[dict[str, Any]] = []
    peaks: dict[str, float] = {}
    todo = plan(request, targets, device)
    with progress(len(todo), "benchmark", unit="case") as bar:
        for identity, call in todo:
            rows.append(measured(identity, call, peaks, request))
            print(json.dumps({**rows[-1], "device": str(device)}), flush=True)
            bar.update(1)
    print(table(rows))
    if request.out:
        atomic_write_text(request.out, "".join(json.dumps({**r, "device": str(device)}) + "\n" for r in rows))
    return rows
