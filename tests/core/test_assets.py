"""Portable checkpoints and assets (issue 18, items 2 and 3).

Imported official-layout checkpoints (ENAT with a VQGAN file; aMUSEd's diffusers folder) carry their schedule by value
and their assets by location + sha256: moved with their assets to another folder, they sample from a third working
directory with ``--tokenizer_checkpoint`` / ``--text_encoder``; a changed asset is refused by its hash, and a moved
one without the override is one line naming the recorded path and the flag.

Assets resolve through their libraries' caches, filled here from local files (never the network: ``HF_HUB_OFFLINE=1``
and a ``file://`` URL): the FID Inception weights and a VQGAN ``URL#sha256=`` through torch.hub's
(``$TORCH_HOME/hub/checkpoints/``), CLIP and aMUSEd hub ids through huggingface_hub's (the documented
``models--org--name/refs/main`` + ``snapshots/<revision>/`` layout: huggingface_hub has no API that adds local files
to its cache). An empty cache offline is one line naming what to fetch and where it goes.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_nat.commands.cli import main
from lit_nat.core.assets import MissingAssetError, sha256_of
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.tokenizers import load_tokenizer
from lit_nat.tokenizers.vqgan import save_random_checkpoint
from tests.helpers.official import random_official_enat_state_dict
from tests.helpers.tiny import DEC, H

CPU = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
#: a VQGAN with a 2x downsampling and the official ENAT weights' 16 codes: 8 px images on their 4x4 grid
VQ_ARCH = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8, "codebook_size": 16}
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches under tmp_path, and no network for either library."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def hub_cache_put(folder: Path, repo_id: str, cache: Path) -> Path:
    """Put a local folder into the Hugging Face cache as repo ``repo_id`` at ``main`` (its documented layout)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return repo


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ ENAT + VQGAN file
def make_enat_import(folder: Path) -> Path:
    """In ``folder`` (the working directory): official ENAT weights, a VQGAN file, a schedule file the config names by
    a relative path, and the imported checkpoint ``model.ckpt``."""
    torch.save(random_official_enat_state_dict(seed=3), folder / "nnet_ema.pth")
    save_random_checkpoint(folder / "vq.ckpt", **VQ_ARCH)
    GenerationSchedule.enat(steps=4).save(folder / "sched.yaml")
    config = {"model": {"arch": "enat-s", "arch_overrides": {"num_heads": H, "decoder_layers": DEC},
                        "mask_ratio_per_sample": False, "min_visible_tokens": 1, "schedule": "sched.yaml"}}  # fmt: skip
    (folder / "arch.yaml").write_text(yaml.safe_dump(config))
    arch = [f"--tokenizer_arg={k}={v}" for k, v in VQ_ARCH.items()]
    main(["import-checkpoint", "--format=enat", "--src=nnet_ema.pth", "--model_config=arch.yaml", "--dst=model.ckpt",
          "--tokenizer=vqgan", "--tokenizer_checkpoint=vq.ckpt", *arch])  # fmt: skip
    return folder / "model.ckpt"


def test_an_enat_import_samples_after_it_and_its_assets_moved(tmp_path, monkeypatch):
    made, moved, elsewhere = tmp_path / "made", tmp_path / "moved", tmp_path / "elsewhere"
    made.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(made)
    make_enat_import(made)
    hyper = read_checkpoint(made / "model.ckpt")["hyper_parameters"]
    assert hyper["schedule"] == GenerationSchedule.enat(steps=4).to_dict() and hyper["schedule_params"] is None
    assert hyper["tokenizer"]["checkpoint"] == str(made / "vq.ckpt")  # absolute, whatever the working directory
    assert hyper["tokenizer"]["sha256"] == hashlib.sha256((made / "vq.ckpt").read_bytes()).hexdigest()

    shutil.move(made, moved)  # the checkpoint, the VQGAN, the schedule file and the config: all elsewhere now
    monkeypatch.chdir(elsewhere)
    sample = ["sample", f"--ckpt_path={moved / 'model.ckpt'}", "--num_samples=3", "--batch_size=2", *CPU]
    with pytest.raises(MissingAssetError) as err:
        main([*sample, "--out=a"])
    assert one_line(err) == (f"the vqgan tokenizer's weights {made / 'vq.ckpt'} does not exist (moved, or made on "
                             "another machine?): pass its location here with --tokenizer_checkpoint")  # fmt: skip

    main([*sample, "--out=b", f"--tokenizer_checkpoint={moved / 'vq.ckpt'}"])
    with np.load(elsewhere / "b" / "samples.npz") as data:
        assert data["arr_0"].shape == (3, 8, 8, 3)

    changed = tmp_path / "changed.ckpt"
    shutil.copy(moved / "vq.ckpt", changed)
    flip_one_byte(changed)
    with pytest.raises(CheckpointError) as err:
        main([*sample, "--out=c", f"--tokenizer_checkpoint={changed}"])
    recorded, actual = hyper["tokenizer"]["sha256"], sha256_of(changed)
    assert actual != recorded and f"has sha256 {actual}, but {recorded} was recorded" in one_line(err)
    assert "--tokenizer_checkpoint" in str(err.value) and not (elsewhere / "c" / "samples.npz").exists()


def test_a_checkpoint_written_before_the_schedule_was_kept_by_value_still_samples(tmp_path, monkeypatch):
    """Older checkpoints name the schedule file relative to where they were made; generation_schedule has it."""
    from lit_nat.training.loading import load_model

    monkeypatch.chdir(tmp_path)
    ckpt = make_enat_import(tmp_path)
    checkpoint = read_checkpoint(ckpt)
    checkpoint["hyper_parameters"].update(schedule="configs/schedules/gone.yaml", schedule_params=None)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = load_model(str(tmp_path / "old.ckpt"))
    assert model.schedule.to_dict() == checkpoint["generation_schedule"]


# -------------------------------------------------------------------------------------------------- aMUSEd folder
@pytest.fixture(scope="module")
def amused_folder(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from lit_nat.models.amused_folder import save_random_amused

    return save_random_amused(tmp_path_factory.mktemp("amused") / "amused-tiny", hidden=16, layers=1)


def test_an_amused_import_samples_after_it_and_its_folder_moved(amused_folder, tmp_path, monkeypatch):
    made, moved, elsewhere = tmp_path / "made", tmp_path / "moved", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(amused_folder, made / "amused")
    main(["import-checkpoint", "--format=amused", f"--src={made / 'amused'}", f"--dst={made / 'amused.ckpt'}"])
    hyper = read_checkpoint(made / "amused.ckpt")["hyper_parameters"]
    assert hyper["tokenizer"]["checkpoint"] == str(made / "amused" / "vqvae")
    assert hyper["tokenizer"]["sha256"] == sha256_of(amused_folder / "vqvae")
    assert hyper["text_encoder"]["tokenizer_sha256"] == sha256_of(amused_folder / "tokenizer")
    assert isinstance(hyper["schedule"], dict) and hyper["schedule"]["mask_ratio"]

    shutil.move(made, moved)
    monkeypatch.chdir(elsewhere)
    sample = ["sample", f"--ckpt_path={moved / 'amused.ckpt'}", "--num_samples=2", "--batch_size=2",
              "--prompts", "a red bus", *CPU]  # fmt: skip
    with pytest.raises(MissingAssetError) as err:
        main([*sample, "--out=a"])
    assert f"the CLIP text encoder {made / 'amused' / 'text_encoder'} does not exist" in one_line(err)
    assert str(err.value).endswith("with --text_encoder")

    assets = [f"--tokenizer_checkpoint={moved / 'amused' / 'vqvae'}",
              f"--text_encoder={moved / 'amused' / 'text_encoder'}"]
    main([*sample, "--out=b", *assets])  # the tokenizer/ beside text_encoder/ moves with it
    with np.load(elsewhere / "b" / "samples.npz") as data:
        assert data["arr_0"].shape == (2, 16, 16, 3)

    flip_one_byte(moved / "amused" / "text_encoder" / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        main([*sample, "--out=c", *assets])
    assert "the CLIP text encoder" in one_line(err) and f"but {hyper['text_encoder']['sha256']} was recorded" in str(
        err.value)  # fmt: skip


# ----------------------------------------------------------------------------------------- caches: torch.hub, HF hub
def test_inception_weights_come_from_the_torch_hub_cache(offline, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from lit_nat.metrics import extractors

    cached = offline / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(MissingAssetError) as err:
        extractors.build_extractor("inception")
    assert one_line(err) == (f"the FID Inception weights are not in the torch.hub cache ({cached}) and HF_HUB_OFFLINE "
                             f"is set: download {URL_INCEPTION_V3} there, or pass weights_path")  # fmt: skip

    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    cached.parent.mkdir(parents=True)
    torch.save(net.state_dict(), cached)
    with pytest.raises(CheckpointError, match=r"Inception weights .* but 6726825d was recorded"):
        extractors.build_extractor("inception")  # random weights are not torch-fidelity's file: its name's hash
    monkeypatch.setattr(extractors, "INCEPTION_SHA256_PREFIX", sha256_of(cached)[:8])
    extractor = extractors.build_extractor("inception")
    assert extractor.weights_path == str(cached)
    assert extractor(torch.rand(1, 3, 16, 16))[0].shape == (1, 2048)


def test_a_vqgan_url_with_its_sha256_goes_through_the_torch_hub_cache(offline, monkeypatch):
    source = save_random_checkpoint(offline / "release" / "vq-tiny.ckpt", **VQ_ARCH)
    digest = sha256_of(source)
    url = Path(source).as_uri()  # file:// : torch.hub's own download, without a network
    cached = offline / "torch" / "hub" / "checkpoints" / "vq-tiny.ckpt"
    with pytest.raises(MissingAssetError) as err:
        load_tokenizer("vqgan", checkpoint=f"{url}#sha256={digest}", image_size=8, **VQ_ARCH)
    assert one_line(err) == (f"the vqgan tokenizer's weights are not in the torch.hub cache ({cached}) and "
                             f"HF_HUB_OFFLINE is set: download {url} there, "
                             "or pass --tokenizer_checkpoint")  # fmt: skip

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(CheckpointError, match=r"vq-tiny.ckpt downloaded, but invalid hash value \(expected \"0{64}"):
        load_tokenizer("vqgan", checkpoint=f"{url}#sha256={'0' * 64}", image_size=8, **VQ_ARCH)
    assert not cached.exists()  # torch.hub removed the file of the wrong hash
    tokenizer = load_tokenizer("vqgan", checkpoint=f"{url}#sha256={digest}", image_size=8, **VQ_ARCH)
    assert cached.is_file() and tokenizer.config()["checkpoint"] == f"{url}#sha256={digest}"

    Path(source).unlink()  # from now on only the cache holds it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = load_tokenizer("vqgan", checkpoint=f"{url}#sha256={digest}", image_size=8, **VQ_ARCH)
    assert torch.equal(again.quantize.embedding.weight, tokenizer.quantize.embedding.weight)
    with pytest.raises(Exception, match="needs its sha256"):
        load_tokenizer("vqgan", checkpoint=url, image_size=8, **VQ_ARCH)


def test_clip_from_a_hub_id_through_the_hugging_face_cache(offline):
    from lit_nat.conditioning import CLIPTextEncoder, save_random_clip, text_space
    from lit_nat.metrics.clip_score import LocalCLIPScore, save_random_clip_model

    hub = "openai/clip-vit-large-patch14"
    with pytest.raises(MissingAssetError) as err:
        CLIPTextEncoder(hub, max_length=16)
    cache = offline / "hf" / "hub"
    assert one_line(err) == (f"the CLIP text encoder {hub} is not in the Hugging Face cache ({cache}) "
                             f"and HF_HUB_OFFLINE is set: run `hf download {hub}` where there is network, with the "
                             "same HF_HOME, or pass a local folder with --text_encoder")  # fmt: skip
    with pytest.raises(MissingAssetError, match=f"the CLIP score model {hub} is not in the Hugging Face cache"):
        LocalCLIPScore(hub)

    local = save_random_clip(offline / "clip-text", hidden=32, layers=1, heads=2, max_length=16)
    hub_cache_put(local, hub, offline / "hf" / "hub")
    encoder = CLIPTextEncoder(hub, max_length=16)
    assert encoder.config()["path"] == hub and text_space(encoder.config()) == (32, 16)
    reference = CLIPTextEncoder(str(local), max_length=16)
    torch.testing.assert_close(encoder.encode(["a cat"]).tokens, reference.encode(["a cat"]).tokens)

    whole = save_random_clip_model(offline / "clip-whole")
    shutil.rmtree(offline / "hf" / "hub")
    hub_cache_put(whole, hub, offline / "hf" / "hub")
    assert LocalCLIPScore(hub).model.config.projection_dim == 32


def test_amused_from_a_hub_id_through_the_hugging_face_cache(amused_folder, offline, monkeypatch):
    hub = "amused/amused-256"
    dst = offline / "amused.ckpt"
    with pytest.raises(MissingAssetError) as err:
        main(["import-checkpoint", "--format=amused", f"--src={hub}", f"--dst={dst}"])
    assert one_line(err).startswith(f"the aMUSEd pipeline {hub} is not in the Hugging Face cache")

    hub_cache_put(amused_folder, hub, offline / "hf" / "hub")
    main(["import-checkpoint", "--format=amused", f"--src={hub}", f"--dst={dst}"])
    hyper = read_checkpoint(dst)["hyper_parameters"]
    assert hyper["tokenizer"]["checkpoint"] == f"hf://{hub}/vqvae"
    assert hyper["text_encoder"]["path"] == f"hf://{hub}/text_encoder"
    assert hyper["text_encoder"]["tokenizer_path"] == f"hf://{hub}/tokenizer"
    monkeypatch.chdir(offline)
    main(["sample", f"--ckpt_path={dst}", "--num_samples=2", "--batch_size=2", "--prompts", "a cat", "--out=s", *CPU])
    with np.load(offline / "s" / "samples.npz") as data:
        assert data["arr_0"].shape == (2, 16, 16, 3)

    shutil.rmtree(offline / "hf" / "hub")  # the cache emptied: the checkpoint names what to fetch
    with pytest.raises(MissingAssetError) as err:
        main(["sample", f"--ckpt_path={dst}", "--num_samples=2", "--prompts", "a cat", "--out=t", *CPU])
    assert one_line(err).startswith(f"the CLIP text encoder {hub}/text_encoder is not in the Hugging Face cache")


def test_a_config_run_checks_the_datas_tokenizer_against_the_restored_checkpoints_digest(tmp_path):
    """validate/search/sample with --config build the tokenizer from meta.json (no digest there); restoring a
    checkpoint that recorded one makes the tokenizer's file be checked against it."""
    from lit_nat.training.module import NATModule

    save_random_checkpoint(tmp_path / "vq.ckpt", **VQ_ARCH)
    shutil.copy(tmp_path / "vq.ckpt", tmp_path / "other.ckpt")
    flip_one_byte(tmp_path / "other.ckpt")
    recorded = {"name": "vqgan", "checkpoint": str(tmp_path / "vq.ckpt"), "sha256": sha256_of(tmp_path / "vq.ckpt"),
                "image_size": 8, **VQ_ARCH}  # fmt: skip

    def model_of(data_tokenizer: Path) -> NATModule:
        meta = {"name": "vqgan", "checkpoint": str(data_tokenizer), "image_size": 8, **VQ_ARCH}
        model = NATModule(arch="autonat-tiny", arch_overrides={"width": 32, "num_layers": 1, "num_heads": 2},
                          codebook_size=16, grid_size=4, num_classes=3, tokenizer=meta)  # fmt: skip
        model.on_load_checkpoint({"hyper_parameters": {"tokenizer": recorded}})
        return model

    assert model_of(tmp_path / "vq.ckpt").tokenizer is not None  # the same file: built
    with pytest.raises(CheckpointError, match=r"other\.ckpt has sha256 .* was recorded"):
        model_of(tmp_path / "other.ckpt").tokenizer
