"""The fit console's one line about the model (in place of Lightning's per-layer table)."""

import logging

from lit_nat.callbacks.model_size import ModelSize
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer
from tests.helpers.tiny import UVIT_MODULE


def test_the_model_line_counts_the_backbone_and_its_ema_copy_and_names_the_token_grid(caplog):
    module = NATModule(**UVIT_MODULE)
    backbone = sum(p.numel() for p in module.backbone.parameters())
    with caplog.at_level(logging.INFO):
        ModelSize().on_fit_start(None, module)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model: "))
    grid = module.hparams.grid_size
    side = "x".join(map(str, grid)) if isinstance(grid, (list, tuple)) else f"{grid}x{grid}"
    assert f"{backbone / 1e6:.1f}M parameters" in line and f"EMA copy {backbone / 1e6:.1f}M" in line
    assert f"tokens {side} of {module.hparams.codebook_size} codes" in line


def test_the_trainer_prints_the_line_unless_the_table_is_asked_for():
    assert any(isinstance(c, ModelSize) for c in NATTrainer(logger=False).callbacks)
    table = NATTrainer(logger=False, enable_model_summary=True)
    assert not any(isinstance(c, ModelSize) for c in table.callbacks)
