"""Shared fixtures and hooks: tiny token shards in any token space, written with the project's one ShardWriter.

Shared helpers live in ``tests/helpers/`` (no test file imports another): tiny model configurations and builders in
``tiny.py``, official-layout reference implementations in ``official.py``, fixture data in ``data.py`` and
``schedules.py``, assertions, probes and test tokenizers beside them.

Markers (declared in pyproject.toml):

* ``slow``: runs a real CLI job or subprocess for more than a few seconds. The default test command
  (``bash scripts/test.sh``, and CI) still runs these tests; the marker is for a fast local loop,
  ``pytest -m "not slow"``.
* ``gpu``: needs a CUDA device; skipped here when ``torch.cuda.is_available()`` is False.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import settings

from lit_nat.data.shards import ShardWriter
from tests.helpers.tiny import UVIT_ONE_BLOCK_ARCH

#: property-based tests (hypothesis): on CI the same examples every run (a landing must not hinge on a lucky draw;
#: a new counter-example is found locally, where the draws vary); no example database in the clone
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
#: the shipped configs that train (every one is fitted a few steps by tests/commands/test_cli.py);
#: configs/amused_cc3m.yaml trains nothing by default (a search/validate config for an imported aMUSEd) and runs in
#: tests/models/test_amused.py
FIT_CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c.stem != "amused_cc3m")
#: the paper configs (ImageNet, COCO, CC3M): FID in validation and the schedule search, fitted with both by
#: tests/commands/test_paper_configs.py; the others (the digits demos) by tests/commands/test_cli.py
PAPER_CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if "digits" not in c.stem)


def write_random_shards(
    root: Path,
    codebook_size: int,
    grid: int,
    num_classes: int,
    sizes: dict[str, int] | None = None,
    samples_per_shard: int = 16,
    seed: int = 0,
    text_encoder: dict | None = None,
    tokenizer: dict | None = None,
) -> Path:
    """Token shards (train/val) in the given token space: token i = (i + label) mod K, 20% replaced at random, so a
    model can learn them and a test can see the loss fall. With ``text_encoder``, every sample also has two captions
    naming its label, and ``meta.json`` names that encoder. ``tokenizer``: the config ``meta.json`` records (default:
    a pixel tokenizer of the grid)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 64, "val": 16}
    tokenizer = tokenizer or {"name": "pixel", "levels": codebook_size, "image_size": grid, "channels": 1}
    for split, count in sizes.items():
        with ShardWriter(
            root,
            split,
            codebook_size=codebook_size,
            grid_size=(grid, grid),
            num_classes=num_classes,
            tokenizer_config=tokenizer,
            samples_per_shard=samples_per_shard,
            text_encoder=text_encoder,
        ) as writer:
            for i in range(count):
                label = int(rng.integers(num_classes))
                tokens = (np.arange(grid * grid) + label) % codebook_size
                noisy = rng.random(grid * grid) < 0.2
                tokens[noisy] = rng.integers(0, codebook_size, int(noisy.sum()))
                captions = [f"a picture of {label}", f"number {label}"] if text_encoder else None
                writer.write(tokens.astype(np.int64), label, captions=captions)
    return root


def fit_tiny_checkpoint(tmp_path: Path, root: Path, steps: int, callbacks: list | None = None) -> tuple[Path, Path]:
    """A tiny U-ViT config over the shards at ``root`` (a ``steps``-step schedule, optional trainer callbacks) and the
    checkpoint of one training step: ``(config, checkpoint)``."""
    from lit_nat.commands.cli import main

    trainer = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")}  # fmt: skip
    if callbacks:
        trainer["callbacks"] = callbacks
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": trainer,
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ONE_BLOCK_ARCH,
                  "schedule_params": {"steps": steps}},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
    }))  # fmt: skip
    main(["fit", f"--config={config}", "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    (ckpt,) = (tmp_path / "run").rglob("*.ckpt")
    return config, ckpt


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` without a CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _restore_torch_state():
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def tiny_shards(tmp_path: Path) -> Path:
    """Shards with 12 codes on a 4x4 grid and 3 classes."""
    return write_random_shards(tmp_path / "tiny", codebook_size=12, grid=4, num_classes=3)


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    """LightningCLI warns when sys.argv (pytest's) and args= are both given; tests pass args= only."""
    monkeypatch.setattr("sys.argv", ["lit_nat"])
