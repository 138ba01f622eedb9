"""The command line: every demo config runs at tiny size on CPU (the paper configs:
tests/commands/test_paper_configs.py); import-checkpoint; Trainer subcommands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from lit_nat.training.module import NATModule
from tests.conftest import FIT_CONFIGS, PAPER_CONFIGS, write_random_shards
from tests.helpers.official import random_official_autonat_state_dict, reference_autonat, tiny_autonat_inputs
from tests.helpers.paper import cpu_overrides, shards_for
from tests.helpers.tiny import H

REPO = Path(__file__).resolve().parents[2]


#: the digits demos; the paper configs fit with FID and the schedule search in tests/commands/test_paper_configs.py
DEMO_CONFIGS = [c for c in FIT_CONFIGS if c not in PAPER_CONFIGS]


@pytest.mark.slow
@pytest.mark.parametrize("config", DEMO_CONFIGS, ids=[c.stem for c in DEMO_CONFIGS])
def test_every_demo_config_fits_a_few_steps_on_cpu(config, tmp_path):
    root = shards_for(config, tmp_path)
    arch = yaml.safe_load(config.read_text())["model"]["arch"]
    args = [
        "fit",
        f"--config={config}",
        *cpu_overrides(tmp_path, arch=arch),
        f"--data.root={root}",
        "--data.samples_per_epoch=16",
        "--trainer.val_check_interval=2",
        "--trainer.check_val_every_n_epoch=null",
    ]
    main(args)
    assert list((tmp_path / "run").rglob("config.yaml")), "the CLI saves the resolved config into the run"
    assert list((tmp_path / "run").rglob("samples.png")), "SampleGrid writes the grid (a row per class or prompt)"
    assert list((tmp_path / "run").rglob("events.out.tfevents.*")), "TensorBoard logs"


def test_print_config_of_the_flagship_needs_no_data(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/autonat_l.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["arch"] == "autonat-l"
    assert printed["data"]["root"] == "data/imagenet256_vqgan"


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        main(
            [
                "fit",
                f"--config={REPO / 'configs/autonat_s.yaml'}",
                *cpu_overrides(tmp_path),
                f"--data.root={tmp_path / 'nowhere'}",
            ]
        )


# ---------------------------------------------------------------------------------------------- import-checkpoint
@pytest.fixture
def official_setup(tmp_path):
    """A random state_dict in the official AutoNAT layout (16 codes, 4x4 grid, 10 classes, width 32, 5 layers, 4
    heads) saved like nnet_ema.pth, shards in the same token space, and a config naming both."""
    official = random_official_autonat_state_dict(seed=5)
    src = tmp_path / "nnet_ema.pth"
    torch.save(official, src)
    root = write_random_shards(tmp_path / "shards", codebook_size=16, grid=4, num_classes=10)
    config = tmp_path / "autonat_tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"logger": False, "enable_checkpointing": False},
                "model": {
                    "arch": "autonat-s",
                    "arch_overrides": {"num_heads": H},
                    "schedule": "heuristic",
                    "schedule_params": {"steps": 4},
                },
                "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
            }
        )
    )
    return official, src, config


def test_import_checkpoint_reproduces_the_official_forward(official_setup, tmp_path):
    official, src, config = official_setup
    dst = tmp_path / "model.ckpt"
    main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config),
          "--dst", str(dst)])
    model = load_model(str(dst))
    ids, labels = tiny_autonat_inputs()
    with torch.no_grad():
        ours, state = model.backbone(ids, labels)
    assert state is None
    torch.testing.assert_close(ours, reference_autonat(official, ids, labels, num_heads=H), atol=1e-5, rtol=1e-5)
    assert model.hparams.tokenizer["name"] == "pixel"  # taken from the data's meta.json
    # an existing checkpoint is never overwritten silently
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(
            ["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config),
             "--dst", str(dst)]
        )


def test_imported_checkpoint_is_accepted_by_trainer_subcommands(official_setup, tmp_path):
    _, src, config = official_setup
    dst = tmp_path / "model.ckpt"
    main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config),
          "--dst", str(dst)])
    common = [
        f"--config={config}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--ckpt_path={dst}",
    ]
    main(["validate", *common, "--trainer.limit_val_batches=1"])
    main(["test", *common, "--trainer.limit_test_batches=1"])
    main(["predict", *common, "--data.predict_num_samples=4"])
    main(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=1"])


def test_command_line_model_arguments_win_over_the_checkpoints(official_setup, tmp_path, monkeypatch):
    """LightningCLI would replace the model arguments by the checkpoint's hyperparameters; ours keeps the config's."""
    _, src, config = official_setup
    dst = tmp_path / "model.ckpt"
    main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config),
          "--dst", str(dst)])
    seen = []
    original = NATModule.on_load_checkpoint

    def record(self, checkpoint):
        original(self, checkpoint)
        seen.append((self.schedule_source, self.schedule.steps))

    monkeypatch.setattr(NATModule, "on_load_checkpoint", record)
    common = [f"--config={config}", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={tmp_path / 'run'}", f"--ckpt_path={dst}",
              "--trainer.limit_val_batches=1"]  # fmt: skip
    main(["validate", *common, "--model.schedule_params={steps: 3}", "--model.schedule_source=config"])
    main(["validate", *common, "--model.schedule_params={steps: 3}"])  # default: the checkpoint's schedule
    saved_steps = torch.load(dst, weights_only=False)["generation_schedule"]["mask_ratio"]
    assert seen == [("config", 3), ("checkpoint", len(saved_steps))] and len(saved_steps) != 3


def test_import_checkpoint_refuses_data_of_another_token_space(official_setup, tmp_path):
    _, src, config = official_setup
    other = write_random_shards(tmp_path / "other", codebook_size=16, grid=8, num_classes=10)
    data = yaml.safe_load(config.read_text())
    data["data"]["root"] = str(other)
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="grid_size"):
        main(
            [
                "import-checkpoint",
                "--format",
                "autonat",
                "--src",
                str(src),
                "--model_config",
                str(config),
                "--dst",
                str(tmp_path / "x.ckpt"),
            ]
        )
    assert not (tmp_path / "x.ckpt").exists()


def test_import_checkpoint_reads_the_shipped_config_section():
    from lit_nat.training.importer import read_model_section

    section = read_model_section(REPO / "configs/autonat_l.yaml")
    assert section["arch"] == "autonat-l" and "codebook_size" not in section


# ---------------------------------------------------------------------------------------------- the command table
def test_top_level_help_lists_every_command_and_version(capsys):
    from lit_nat.commands.cli import COMMANDS

    main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing and command.summary in listing for name, command in COMMANDS.items())
    main([])
    assert capsys.readouterr().out == listing
    main(["--version"])
    assert capsys.readouterr().out.startswith("lit_nat 0.1.0 (torch ")
    with pytest.raises(UsageError, match="unknown command 'sampel'; the commands are fit, validate"):
        main(["sampel"])


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "sample", "edit", "search",
                                     "import-checkpoint", "reference-stats", "flops", "autonat", "tokenize",
                                     "tokenize-verify", "merge-adapter", "evaluate", "benchmark"])  # fmt: skip
def test_every_command_has_help_and_refuses_an_unknown_option(command, capsys):
    from lit_nat.commands.cli import COMMANDS

    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    # one line, not the usage: argparse and jsonargparse errors become UsageError, printed by entry() with exit 2
    with pytest.raises(UsageError) as error:
        main([command, "--no_such_option=1"])
    message = str(error.value)  # (argparse may name missing required options first)
    assert "\n" not in message and ("no_such_option" in message or "required" in message)
    assert "usage:" not in capsys.readouterr().err


#: the fewest options each command needs to print its whole configuration (required options, or a config)
MINIMAL_OPTIONS = {
    "fit": ["--config", str(REPO / "configs/demo_digits.yaml")],
    "validate": ["--config", str(REPO / "configs/demo_digits.yaml")],
    "test": ["--config", str(REPO / "configs/demo_digits.yaml")],
    "predict": ["--config", str(REPO / "configs/demo_digits.yaml")],
    "sample": ["--ckpt_path", "model.ckpt", "--labels", "3", "7"],
    "edit": ["--ckpt_path", "model.ckpt", "--images", "in.png", "--mask", "half"],
    "search": ["--config", str(REPO / "configs/autonat_digits.yaml"), "--ckpt_path", "model.ckpt"],
    "import-checkpoint": ["--format", "enat", "--src", "nnet_ema.pth", "--dst", "model.ckpt"],
    "reference-stats": ["--out", "stats.npz"],
    "flops": ["--configs", str(REPO / "configs/enat_l.yaml")],
    "evaluate": ["--samples", "samples.npz", "--reference", "fid_stats.npz"],
    "benchmark": ["--arch", "enat-l", "--dtype", "fp32", "bf16", "--reuse", "false"],
    "autonat": ["--fit_config", str(REPO / "configs/autonat_digits.yaml"), "--out", "run"],
    "tokenize": ["--images", "images", "--out", "data", "--sorted"],
    "tokenize-verify": ["--root", "data", "--finalize"],
    "merge-adapter": ["--ckpt_path", "lora.ckpt", "--out", "merged.ckpt", "--adapters", "a", "b",
                      "--adapter_weights", "0.7", "0.3"],
}


@pytest.mark.parametrize("command", sorted(MINIMAL_OPTIONS))
def test_every_command_prints_a_config_that_reruns_it(command, tmp_path, capsys):
    """``--print_config`` writes every option as YAML; ``--config`` of that file parses to the same options."""
    from lit_nat.commands import COMMANDS

    assert set(MINIMAL_OPTIONS) == set(COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        main([command, *MINIMAL_OPTIONS[command], "--print_config"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0 and isinstance(yaml.safe_load(printed), dict)
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main([command, "--config", str(saved), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)


def test_fit_offers_no_optimizer_that_would_replace_the_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--optimizer" not in capsys.readouterr().out
    with pytest.raises(UsageError, match="--optimizer"):
        main(["fit", f"--config={REPO / 'configs/demo_digits.yaml'}", "--optimizer=Adam"])


def test_a_built_in_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    """A user's path met as FileNotFoundError: one line naming it, exit 2; ``--debug`` first shows the traceback."""
    command = [sys.executable, "-m", "lit_nat", "import-checkpoint", "--format=autonat", f"--src={tmp_path / 'no.pth'}",
               "--model_config=configs/demo_digits.yaml", f"--dst={tmp_path / 'x.ckpt'}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"lit_nat: error: FileNotFoundError: official checkpoint {tmp_path / 'no.pth'} does not exist "
        f"(--debug for the traceback)"
    )
    debug = subprocess.run([*command[:3], "--debug", *command[3:]], cwd=REPO, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert debug.returncode == 2 and "Traceback" in debug.stderr and not (tmp_path / "x.ckpt").exists()


def test_official_weights_and_a_vqgan_file_sample_with_the_checkpoint_alone(tmp_path):
    """import-checkpoint records the tokenizer, so sample needs no config and no data root; --out x.npz is a file."""
    import numpy as np

    from lit_nat.tokenizers.vqgan import save_random_checkpoint

    src = tmp_path / "nnet_ema.pth"
    torch.save(random_official_autonat_state_dict(seed=5), src)  # 16 codes, 4x4 grid, 10 classes
    config = tmp_path / "arch.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": "autonat-s", "arch_overrides": {"num_heads": H},
                                                "schedule_params": {"steps": 4}}}))  # fmt: skip
    arch = ["ch=32", "ch_mult=[1, 2]", "num_res_blocks=1", "z_channels=8", "codebook_size=16"]
    vqgan = save_random_checkpoint(tmp_path / "vqgan.ckpt", **{a.split("=")[0]: yaml.safe_load(a.split("=")[1])
                                                               for a in arch})  # fmt: skip
    dst = tmp_path / "model.ckpt"
    main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config),
          "--dst", str(dst),
          "--tokenizer", "vqgan", "--tokenizer_checkpoint", vqgan, *[f"--tokenizer_arg={a}" for a in arch]])
    assert load_model(str(dst)).hparams.tokenizer["image_size"] == 8  # a 4x4 grid of a 2x-downsampling VQGAN
    out = tmp_path / "official.npz"
    main(["sample", f"--ckpt_path={dst}", f"--out={out}", "--num_samples=6", "--batch_size=4", "--labels", "3", "7",
          "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])  # fmt: skip
    with np.load(out) as data:
        assert data["arr_0"].shape == (6, 8, 8, 3) and data["arr_1"].tolist() == [3, 7, 3, 7, 3, 7]
    assert (tmp_path / "official.png").exists() and (tmp_path / "official.json").exists()
    assert not (tmp_path / "official.parts").exists()
    with pytest.raises(UsageError, match="gives 1024 codes on a \\(16, 16\\) grid, the weights expect 16 codes"):
        main(["import-checkpoint", "--format", "autonat", "--src", str(src), "--model_config", str(config), "--dst",
              str(tmp_path / "x.ckpt"), "--tokenizer", "vqgan", "--tokenizer_arg=image_size=256"])  # fmt: skip


def test_a_remote_ckpt_path_is_left_to_lightning():
    """``--ckpt_path s3://...`` or ``registry:...`` is not read as a local file while parsing: Lightning fetches it."""
    from lit_nat.commands.objects import adopt_checkpoint_structure

    for path in ("s3://bucket/run/last.ckpt", "registry:org/model:latest"):
        assert adopt_checkpoint_structure(path, {}) == {}  # a local read would raise "no such checkpoint file"


def test_a_damaged_official_checkpoint_is_one_line_naming_it(tmp_path):
    src = tmp_path / "nnet_ema.pth"
    src.write_bytes(b"\x80\x02 not a torch archive")
    from lit_nat.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"{src}: not a readable checkpoint, truncated or damaged"):
        main(["import-checkpoint", "--format=autonat", f"--src={src}",
              f"--model_config={REPO / 'configs/autonat_s.yaml'}",
              f"--dst={tmp_path / 'out.ckpt'}"])  # fmt: skip
    assert not (tmp_path / "out.ckpt").exists()


def test_the_public_api_is_importable_from_the_top():
    import lit_nat
    from lit_nat import EditRequest, GenerationSchedule, SampleRequest, edit, generate, sample
    from lit_nat.commands.edit import run_edit
    from lit_nat.commands.sample import run_sample
    from lit_nat.generation.decoding import generate as loop

    assert (generate, edit, sample) == (loop, run_edit, run_sample)
    assert GenerationSchedule.preset("heuristic").steps > 0 and EditRequest(images="x").out == "edits"
    assert SampleRequest().num_samples == 50_000 and set(lit_nat.PUBLIC) <= set(lit_nat.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lit_nat.nope  # noqa: B018
