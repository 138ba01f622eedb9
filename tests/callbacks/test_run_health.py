"""RunHealth: validation loss and accuracy per mask-ratio bucket, codebook usage of predictions and samples against
the data's, sample diversity, a collapse warning (log and progress bar) and health.png."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from PIL import Image

from lit_nat.callbacks.run_health import RunHealth, bucket_ratios, fixed_mask, perplexity, sample_health
from lit_nat.commands.cli import main
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.data import TokenShardDataModule, read_metadata, write_metadata
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer
from tests.conftest import write_random_shards
from tests.helpers.tiny import UVIT_ONE_BLOCK_ARCH


def test_the_buckets_masks_and_perplexity():
    assert bucket_ratios(5) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    generator = torch.Generator().manual_seed(0)
    assert fixed_mask(3, 16, 0.5, generator).sum(1).tolist() == [8, 8, 8]
    assert fixed_mask(2, 16, 0.01, generator).sum(1).tolist() == [1, 1]  # at least one masked, one visible
    assert perplexity(torch.ones(12)) == pytest.approx(12.0) and perplexity(torch.tensor([5, 0, 0])) == 1.0


def test_sample_health_on_hand_made_token_maps():
    blank = torch.zeros(4, 10, dtype=torch.long)
    blank[0, :1] = 3  # 9 of 10 tokens are code 0: still one colour at 0.9
    blank[1, :2] = 5  # 8 of 10: not
    health = sample_health(blank, codebook_size=8, one_colour=0.9)
    assert health["sample_one_colour"] == 0.75 and health["sample_distinct"] == 0.75  # rows 2 and 3 are the same
    assert health["sample_codes_used"] == 3 / 8 and 1 < health["sample_perplexity"] < 3
    varied = torch.arange(40).reshape(4, 10) % 8
    assert sample_health(varied, 8) == {"sample_codes_used": 1.0, "sample_perplexity": pytest.approx(8.0),
                                        "sample_distinct": 1.0, "sample_one_colour": 0.0}  # fmt: skip
    assert sample_health(torch.ones(4, 10, dtype=torch.long), 8)["sample_distinct"] == 0.25


def validate(root: Path, health: RunHealth, module: NATModule, log_dir: Path | None = None) -> dict[str, float]:
    data = TokenShardDataModule(root=str(root), batch_size=4, num_workers=0)
    trainer = NATTrainer(logger=False, enable_progress_bar=False, callbacks=[health], accelerator="cpu",
                         default_root_dir=str(log_dir or root))  # fmt: skip
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("health/")}


@pytest.fixture
def root(tmp_path) -> Path:
    return write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)


def tiny_module() -> NATModule:
    torch.manual_seed(0)
    return NATModule(arch="autonat-tiny", arch_overrides=UVIT_ONE_BLOCK_ARCH, codebook_size=12, grid_size=4,
                     num_classes=3)  # fmt: skip


def test_every_bucket_is_scored_the_same_way_at_every_validation(root):
    module = tiny_module()
    first, again = validate(root, RunHealth(buckets=3), module), validate(root, RunHealth(buckets=3), module)
    assert first == again  # fixed masks: validations compare
    for r in ("0.2", "0.5", "0.8"):
        assert first[f"health/loss_r{r}"] > 0 and 0 <= first[f"health/acc_r{r}"] <= 1
    assert 0 < first["health/codes_used"] <= 1 and first["health/data_codes_used"] == 1.0  # random data: all 12


def test_a_fall_to_one_code_is_called_collapsing_but_a_fresh_model_is_not(root):
    module, health = tiny_module(), RunHealth(collapse_share=0.5)  # (an untrained tiny model peaks at 4 codes)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="RunHealth")  # the first validation sets the peaks: no warning
        healthy = validate(root, health, module)
    assert healthy["health/alarm"] == 0.0 and healthy["health/sample_distinct"] == 1.0
    with torch.no_grad():  # then every prediction becomes code 0
        module.ema_backbone.head.bias.fill_(-1e4)
        module.ema_backbone.head.bias[0] = 1e4
    with pytest.warns(UserWarning) as caught:
        metrics = validate(root, health, module)
    said = [str(w.message) for w in caught if "RunHealth" in str(w.message)]
    assert said == [
        "RunHealth: health/codes_used 0.083 at step 0: the predictions use 1 codes where the data uses 12 (collapse?)",
        f"RunHealth: health/sample_codes_used 0.083 at step 0: the samples use 1 codes where the data uses 12 "
        f"(collapse?)",
        "RunHealth: health/sample_distinct 0.062 at step 0: all 16 samples are the same token map (collapse?)",
        "RunHealth: health/sample_one_colour 1.000 at step 0: 16 of 16 samples are one colour (one code on >= 90% "
        "of the tokens) (collapse?)",
    ]  # fmt: skip
    assert metrics["health/perplexity"] == 1.0 < healthy["health/perplexity"] and metrics["health/alarm"] == 1.0
    assert RunHealth().state_dict() == {"peak_codes_used": 0.0, "best": {}, "history": []}
    assert health.state_dict()["peak_codes_used"] > 1 and [h["alarm"] for h in health.history] == [1.0]


def test_a_model_collapsed_from_the_start_is_not_called_a_fall(root):
    """An untrained model whose samples are one code from the first validation never had the health to lose."""
    module = tiny_module()
    with torch.no_grad():
        module.ema_backbone.head.bias.fill_(-1e4)
        module.ema_backbone.head.bias[0] = 1e4
    health = RunHealth()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="RunHealth")
        assert validate(root, health, module)["health/alarm"] == 0.0
        assert validate(root, health, module)["health/sample_one_colour"] == 1.0


def test_the_alarm_is_on_the_progress_bar_and_the_picture_in_the_log_folder(tmp_path, root):
    module, health = tiny_module(), RunHealth(samples=4, buckets=2)
    data = TokenShardDataModule(root=str(root), batch_size=4, num_workers=0)
    run = tmp_path / "run"
    trainer = NATTrainer(logger=False, callbacks=[health], accelerator="cpu", default_root_dir=str(run))
    trainer.validate(module, datamodule=data, verbose=False)
    on_bar = {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("health/")}
    assert on_bar == {"health/alarm": 0.0}  # the only health metric on the bar
    with Image.open(run / "health.png") as picture:  # a whole PNG (written through a temporary file)
        picture.load()
        assert picture.size[0] > 400
    assert sorted(p.name for p in run.iterdir()) == ["health.png"]  # no temporary file left


def test_the_data_usage_comes_from_meta_json_when_recorded(tmp_path, root):
    meta = read_metadata(root)
    recorded = {"codes_used": 0.5, "perplexity": 5.5, "tokens": 123}
    write_metadata(root, meta.with_split("val", meta.splits["val"], recorded))
    metrics = validate(root, RunHealth(samples=0), tiny_module(), tmp_path)
    assert metrics["health/data_codes_used"] == 0.5 and metrics["health/data_perplexity"] == 5.5
    assert "health/sample_distinct" not in metrics  # samples: 0 generates none


def test_the_health_metrics_change_no_training_draw(tmp_path, root):
    """A fit with the callback ends with the same weights as one without it (its masks use their own generator)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "enable_progress_bar": False, "max_steps": 4, "val_check_interval": 2,
                    "limit_val_batches": 1},
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ONE_BLOCK_ARCH, "schedule_params": {"steps": 2}},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
    }))  # fmt: skip
    for name, enabled in (("on", "true"), ("off", "false")):
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / name}",
              f"--run_health.enabled={enabled}"])  # fmt: skip
    on, off = (read_checkpoint(next((tmp_path / n).rglob("*.ckpt")))["state_dict"] for n in ("on", "off"))
    assert all(torch.equal(on[k], off[k]) for k in on)


def test_a_resumed_fit_is_bit_identical_and_continues_the_curves(tmp_path, root):
    """Generating samples and drawing health.png change no training draw across a resume, and the curves resume."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"logger": False, "enable_progress_bar": False, "max_steps": 4, "val_check_interval": 2,
                    "limit_val_batches": 1, "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                           "init_args": {"save_last": True}}]},
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ONE_BLOCK_ARCH, "schedule_params": {"steps": 2}},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
        "run_health": {"samples": 4, "buckets": 2},
    }))  # fmt: skip
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'whole'}"])
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'cut'}", "--trainer.max_steps=2"])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'cut'}", f"--ckpt_path={last}"])
    whole, cut = (read_checkpoint(tmp_path / n / "checkpoints" / "last.ckpt") for n in ("whole", "cut"))
    assert all(torch.equal(whole["state_dict"][k], cut["state_dict"][k]) for k in whole["state_dict"])
    states = [next(v for k, v in c["callbacks"].items() if k.startswith("RunHealth")) for c in (whole, cut)]
    assert [h["step"] for h in states[1]["history"]] == [2, 4] and states[0] == states[1]
    assert (tmp_path / "cut" / "health.png").is_file()


def test_a_text_model_samples_from_the_validation_captions(tmp_path):
    words = {"name": "words", "vocab": ["a", "red", "bus", "cat", "digit", "seven"], "dim": 16, "max_length": 6}
    root = write_random_shards(tmp_path / "text", codebook_size=12, grid=4, num_classes=3, text_encoder=words)
    torch.manual_seed(0)
    module = NATModule(arch="autonat-tiny", arch_overrides=UVIT_ONE_BLOCK_ARCH, codebook_size=12, grid_size=4,
                       num_classes=3, text_encoder=words)  # fmt: skip
    metrics = validate(root, RunHealth(samples=5, buckets=1), module, tmp_path / "run")
    assert metrics["health/sample_distinct"] == 1.0 and 0 < metrics["health/sample_codes_used"] <= 1
