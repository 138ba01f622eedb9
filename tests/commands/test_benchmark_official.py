"""``benchmark --official_enat PATH``: the official ENAT loop is imported from the user's clone in a child process,
built at the benchmarked ENAT's size and timed beside ours. CI has no clone (no network), so a stand-in with the
official module layout and call signatures records what it was given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from tests.helpers.tiny import ENAT_ARCH, UVIT_ARCH, UVIT_ONE_BLOCK_ARCH

STAND_IN_MODELS = '''
import json, os
import torch
from torch import nn
from timm.models.vision_transformer import Mlp  # resolved from the clone, as the official code does


class DiT(nn.Module):
    def __init__(self, input_size=32, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1,
                 num_classes=1000, learn_sigma=True, codebook_size=1024, args=None):
        super().__init__()
        record = dict(input_size=input_size, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                      mlp_ratio=mlp_ratio, num_classes=num_classes, codebook_size=codebook_size,
                      enc_dec=list(args.enc_dec), cfg_scale=args.cfg_scale)
        with open(os.environ["STAND_IN_RECORD"], "w") as f:
            json.dump(record, f)
        self.embed = nn.Embedding(codebook_size + 1, hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.codebook_size = codebook_size

    def forward(self, ids, context=None, prev_dict=None, return_dict=False):
        logits = self.mlp(self.embed(ids)) @ self.embed.weight[: self.codebook_size].T
        return {"logits": logits, "feat": None, "masking": ids == self.codebook_size}
'''

STAND_IN_SCHEDULE = '''
import torch


class NATSchedule:
    def __init__(self, codebook_size, device, ignore_ind=-1, smoothing=0.1, beta_alpha_beta=(12, 3), args=None):
        self.mask_ind, self.device, self.args = codebook_size, device, args

    @torch.no_grad()
    def generate(self, sample_steps, _n_samples, nnet, decode_fn, latent_size, **kwargs):
        ids = torch.full((_n_samples, latent_size * latent_size), self.mask_ind, device=self.device)
        for _ in range(sample_steps):
            ids = nnet(ids, **kwargs, return_dict=True)["logits"].argmax(-1)
        return decode_fn(ids)
'''

STAND_IN_TIMM = '''
from torch import nn


class Mlp(nn.Sequential):
    def __init__(self, in_features, hidden_features):
        super().__init__(nn.Linear(in_features, hidden_features), nn.GELU(), nn.Linear(hidden_features, in_features))
'''

TINY = ["--arch_overrides", json.dumps(ENAT_ARCH), "--codebook_size", "12", "--grid_size", "4", "--num_classes", "1000",
        "--batch", "2", "--steps", "3", "--warmup", "0", "--repeats", "1", "--matmul_size", "64", "--device", "cpu",
        "--cases", "sampling", "--reuse", "true"]  # fmt: skip


def stand_in_clone(root: Path) -> Path:
    files = [("libs/__init__.py", ""), ("libs/models.py", STAND_IN_MODELS), ("libs/nat_misc.py", STAND_IN_SCHEDULE),
             ("timm/__init__.py", ""), ("timm/models/__init__.py", ""),
             ("timm/models/vision_transformer.py", STAND_IN_TIMM)]  # fmt: skip
    for path, text in files:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def run(capsys, *options: str) -> list[dict]:
    main(["benchmark", *options])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_the_official_loop_runs_beside_ours_at_the_same_size(capsys, tmp_path, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    clone = stand_in_clone(tmp_path / "ENAT")
    ours, official = run(capsys, "--arch", "enat-tiny", *TINY, "--official_enat", str(clone))
    assert (ours["arch"], official["arch"]) == ("enat-tiny", "official:enat-tiny")
    assert official["skipped"] is None and official["images_per_s"] > 0
    assert official["gflops_per_image"] == ours["gflops_per_image"]  # the same blocks on the same tokens
    assert official["peak_source"] == "adjacent matmul" and official["peak_tflops"] > 0
    width, encoder, decoder, heads = (ENAT_ARCH[k] for k in ("width", "encoder_layers", "decoder_layers", "num_heads"))
    assert json.loads(record.read_text()) == dict(
        input_size=4, hidden_size=width, depth=encoder + decoder, num_heads=heads, mlp_ratio=4.0, num_classes=1000,
        codebook_size=12, enc_dec=[encoder, decoder], cfg_scale=2.5)  # fmt: skip


def test_each_official_call_follows_one_of_ours_and_the_pairs_give_the_ratio(capsys, tmp_path, monkeypatch):
    """The child stays up for the case; the parent times ours, then asks the child for one official call, repeat by
    repeat, and reports the median of the per-pair ratios."""
    from lit_nat.commands import benchmark_cases, benchmark_official

    monkeypatch.setenv("STAND_IN_RECORD", str(tmp_path / "record.json"))
    clone = stand_in_clone(tmp_path / "ENAT")
    events: list[str] = []
    call, time_official = benchmark_cases.sampling_call, benchmark_official.OfficialChild.time

    def recorded_call(*args, **kwargs):
        run = call(*args, **kwargs)
        return lambda: events.append(f"ours {kwargs['draw']}") or run()

    monkeypatch.setattr(benchmark_cases, "sampling_call", recorded_call)
    monkeypatch.setattr(benchmark_official.OfficialChild, "time", lambda self: events.append("official") or
                        time_official(self))  # fmt: skip
    modes = []  # (compiling is tested in tests/generation/test_compiled.py; here: which mode reaches which loop)
    monkeypatch.setattr(benchmark_cases, "compile_for_sampling", lambda b, mode, device: modes.append(mode) or b)
    options = [*TINY, "--repeats", "3", "--token_draw", "inverse_cdf", "--compile", "freeze"]
    ours, official = run(capsys, "--arch", "enat-tiny", *options, "--official_enat", str(clone))
    # our own case, then the pairs, ours with the Gumbel draw the official loops use, under the case's compile mode
    assert events == ["ours inverse_cdf"] * 3 + ["ours gumbel", "official"] * 3
    assert modes == ["freeze", "freeze"] and (ours["compile"], official["compile"]) == ("freeze", "false")
    assert official["paired_compile"] == "freeze" and "paired_compile" not in ours
    assert official["paired_ratio"] > 0 and official["paired_lit_nat_images_per_s"] > 0
    assert ours.get("paired_ratio") is None
    assert official["images_per_s"] > 0 and official["peak_range"][0] <= official["peak_tflops"]


def test_a_failing_clone_or_another_backbone_is_a_skipped_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_RECORD", str(tmp_path / "record.json"))
    clone = stand_in_clone(tmp_path / "ENAT")
    (clone / "libs/nat_misc.py").write_text("raise ImportError('numpy too new for this clone')\n")
    _, official = run(capsys, "--arch", "enat-tiny", *TINY, "--official_enat", str(clone))
    assert "failed: ImportError: numpy too new for this clone" in official["skipped"]
    (clone / "libs/nat_misc.py").write_text(STAND_IN_SCHEDULE.replace("ids = torch.full(", "raise RuntimeError("
                                            "'out of luck')\n        ids = torch.full("))  # fmt: skip
    _, official = run(capsys, "--arch", "enat-tiny", *TINY, "--repeats", "2", "--official_enat", str(clone))
    assert "failed: RuntimeError: out of luck" in official["skipped"]  # a child that dies while timing
    rows = run(capsys, "--arch", "autonat-tiny", *TINY[2:], "--arch_overrides", json.dumps(UVIT_ONE_BLOCK_ARCH),
               "--official_enat", str(clone))  # fmt: skip
    assert [r["arch"] for r in rows] == ["autonat-tiny"]  # the official ENAT loop is offered for ENAT backbones only


def test_a_path_that_is_not_a_clone_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"--official_enat .*: no libs/models.py there; give a clone of LeapLabTHU"):
        main(["benchmark", "--arch", "enat-tiny", *TINY, "--official_enat", str(tmp_path)])


# ------------------------------------------------------------------------ --official_autonat (LeapLabTHU/ImprovedNAT)
STAND_IN_UVIT = '''
import json, os
import torch
from torch import nn
from loguru import logger  # the official model imports it to log; the child stands in for it when not installed
from timm.models.vision_transformer import Mlp

XFORMERS_IS_AVAILBLE = False
RECORD = {}  # what the model was built with and called on, read by the stand-in schedule


class UViT(nn.Module):
    def __init__(self, img_size=16, in_chans=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4., qkv_bias=False,
                 qk_scale=None, norm_layer=nn.LayerNorm, use_checkpoint=False, skip=True, codebook_size=1024,
                 args=None, num_classes=None):
        super().__init__()
        logger.debug(f"codebook size in nnet: {codebook_size}")
        RECORD.update(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, skip=skip, codebook_size=codebook_size,
                           num_classes=num_classes, contexts=[])
        self.embed = nn.Embedding(codebook_size + 1, embed_dim)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio))
        self.codebook_size = codebook_size

    def forward(self, masked_ids, timesteps=None, context=None):
        RECORD["contexts"].append(context[:, 0].tolist())
        return self.mlp(self.embed(masked_ids)) @ self.embed.weight[: self.codebook_size].T
'''

STAND_IN_AUTONAT_SCHEDULE = '''
import json, os
import torch
from libs.nat_model import RECORD


class NATSchedule:
    def __init__(self, codebook_size, device, ignore_ind=-1, smoothing=0., beta_alpha_beta=(12, 3)):
        self.mask_ind, self.device = codebook_size, device

    @torch.no_grad()
    def generate(self, gen_steps, _n_samples, nnet, decode_fn, manual_ratios, manual_temp, manual_samp_temp,
                 manual_cfg, **kwargs):
        ids = torch.full((_n_samples, 256), self.mask_ind, device=self.device)
        for step in range(gen_steps):
            ids = nnet(ids, **kwargs, scale=manual_cfg[step]).argmax(-1)
        lengths = [len(manual_ratios), len(manual_temp), len(manual_samp_temp), len(manual_cfg)]
        record = dict(RECORD, steps=gen_steps, lengths=lengths)
        with open(os.environ["STAND_IN_RECORD"], "w") as f:
            json.dump(record, f)
        return decode_fn(ids)
'''



def autonat_tiny(grid: int = 16) -> list[str]:
    return ["--arch", "autonat-tiny", "--arch_overrides", json.dumps(UVIT_ARCH), "--codebook_size", "12", "--grid_size",
            str(grid), "--num_classes", "1000", "--batch", "2", "--steps", "3", "--warmup", "0", "--repeats", "1",
            "--matmul_size", "64", "--device", "cpu", "--cases", "sampling"]  # fmt: skip


def stand_in_improvednat(root: Path) -> Path:
    files = [("libs/__init__.py", ""), ("libs/nat_model.py", STAND_IN_UVIT),
             ("libs/nat_misc.py", STAND_IN_AUTONAT_SCHEDULE), ("timm/__init__.py", ""),
             ("timm/models/__init__.py", ""), ("timm/models/vision_transformer.py", STAND_IN_TIMM)]  # fmt: skip
    for path, text in files:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_the_official_autonat_loop_runs_beside_ours_at_the_same_size(capsys, tmp_path, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    clone = stand_in_improvednat(tmp_path / "ImprovedNAT")
    ours, official = run(capsys, *autonat_tiny(), "--official_autonat", str(clone))
    assert (ours["arch"], official["arch"]) == ("autonat-tiny", "official:autonat-tiny")
    assert official["skipped"] is None and official["images_per_s"] > 0 and official["official_attention"] == "plain"
    assert official["gflops_per_image"] == ours["gflops_per_image"]
    seen = json.loads(record.read_text())
    contexts = seen.pop("contexts")
    assert seen == dict(img_size=16, embed_dim=UVIT_ARCH["width"], depth=UVIT_ARCH["num_layers"] - 1,
                        num_heads=UVIT_ARCH["num_heads"], mlp_ratio=4.0, qkv_bias=False, skip=True, codebook_size=12,
                        num_classes=1001, steps=3, lengths=[2, 2, 3, 3])  # fmt: skip
    # every step: the batch's classes, then the null class (1000) for the unguided branch, as its evaluation guides
    assert contexts[-6:] == [[0, 1], [1000, 1000]] * 3


def test_the_official_autonat_loop_is_offered_for_16x16_uvits_only(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_RECORD", str(tmp_path / "record.json"))
    clone = stand_in_improvednat(tmp_path / "ImprovedNAT")
    rows = run(capsys, "--arch", "enat-tiny", *TINY, "--official_autonat", str(clone))
    assert [r["arch"] for r in rows] == ["enat-tiny"]
    _, official = run(capsys, *autonat_tiny(grid=4), "--official_autonat", str(clone))
    assert official["skipped"] == "the official AutoNAT generate is fixed at a 16 x 16 grid"
    with pytest.raises(UsageError, match=r"--official_autonat .*: no libs/nat_model.py there; give a clone of Leap"):
        main(["benchmark", *autonat_tiny(), "--official_autonat", str(tmp_path)])
