"""Compute accounting: measured FLOPs per forward and per generated image."""

from pathlib import Path

import pytest
import torch

from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import build_backbone
from lit_nat.models.flops import count_flops, flops, format_markdown, generation_flops, report_for

REPO = Path(__file__).resolve().parents[2]
SPACE = {"codebook_size": 16, "grid_size": 4, "num_classes": 3}


def test_linear_layer_flops_are_two_per_multiply_add():
    layer = torch.nn.Linear(8, 5, bias=False)
    flops, _ = count_flops(layer, torch.zeros(3, 8))
    assert flops == 2 * 3 * 8 * 5


def test_uvit_costs_the_same_every_step_and_guidance_doubles_it():
    with torch.device("meta"):
        backbone = build_backbone("autonat-tiny", overrides={"width": 32, "num_layers": 3, "num_heads": 2}, **SPACE)
    schedule = GenerationSchedule.enat(4)
    guided = generation_flops(backbone, schedule, guided=True)
    unguided = generation_flops(backbone, schedule, guided=False)
    assert len(set(unguided)) == 1  # U-ViT processes every token at every step
    assert guided == [2 * f for f in unguided]


def test_uvit_forward_matches_a_hand_count():
    d, n, k, layers = 32, 16, 16, 3
    with torch.device("meta"):
        backbone = build_backbone("autonat-tiny", overrides={"width": d, "num_layers": layers, "num_heads": 2}, **SPACE)
    report = report_for("tiny", "autonat-tiny", {"width": d, "num_layers": layers, "num_heads": 2}, SPACE, steps=4)
    s = n + 1  # the class token goes through every block
    per_block = 2 * s * (3 * d * d + d * d + 8 * d * d) + 2 * 2 * s * s * d  # qkv, proj, MLP; QK^T and AV
    skips = (layers - 1) // 2 * 2 * s * (2 * d) * d
    head = 2 * s * d * d + 2 * s * d * (k + 1)  # head fc on all positions; logits against K+1 rows, then sliced
    expected = layers * per_block + skips + head
    assert report.forward_gflops * 1e9 == pytest.approx(expected, rel=0.02)
    assert report.parameters == sum(p.numel() for p in backbone.parameters())


def test_cli_table_for_shipped_configs(capsys):
    from lit_nat.commands.cli import main as cli_main

    cli_main(["flops", "--configs", str(REPO / "configs/autonat_s.yaml"), "--steps", "8"])
    assert "| autonat_s | 45.5 |" in capsys.readouterr().out
    reports = flops([str(REPO / "configs/autonat_s.yaml")], steps=8)
    assert reports[0].parameters == 45_546_497
    out = capsys.readouterr().out
    assert "| autonat_s | 45.5 |" in out and out.startswith("| config |")
    assert format_markdown(reports, 8).count("\n") == 2


def test_enat_reuse_saves_compute_after_the_second_step():
    overrides = {"width": 32, "encoder_layers": 3, "decoder_layers": 1, "num_heads": 2}
    with torch.device("meta"):
        backbone = build_backbone("enat-tiny", overrides=overrides, **SPACE)
    from lit_nat.models.flops import WithoutReuse

    schedule = GenerationSchedule.enat(4)
    reuse = generation_flops(backbone, schedule, guided=False)
    plain = generation_flops(WithoutReuse(backbone), schedule, guided=False)
    assert reuse[:2] == plain[:2]  # step 0 has no state, step 1's state has no visible tokens
    assert all(r < p for r, p in zip(reuse[2:], plain[2:]))
    report = report_for("tiny", "enat-tiny", overrides, SPACE, steps=4)
    assert report.per_image_gflops["unguided"] * 1e9 == sum(reuse)
    assert report.per_image_gflops["unguided, without reuse"] * 1e9 == sum(plain)
