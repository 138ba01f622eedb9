"""RunHealth: validation loss and accuracy per mask-ratio bucket, codebook usage, and a collapse warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lit_nat.callbacks.run_health import RunHealth, bucket_ratios, fixed_mask, perplexity
from lit_nat.commands.cli import main
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.data import TokenShardDataModule
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


def validate(root: Path, health: RunHealth, module: NATModule) -> dict[str, float]:
    data = TokenShardDataModule(root=str(root), batch_size=4, num_workers=0)
    trainer = NATTrainer(logger=False, enable_progress_bar=False, callbacks=[health], accelerator="cpu")
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
        warnings.filterwarnings("error", message="RunHealth")  # the first validation sets the peak: no warning
        healthy = validate(root, health, module)
    with torch.no_grad():  # then every prediction becomes code 0
        module.ema_backbone.head.bias.fill_(-1e4)
        module.ema_backbone.head.bias[0] = 1e4
    with pytest.warns(UserWarning, match=r"health/codes_used 0.083 at step 0: the predictions use 1 codes where "
                                         r"the data uses 12"):  # fmt: skip
        metrics = validate(root, health, module)
    assert metrics["health/perplexity"] == 1.0 < healthy["health/perplexity"]
    assert RunHealth().state_dict() == {"peak_codes_used": 0.0} and health.state_dict()["peak_codes_used"] > 1


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
