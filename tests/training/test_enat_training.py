"""ENAT in the LightningModule and the CLI: reuse training, configuration errors, official-checkpoint import."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.data import TokenShardDataModule
from lit_nat.training.module import NATModule
from tests.conftest import write_random_shards
from tests.helpers.official import random_official_enat_state_dict, reference_enat
from tests.helpers.tiny import DEC, ENAT_MODULE, ENC, C, H, K, N


def test_reuse_training_trains_prev_proj_from_ema_features(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = NATModule(**ENAT_MODULE, reuse_prob=1.0, warmup_steps=0, lr=1e-2)
    prev_proj = {k: v.clone() for k, v in model.backbone.prev_proj.state_dict().items()}
    seen = []
    original = model.previous_step_state

    def spy(*args, **kwargs):
        state = original(*args, **kwargs)
        seen.append(state)
        return state

    model.previous_step_state = spy
    data = TokenShardDataModule(str(tiny_shards), batch_size=8, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert len(seen) == 3 and trainer.callback_metrics["train/reuse"] == 1.0
    for state in seen:
        assert not state.features.requires_grad  # the previous step never receives gradient
        assert state.num_masked >= 1
    changed = [not torch.equal(v, model.backbone.prev_proj.state_dict()[k]) for k, v in prev_proj.items()]
    assert all(changed), "prev_proj is only used on reuse steps, and every step reused"


def test_enat_configuration_errors():
    with pytest.raises(ValueError, match="mask_ratio_per_sample: false"):
        NATModule(**{**ENAT_MODULE, "mask_ratio_per_sample": True})
    with pytest.raises(ValueError, match="has no feature reuse"):
        NATModule(arch="autonat-tiny", codebook_size=12, grid_size=4, num_classes=3, reuse_prob=0.5)
    with pytest.raises(ValueError, match=r"reuse_prob must be in \[0, 1\]"):
        NATModule(**ENAT_MODULE, reuse_prob=2.0)


def test_generation_with_enat_module():
    model = NATModule(**ENAT_MODULE, schedule="enat", schedule_params={"steps": 4})
    first = model.generate(torch.tensor([0, 1, 2]), seed=1).ids
    assert first.shape == (3, 16) and torch.all(first < 12)
    assert torch.equal(first, model.generate(torch.tensor([0, 1, 2]), seed=1).ids)


def test_import_official_enat_checkpoint_through_the_cli(tmp_path):
    official = random_official_enat_state_dict(seed=2)
    assert any(key.startswith("prev_embedder.") for key in official)  # the dead module is in official files
    src = tmp_path / "nnet_ema.pth"
    torch.save({f"module.{k}": v for k, v in official.items()}, src)
    root = write_random_shards(tmp_path / "shards", codebook_size=K, grid=4, num_classes=C)
    config = tmp_path / "enat_tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"logger": False, "enable_checkpointing": False},
                "model": {
                    "arch": "enat-s",
                    "arch_overrides": {"num_heads": H, "decoder_layers": DEC},
                    "mask_ratio_per_sample": False,
                    "min_visible_tokens": 1,
                    "reuse_prob": 0.5,
                    "schedule": "enat",
                    "schedule_params": {"steps": 4},
                },
                "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
            }
        )
    )
    dst = tmp_path / "enat.ckpt"
    main(["import-checkpoint", "--format", "enat", "--src", str(src), "--model_config", str(config), "--dst", str(dst)])
    model = load_model(str(dst))
    assert model.backbone.encoder_layers == ENC and model.backbone.decoder_layers == DEC
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, K, (3, N), generator=g)
    masked = torch.rand(3, N, generator=g).argsort(1)[:, :9]
    ids = ids.scatter(1, masked, K)  # 9 masked tokens in every row
    labels = torch.tensor([0, 3, C])
    with torch.no_grad():
        ours, _ = model.backbone(ids, labels, num_masked=9)
        reference, _ = reference_enat(official, ids, labels, num_heads=H, encoder_layers=ENC)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    main(
        [
            "validate",
            f"--config={config}",
            f"--ckpt_path={dst}",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
