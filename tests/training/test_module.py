"""The LightningModule glue: training step, EMA, optimiser schedule, checkpoints carrying the schedule, sampling."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_nat import load_model
from lit_nat.data import TokenShardDataModule
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.training.ema import ema_decay_at
from lit_nat.training.module import NATModule
from tests.helpers.tiny import UVIT_MODULE, tiny_trainer


def tiny_module(**kwargs) -> NATModule:
    return NATModule(**{**UVIT_MODULE, **kwargs})


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return tiny_trainer(tmp_path, **{"max_steps": 4, **kwargs})


def test_training_step_logs_and_learns(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = tiny_module(lr=3e-3, warmup_steps=0, p_uncond=0.0)
    data = TokenShardDataModule(str(tiny_shards), batch_size=16, num_workers=0)
    fit = trainer(tmp_path, max_steps=40)
    fit.fit(model, datamodule=data)
    metrics = fit.callback_metrics
    for key in ("train/loss", "train/masked_acc", "train/mask_ratio", "train/lr"):
        assert key in metrics
    # the realised mask ratio follows Beta(12, 3) (mean 0.8)
    assert 0.6 < metrics["train/mask_ratio"].item() < 0.95
    assert metrics["train/loss"].item() < torch.log(torch.tensor(12.0)).item()  # better than uniform guessing


def test_ema_follows_its_formula_once_per_optimizer_step(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = tiny_module(ema_decay=0.5, warmup_steps=0)
    data = TokenShardDataModule(str(tiny_shards), batch_size=8, num_workers=0)
    online0 = [p.detach().clone() for p in model.backbone.parameters()]
    ema0 = [p.detach().clone() for p in model.ema_backbone.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online0, ema0))  # EMA starts at the initial weights
    # two micro-batches per optimiser step: the EMA must move once, after the step
    trainer(tmp_path, max_steps=1, accumulate_grad_batches=2).fit(model, datamodule=data)
    online1 = [p.detach() for p in model.backbone.parameters()]
    expected = [0.5 * e + 0.5 * o for e, o in zip(ema0, online1)]
    assert all(torch.allclose(e, p) for e, p in zip(expected, model.ema_backbone.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(online0, online1))


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.9999, warmup=False) == 0.9999
    assert ema_decay_at(0, 0.9999, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(10**7, 0.9999, warmup=True) == 0.9999


def test_warmup_then_constant_learning_rate():
    model = tiny_module(lr=1.0, warmup_steps=4)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    # the EMA copy is not optimised
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.ema_backbone.parameters())


def test_per_batch_ratio_and_min_visible():
    model = tiny_module(
        mask_ratio_per_sample=False, min_visible_tokens=1, mask_ratio_law="fixed", mask_ratio_params={"ratio": 1.0}
    )
    batch = {"ids": torch.randint(0, 12, (5, 16)), "label": torch.zeros(5, dtype=torch.long)}
    inputs, targets, mask = model.masked_batch(batch)
    assert mask.sum(1).tolist() == [15] * 5  # one token always stays visible
    assert torch.all(inputs[mask] == model.mask_id)


def test_bad_batch_shape_is_named():
    model = tiny_module()
    with pytest.raises(ValueError, match=r"expected \(B, 16\)"):
        model.training_step({"ids": torch.zeros(2, 9, dtype=torch.long), "label": torch.zeros(2).long()}, 0)


def test_checkpoint_carries_schedule_and_load_model_uses_ema(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = tiny_module(schedule="enat", schedule_params={"steps": 4})
    data = TokenShardDataModule(str(tiny_shards), batch_size=8, num_workers=0)
    fit = trainer(tmp_path, max_steps=2)
    fit.fit(model, datamodule=data)
    searched = GenerationSchedule([0.7, 0.3, 0.0], [1.0, 0.9, 0.5], [2.0, 1.0, 0.0], [0.0, 1.0, 2.0], name="s")
    model.set_schedule(searched)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)

    loaded = load_model(str(path))
    assert not loaded.training
    assert loaded.schedule == searched
    for ema, backbone in zip(model.ema_backbone.state_dict().values(), loaded.backbone.state_dict().values()):
        assert torch.equal(ema, backbone)
    assert any(not torch.equal(a, b) for a, b in zip(model.backbone.parameters(), loaded.backbone.parameters()))
    # same seed, same samples, from the loaded EMA weights
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(loaded.generate(labels, seed=3).ids, model.generate(labels, seed=3).ids)

    # validate --ckpt_path: the checkpoint's schedule wins unless schedule_source=config asks for the config's
    checkpoint = torch.load(path, weights_only=False)
    for source, expected in (("checkpoint", searched), ("config", GenerationSchedule.heuristic(steps=6))):
        other = tiny_module(schedule="heuristic", schedule_params={"steps": 6}, schedule_source=source)
        other.on_load_checkpoint(checkpoint)
        assert other.schedule == expected
    with pytest.raises(ValueError, match="schedule_source must be 'checkpoint' or 'config', got 'yaml'"):
        tiny_module(schedule_source="yaml")


def test_generate_and_decode():
    model = tiny_module(schedule="heuristic", schedule_params={"steps": 4})
    out = model.generate(torch.tensor([0, 2]), seed=0, return_history=True)
    assert out.ids.shape == (2, 16) and len(out.history) == 4
    images = model.decode(out.ids)
    assert images.shape == (2, 1, 4, 4) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="labels must be in"):
        model.generate(torch.tensor([7]))
    with pytest.raises(ValueError, match="steps but there are only 16 tokens"):
        model.set_schedule(GenerationSchedule.heuristic(20))


def test_sample_grid_skips_an_unavailable_tokenizer(tmp_path):
    from lit_nat.callbacks import SampleGrid

    model = tiny_module(tokenizer={"name": "vqgan-not-here"})
    fit = trainer(tmp_path)
    with pytest.warns(UserWarning, match="cannot build the tokenizer"):
        SampleGrid().on_fit_end(fit, model)
    assert not list(tmp_path.rglob("*.png"))
    grid = SampleGrid(samples_per_class=2, max_classes=3, upscale=2).grid(tiny_module())
    assert grid.shape[0] == 3 and grid.shape[1] == 3 * 8 + 4 * 2  # 3 rows of 8-pixel images, 2-pixel padding


def test_tokenizer_is_not_part_of_the_checkpointed_state():
    model = tiny_module()
    keys = set(model.state_dict())
    assert model.tokenizer is not None  # built on first use
    assert set(model.state_dict()) == keys
    assert not any(key.startswith("_tokenizer") for key in keys)
