"""Fine-tuning (``fit --model.init_from``): a new run from another checkpoint's weights, with the class count or the
token grid adapted by a stated rule, and everything else refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError
from lit_nat.training.init_from import interpolate_positions
from tests.conftest import write_random_shards
from tests.helpers.official import random_official_autonat_state_dict

H = 4  # the official-layout test weights' attention heads


def config_for(tmp_path: Path, name: str, root: Path, init_from: Path | None, **model) -> Path:
    """A fit config of the official-layout AutoNAT (width and depth from the weights) over ``root``."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path / name),
                    "max_steps": 2, "limit_val_batches": 0},
        "model": {"arch": "autonat-s", "arch_overrides": {"num_heads": H, "width": 32, "num_layers": 5},
                  "schedule_params": {"steps": 4}, "warmup_steps": 1, **({"init_from": str(init_from)} if init_from
                  else {}), **model},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
    }))  # fmt: skip
    return config


@pytest.fixture
def imported(tmp_path) -> Path:
    """Random official-layout AutoNAT weights (16 codes, 4x4 grid, 10 classes) imported as a lit_nat checkpoint."""
    src = tmp_path / "nnet_ema.pth"
    torch.save(random_official_autonat_state_dict(seed=5), src)
    root = write_random_shards(tmp_path / "shards10", codebook_size=16, grid=4, num_classes=10)
    dst = tmp_path / "imported.ckpt"
    main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--dst", str(dst),
          "--model_config", str(config_for(tmp_path, "import", root, None))])  # fmt: skip
    return dst


def test_fine_tuning_an_imported_checkpoint_on_data_of_another_class_count(imported, tmp_path, caplog):
    root = write_random_shards(tmp_path / "shards3", codebook_size=16, grid=4, num_classes=3)
    config = config_for(tmp_path, "tune", root, imported)
    with caplog.at_level("INFO"):
        main(["fit", "--config", str(config)])
    assert "new class embedding (10 -> 3 classes; the null row kept)" in caplog.text
    (ckpt,) = (tmp_path / "tune").rglob("*.ckpt")
    tuned, source = read_checkpoint(ckpt), read_checkpoint(imported)
    assert tuned["global_step"] == 2 and tuned["hyper_parameters"]["init_from"] == str(imported)
    for name, value in source["state_dict"].items():
        if "class_embed.word" in name:  # 3 classes + null; the null row came from the checkpoint
            assert tuned["state_dict"][name].shape[0] == 4
        elif name.startswith("ema_backbone.") and "block" in name:  # two EMA steps of decay 0.9999 stay close
            torch.testing.assert_close(tuned["state_dict"][name], value, atol=1e-3, rtol=0)
    model = load_model(str(ckpt))  # the fine-tuned checkpoint stands alone: init_from is not read again
    assert model.hparams.num_classes == 3 and model.generate(torch.tensor([0, 3]), seed=0).ids.shape == (2, 16)


def test_a_fine_tuned_run_starts_at_step_zero_with_the_checkpoints_weights(imported, tmp_path):
    root = write_random_shards(tmp_path / "shards10b", codebook_size=16, grid=4, num_classes=10)
    config = config_for(tmp_path, "same", root, imported, lr=0.0)  # lr 0: the weights stay the checkpoint's
    main(["fit", "--config", str(config)])
    (ckpt,) = (tmp_path / "same").rglob("*.ckpt")
    tuned, source = read_checkpoint(ckpt), read_checkpoint(imported)
    assert tuned["global_step"] == 2 and tuned["optimizer_states"][0]["state"]  # a fresh optimizer took 2 steps
    for name, value in source["state_dict"].items():
        assert torch.equal(tuned["state_dict"][name], value), name


def test_another_codebook_or_condition_is_refused_in_one_line(imported, tmp_path):
    root = write_random_shards(tmp_path / "shards12", codebook_size=12, grid=4, num_classes=10)
    with pytest.raises(CheckpointError, match=r"token_embed.word.weight has shape \(17, 32\) but the config's model "
                                              r"needs \(13, 32\)"):  # fmt: skip
        main(["fit", "--config", str(config_for(tmp_path, "codes", root, imported))])
    root = write_random_shards(tmp_path / "shards10c", codebook_size=16, grid=4, num_classes=10)
    bad = config_for(tmp_path, "deeper", root, imported, arch_overrides={"num_heads": H, "width": 32, "num_layers": 7})
    with pytest.raises(CheckpointError, match="does not fit the config's"):
        main(["fit", "--config", str(bad)])


def test_position_embeddings_are_interpolated_to_a_larger_grid():
    positions = torch.arange(4.0).repeat_interleave(3).reshape(4, 3)  # a 2x2 grid, 3 channels
    larger = interpolate_positions(positions, (2, 2), (4, 4))
    assert larger.shape == (16, 3)
    torch.testing.assert_close(interpolate_positions(positions, (2, 2), (2, 2)), positions)
    assert larger[0, 0] < larger[15, 0]  # the order over the grid survives


def test_a_fine_tuned_run_resumes_from_its_own_checkpoint_without_the_original(imported, tmp_path):
    root = write_random_shards(tmp_path / "shards3b", codebook_size=16, grid=4, num_classes=3)
    config = config_for(tmp_path, "resumed", root, imported)
    main(["fit", "--config", str(config)])
    (ckpt,) = (tmp_path / "resumed").rglob("*.ckpt")
    imported.unlink()  # the run's own checkpoint is all a resume needs
    main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)])
    (last,) = [p for p in (tmp_path / "resumed").rglob("*.ckpt") if p != ckpt] or [ckpt]
    assert read_checkpoint(last)["global_step"] == 3


WORDS = {"name": "words", "vocab": ["a", "picture", "of", "number", *map(str, range(10))], "dim": 8, "max_length": 4}


def test_a_class_checkpoint_fine_tunes_onto_text_with_a_new_condition_input(imported, tmp_path, caplog):
    root = write_random_shards(tmp_path / "text", codebook_size=16, grid=4, num_classes=10, text_encoder=WORDS)
    config = config_for(tmp_path, "text", root, imported, lr=0.0)  # lr 0: what was loaded stays as loaded
    with caplog.at_level("INFO"):
        main(["fit", "--config", str(config)])
    assert "condition changed (class labels -> text (words" in caplog.text
    assert "the condition input (context_embed) starts afresh, the rest loaded" in caplog.text
    (ckpt,) = (tmp_path / "text").rglob("*.ckpt")
    tuned, source = read_checkpoint(ckpt)["state_dict"], read_checkpoint(imported)["state_dict"]
    assert any(k.startswith("backbone.context_embed.") for k in tuned)
    for name, value in source.items():  # every tensor of the class model carried over, the class table too
        assert torch.equal(tuned[name], value), name
    text_input = [k for k in tuned if ".context_embed." in k]
    for name in text_input:  # online and EMA start from the same fresh projection
        if name.startswith("backbone."):
            assert torch.equal(tuned[name], tuned["ema_" + name]), name
    # and back: the text model onto class labels drops the text input and loads everything else
    back = config_for(tmp_path, "back", write_random_shards(tmp_path / "cls", codebook_size=16, grid=4, num_classes=10),
                      ckpt, lr=0.0)  # fmt: skip
    with caplog.at_level("INFO"):
        main(["fit", "--config", str(back)])
    assert "-> class labels): the condition input (context_embed) is dropped" in caplog.text
