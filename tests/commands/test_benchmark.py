"""``python -m lit_nat benchmark`` at tiny size on CPU: the JSON lines' fields and numbers, GFLOPs equal to ``flops``'
accounting, both token draws, CUDA-only cases skipped with a reason, one-line errors. No timing is asserted."""

from __future__ import annotations

import json

import pytest
import torch

from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from lit_nat.models import build_backbone, count_parameters
from lit_nat.models.flops import report_for
from tests.conftest import fit_tiny_checkpoint
from tests.helpers.tiny import ENAT_ARCH, SHARDS_SPACE, UVIT_ONE_BLOCK_ARCH

SPACE = dict(codebook_size=12, grid_size=4, num_classes=3)
TINY = ["--arch", "enat-tiny", "--arch_overrides", json.dumps(ENAT_ARCH), "--codebook_size", "12", "--grid_size",
        "4", "--num_classes", "3", "--batch", "2", "--steps", "3", "--warmup", "0", "--repeats", "1",
        "--matmul_size", "64", "--device", "cpu"]  # fmt: skip


def run(capsys, *options: str) -> list[dict]:
    main(["benchmark", *options])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_sampling_lines_have_positive_numbers_and_the_gflops_of_flops(capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    rows = run(capsys, *TINY, "--cases", "matmul", "sampling", "--out", str(out))
    assert [(r["case"], r["reuse"]) for r in rows] == [("matmul", None), ("sampling", True), ("sampling", False)]
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{**r} for r in rows]
    peak = rows[0]["tflops"]
    assert rows[0]["fraction_of_peak"] == 1.0 and peak > 0
    report = report_for("tiny", "enat-tiny", ENAT_ARCH, SPACE, steps=3)
    expected = {True: report.per_image_gflops["guided"], False: report.per_image_gflops["guided, without reuse"]}
    for row in rows[1:]:
        assert row["skipped"] is None and (row["batch"], row["steps"], row["dtype"], row["compile"]) == (2, 3, "fp32",
                                                                                                        "false")
        assert row["images_per_s"] > 0 and row["ms_median"] > 0 and row["tflops"] > 0
        assert row["gflops_per_image"] == pytest.approx(expected[row["reuse"]], rel=1e-5)
        # the peak is measured next to the case's own repeats (a shared machine's peak drifts)
        assert row["peak_source"] == "adjacent matmul" and row["peak_tflops"] > 0
        low, high = row["peak_range"]  # the probes bracketing the repeats: their median is the peak
        assert 0 < low <= row["peak_tflops"] <= high
        assert row["fraction_of_peak"] == pytest.approx(row["tflops"] / row["peak_tflops"], rel=1e-3)
    assert rows[1]["gflops_per_image"] < rows[2]["gflops_per_image"]  # reuse encodes only the new tokens


def test_without_adjacent_peaks_the_matmul_case_is_the_peak(capsys):
    rows = run(capsys, *TINY, "--cases", "matmul", "sampling", "--reuse", "true", "--adjacent_peak", "false")
    (matmul, sampling) = rows
    assert sampling["peak_tflops"] == matmul["tflops"] and sampling["peak_source"] == "matmul case"
    assert sampling["fraction_of_peak"] == pytest.approx(sampling["tflops"] / matmul["tflops"], rel=1e-3)


def test_bf16_true_samples_a_bf16_copy_and_is_not_a_training_precision(capsys):
    rows = run(capsys, *TINY, "--cases", "sampling", "train", "--reuse", "true", "--dtype", "bf16-true")
    sampling, train = rows
    assert sampling["dtype"] == "bf16-true" and sampling["images_per_s"] > 0 and sampling["skipped"] is None
    assert "sampling precision" in train["skipped"]


def test_a_given_peak_replaces_the_measured_one_and_train_reports_its_memory(capsys):
    rows = run(capsys, *TINY, "--cases", "train", "--peak_tflops", "2.0", "--dtype", "bf16")
    (row,) = rows
    backbone = build_backbone("enat-tiny", overrides=ENAT_ARCH, **SPACE)
    params, tensors = count_parameters(backbone), len(list(backbone.parameters()))
    assert row["case"] == "train" and row["dtype"] == "bf16" and row["images_per_s"] > 0 and row["gflops_per_image"] > 0
    assert row["peak_tflops"] == 2.0 and row["fraction_of_peak"] == pytest.approx(row["tflops"] / 2.0, rel=1e-3)
    # fp32 parameters, plus gradients, AdamW's two moments and step of those that had a gradient (reuse-only layers,
    # unused by a step without reuse, have none)
    assert 4 * params < row["memory_bytes"] <= 16 * params + 4 * tensors and "AdamW" in row["memory_measure"]


def test_draw_reports_both_methods(capsys):
    rows = run(capsys, "--cases", "draw", "--draw_shape", "2", "4", "16", "--repeats", "1", "--device", "cpu")
    assert [(r["case"], r["method"], r["arch"]) for r in rows] == [("draw", "gumbel", "2x4x16"),
                                                                   ("draw", "inverse_cdf", "2x4x16")]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["skipped"] is None for r in rows)


def test_each_token_draw_is_a_sampling_case_and_reaches_the_loop(capsys, monkeypatch):
    from lit_nat.generation import decoding

    seen, draw = [], decoding.categorical_draw
    monkeypatch.setattr(decoding, "categorical_draw", lambda *a, **k: seen.append(a[3]) or draw(*a, **k))
    rows = run(capsys, *TINY, "--cases", "sampling", "--reuse", "true", "--token_draw", "auto", "gumbel", "inverse_cdf")
    # auto on 12 codes is the Gumbel draw: one case, not two
    assert [(r["case"], r["method"]) for r in rows] == [("sampling", "gumbel"), ("sampling", "inverse_cdf")]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert set(seen) == {"gumbel", "inverse_cdf"} and seen[-1] == "inverse_cdf"


def test_cuda_only_and_tokenizer_cases_are_skipped_with_a_reason_on_cpu(capsys):
    rows = run(capsys, *TINY, "--cases", "sampling", "decode", "--compile", "cuda_graphs", "--reuse", "true")
    assert [r["case"] for r in rows] == ["sampling", "decode"]
    assert "CUDA graphs" in rows[0]["skipped"] and "cpu" in rows[0]["skipped"] and "images_per_s" not in rows[0]
    assert "no tokenizer" in rows[1]["skipped"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--arch", "enat-xl"], "--arch enat-xl: unknown architecture 'enat-xl'; valid names: "),
        (["--arch", "enat-tiny", "--cases", "sampel"], "--cases 'sampel' is not one of matmul, sampling, train"),
        (["--arch", "enat-tiny", "--dtype", "fp8"], "--dtype 'fp8' is not one of fp32, bf16, fp16"),
        (["--arch", "enat-tiny", "--repeats", "0"], "--repeats must be >= 1"),
        (["--arch", "enat-tiny", "--token_draw", "exp"], "--token_draw 'exp' is not one of auto, gumbel, inverse_cdf"),
        (["--arch", "enat-tiny", "--compile", "max"], "--compile 'max' is not one of false, true, freeze, cuda_graphs"),
        (["--cases", "train"], "cases train need a model: give --arch, --model_configs or --ckpt_path"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(options, message):
    with pytest.raises(UsageError) as error:
        main(["benchmark", *options, "--device", "cpu"])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_gives_its_backbone_and_its_tokenizer_for_decode(capsys, tmp_path, tiny_shards):
    _, ckpt = fit_tiny_checkpoint(tmp_path, tiny_shards, steps=2)
    capsys.readouterr()
    rows = run(capsys, "--ckpt_path", str(ckpt), "--cases", "sampling", "decode", "--batch", "2", "--steps", "2",
               "--warmup", "0", "--repeats", "1", "--device", "cpu")  # fmt: skip
    assert [(r["case"], r["skipped"]) for r in rows] == [("sampling", None), ("decode", None)]
    space = {k: SHARDS_SPACE[k] for k in ("codebook_size", "grid_size", "num_classes")}
    expected = report_for("tiny", "autonat-tiny", UVIT_ONE_BLOCK_ARCH, space, steps=2).per_image_gflops["guided"]
    assert rows[0]["gflops_per_image"] == pytest.approx(expected, rel=1e-5) and rows[1]["images_per_s"] > 0


def test_an_out_of_memory_case_is_a_skipped_line_and_the_others_run(capsys, monkeypatch):
    """A batch too large for the device (batch 256 ENAT-L training on a smaller card) skips that case only."""
    from lit_nat.commands import benchmark_cases

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(benchmark_cases, "train", out_of_memory)
    rows = run(capsys, *TINY, "--cases", "sampling", "train", "--reuse", "true")
    assert [r["case"] for r in rows] == ["sampling", "train"] and rows[0]["images_per_s"] > 0
    assert rows[1]["skipped"] == "out of memory at batch 2 on this device"


def test_the_peak_probes_bracket_every_timed_call():
    from lit_nat.commands.benchmark_cases import paired_timing, peak_summary

    events: list[str] = []
    probe_values = iter([3.0, 1.0, 2.0, 5.0])
    seconds, peaks = paired_timing(lambda: events.append("call"), lambda: events.append("probe") or next(probe_values),
                                   warmup=1, repeats=3, device=torch.device("cpu"))  # fmt: skip
    assert events == ["call", "probe", "call", "probe", "call", "probe", "call", "probe"]  # warm-up untimed first
    assert peaks == [3.0, 1.0, 2.0, 5.0] and seconds >= 0
    assert peak_summary(peaks) == {"adjacent_peak_tflops": 2.5, "peak_range": [1.0, 5.0]}
    assert peak_summary([]) == {}


def test_pair_compile_modes_times_each_mode_in_pairs(monkeypatch):
    """scripts/pair_compile_modes.py: one call of each mode per round, the probe around them; speeds and the paired
    ratio of the two modes (compiling is stubbed: which mode reaches which call is what is checked)."""
    import importlib.util
    from pathlib import Path

    from lit_nat.commands import benchmark_cases

    path = Path(__file__).resolve().parents[2] / "scripts" / "pair_compile_modes.py"
    spec = importlib.util.spec_from_file_location("pair_compile_modes", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    modes, probes = [], []
    monkeypatch.setattr(benchmark_cases, "compile_for_sampling", lambda b, mode, device: modes.append(mode) or b)
    probe = benchmark_cases.matmul_probe
    monkeypatch.setattr(benchmark_cases, "matmul_probe", lambda *a: (lambda p=probe(*a): probes.append(1) or p()))
    result = script.main(["--arch", "enat-tiny", "--arch_overrides", json.dumps(ENAT_ARCH), "--batch", "2", "--steps",
                          "3", "--repeats", "3", "--matmul_size", "64", "--dtype", "fp32"])  # fmt: skip
    assert modes == ["false", "freeze"] and len(probes) == 3 + 1
    assert result["modes"] == ["false", "freeze"] and result["paired_speedup"] > 0
    assert all(v > 0 for v in result["images_per_s"] + result["fraction_of_peak"])
    low, high = result["peak_range"]
    assert 0 < low <= result["adjacent_peak_tflops"] <= high
