"""LoRA through peft (``fit --model.init_from BASE --model.lora.rank R``): only the adapters train and are saved, a
fresh adapter is the base exactly, merged and unmerged adapters agree, the adapter file applies anywhere
(``--adapters``, ``merge-adapter``), a LoRA run resumes bit for bit, and a wrong base or file is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat import load_model
from lit_nat.commands.cli import main
from lit_nat.core.checkpointing import read_checkpoint
from lit_nat.core.errors import CheckpointError, UsageError
from lit_nat.models import build_backbone
from lit_nat.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Adapter,
    AdapterSet,
    LoraSettings,
    adapter_state,
    add_adapters,
    merge_adapters,
    pair_layers,
    read_adapter,
    require_peft,
)
from lit_nat.training.module import NATModule
from tests.conftest import fit_tiny_checkpoint, write_random_shards
from tests.helpers.tiny import ENAT_ARCH, UVIT_ARCH, shards_datamodule, tiny_trainer

BACKBONES = [("autonat-tiny", UVIT_ARCH), ("enat-tiny", ENAT_ARCH)]


def backbone_and_input(arch: str, overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    backbone = build_backbone(arch, codebook_size=12, grid_size=4, num_classes=3, overrides=overrides).eval()
    with torch.no_grad():  # away from the initialisation, whose zero-initialised layers (ENAT) hide the others
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    ids = torch.randint(0, 12, (3, 16))
    ids[:, ::3] = 12  # six [MASK] tokens in every row (ENAT needs equal counts)
    return backbone, ids, torch.tensor([0, 1, 3])


def randomise_adapters(backbone: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if ".lora_B." in name:  # B starts at zero: give the adapters something to say
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("arch,overrides", BACKBONES)
def test_zero_initialised_adapters_give_the_base_logits_exactly(arch, overrides):
    backbone, ids, condition = backbone_and_input(arch, overrides)
    with torch.no_grad():
        base = backbone(ids, condition)[0]
        add_adapters(backbone, LoraSettings(rank=4, alpha=8))
        adapted = backbone(ids, condition)[0]
    assert torch.equal(adapted, base)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("arch,overrides", BACKBONES)
def test_merged_and_unmerged_adapters_give_the_same_logits(arch, overrides):
    backbone, ids, condition = backbone_and_input(arch, overrides)
    plain = {k: v.clone() for k, v in backbone.state_dict().items()}
    add_adapters(backbone, LoraSettings(rank=4, alpha=16))
    randomise_adapters(backbone, seed=1)
    adapter = Adapter("test", pair_layers(adapter_state(backbone), "test"), 16 / 4)
    merged, _, _ = backbone_and_input(arch, overrides)
    merged.load_state_dict(merge_adapters(plain, [(adapter, 1.0)]))
    with torch.no_grad():
        unmerged_logits, merged_logits = backbone(ids, condition)[0], merged(ids, condition)[0]
    assert not torch.allclose(merged_logits, backbone_and_input(arch, overrides)[0](ids, condition)[0])
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=2e-5, rtol=1e-5)
    # weights add up: 0.5 of the adapter twice is the adapter once (to float rounding)
    halves = merge_adapters(plain, [(adapter, 0.5), (adapter, 0.5)])
    for key, value in merge_adapters(plain, [(adapter, 1.0)]).items():
        torch.testing.assert_close(halves[key], value, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A one-step tiny base, a 3-step LoRA fit from it (rank 2) and the shards: (tmp, config, base, lora ckpt)."""
    tmp = tmp_path_factory.mktemp("lora")
    root = write_random_shards(tmp / "shards", codebook_size=12, grid=4, num_classes=3)
    config, base = fit_tiny_checkpoint(tmp, root, steps=4)
    main(["fit", f"--config={config}", "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
          f"--model.init_from={base}", "--model.lora.rank=2", "--model.lora.alpha=4", "--model.lr=0.05",
          "--model.warmup_steps=1", "--model.ema_decay=0.5",  # (so that 3 steps move the EMA adapters visibly)
          f"--trainer.default_root_dir={tmp / 'lora'}"])  # fmt: skip
    (ckpt,) = (tmp / "lora").rglob("*.ckpt")
    return tmp, config, base, ckpt


def test_a_lora_fit_changes_only_the_adapters_and_saves_only_them(lora_run, tmp_path):
    _, _, base, _ = lora_run
    module = NATModule(arch="autonat-tiny", arch_overrides={"width": 32, "num_layers": 1, "num_heads": 2},
                       codebook_size=12, grid_size=4, num_classes=3, schedule_params={"steps": 4}, init_from=str(base),
                       lora={"rank": 2, "alpha": 4.0}, warmup_steps=1)  # fmt: skip
    before = {k: v.clone() for k, v in module.state_dict().items()}
    qkv, ema_qkv = module.backbone.mid_block.attn.qkv, module.ema_backbone.mid_block.attn.qkv
    assert qkv.base_layer.weight is ema_qkv.base_layer.weight and qkv.lora_A is not ema_qkv.lora_A  # one base copy
    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, datamodule=shards_datamodule(root))
    after = module.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".lora_" in k for k in changed)  # the base is bit-identical after training
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("ema_backbone.") for k in changed)
    ema_base = {k: v for k, v in read_checkpoint(base)["state_dict"].items() if k.startswith("ema_backbone.")}
    for key, value in ema_base.items():  # both backbones hold the base's EMA weights (what samples)
        layer, tensor = key.split(".", 1)[1].rsplit(".", 1)
        for prefix in ("backbone.", "ema_backbone."):
            have = after.get(f"{prefix}{layer}.{tensor}", after.get(f"{prefix}{layer}.base_layer.{tensor}"))
            assert torch.equal(have, value), (prefix, key)


def test_the_adapter_file_is_small_and_the_checkpoint_holds_no_base(lora_run):
    tmp, _, base, ckpt = lora_run
    adapter = tmp / "lora" / "adapter"
    saved = read_checkpoint(ckpt)
    assert all(".lora_A." in k or ".lora_B." in k for k in saved["state_dict"])
    assert saved["lit_nat_lora"]["base"]["path"] == str(base)
    size = (adapter / ADAPTER_WEIGHTS).stat().st_size
    assert size * 20 < base.stat().st_size and ckpt.stat().st_size * 5 < base.stat().st_size, (size, ckpt, base)
    peft = require_peft()  # peft reads the folder as its own: its config, and the weights under its keys
    config = peft.LoraConfig.from_pretrained(str(adapter))
    assert config.r == 2 and config.lora_alpha == 4 and set(config.target_modules) == {"qkv", "proj", "fc1", "fc2"}
    assert (adapter / ADAPTER_CONFIG).is_file() and read_adapter(adapter).scale == 2.0


def sample_npz(tmp: Path, ckpt: Path, name: str, *extra: str) -> np.ndarray:
    out = tmp / name
    main(["sample", f"--ckpt_path={ckpt}", f"--out={out}", "--num_samples=6", "--batch_size=3",
          "--trainer.enable_progress_bar=false", *extra])  # fmt: skip
    with np.load(out / "samples.npz") as data:
        return data["arr_0"]


def test_sampling_with_the_adapter_reproduces_the_merged_checkpoint(lora_run):
    tmp, _, base, ckpt = lora_run
    merged = tmp / "merged.ckpt"
    main(["merge-adapter", f"--ckpt_path={ckpt}", f"--out={merged}"])
    with_adapter = sample_npz(tmp, base, "with_adapter", "--adapters", str(tmp / "lora" / "adapter"))
    assert np.array_equal(with_adapter, sample_npz(tmp, merged, "merged"))
    assert not np.array_equal(with_adapter, sample_npz(tmp, base, "base"))  # the adapter does change the samples
    info = json.loads((tmp / "with_adapter" / "samples.json").read_text())  # what made the images, on record
    assert (info["adapters"], info["adapter_weights"]) == ([str(tmp / "lora" / "adapter")], [1.0])
    assert "adapters" not in json.loads((tmp / "base" / "samples.json").read_text())
    assert read_checkpoint(merged)["hyper_parameters"]["lora"] is None
    lora, plain = load_model(str(ckpt)), load_model(str(merged))  # unmerged (peft layers) vs merged weights
    ids, labels = torch.randint(0, 13, (4, 16)), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(lora(ids, labels)[0], plain(ids, labels)[0], atol=2e-5, rtol=1e-5)
    # --adapters on a LoRA model (whose two backbones share one base): the adapter is added once, not once per backbone
    twice = tmp / "twice.ckpt"
    main(["merge-adapter", f"--ckpt_path={ckpt}", f"--out={twice}", "--adapters", str(tmp / "lora" / "adapter")])
    AdapterSet([str(tmp / "lora" / "adapter")]).apply(lora)
    with torch.no_grad():
        torch.testing.assert_close(lora(ids, labels)[0], load_model(str(twice))(ids, labels)[0], atol=2e-5, rtol=1e-5)


def test_editing_with_the_adapter_matches_the_merged_checkpoint(lora_run, tmp_path):
    tmp, _, base, ckpt = lora_run
    merged, images = tmp_path / "merged.ckpt", tmp_path / "images.npz"
    main(["merge-adapter", f"--ckpt_path={ckpt}", f"--out={merged}"])
    np.savez(images, arr_0=np.random.default_rng(0).integers(0, 256, (2, 4, 4), dtype=np.uint8))
    edited = {}
    for name, model in (("adapter", [f"--ckpt_path={base}", "--adapters", str(tmp / "lora" / "adapter")]),
                        ("merged", [f"--ckpt_path={merged}"])):  # fmt: skip
        main(["edit", *model, f"--images={images}", "--mask=half", f"--out={tmp_path / name}", "--labels", "1"])
        edited[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name / "edited").glob("*.png"))}
    assert len(edited["adapter"]) == 2 and edited["adapter"] == edited["merged"]


def test_a_resumed_lora_fit_is_bit_identical_to_an_uninterrupted_one(lora_run, tmp_path):
    _, config, base, _ = lora_run
    # dropout: the resumed run must repeat the adapters' random draws too
    args = [f"--config={config}", "--trainer.limit_val_batches=0", f"--model.init_from={base}", "--model.lora.rank=2",
            "--model.lora.dropout=0.1"]  # fmt: skip
    main(["fit", *args, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'whole'}"])
    main(["fit", *args, "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'cut'}"])
    (half,) = (tmp_path / "cut").rglob("*.ckpt")
    main(["fit", *args, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'cut'}",
          f"--ckpt_path={half}"])  # fmt: skip
    whole = read_checkpoint(next((tmp_path / "whole").rglob("*step=4.ckpt")))
    resumed = read_checkpoint(next((tmp_path / "cut").rglob("*step=4.ckpt")))
    assert set(whole["state_dict"]) == set(resumed["state_dict"])
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for a, b in zip(whole["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_or_another_base_is_one_line_naming_it(lora_run, tmp_path):
    tmp, config, base, ckpt = lora_run
    moved = tmp_path / "lora.ckpt"
    shutil.copy(ckpt, moved)
    saved = base.with_suffix(".saved")
    shutil.move(base, saved)
    try:
        with pytest.raises(CheckpointError, match=rf"^{moved}: .*{base}: the base checkpoint of this LoRA model is "
                                                  "missing") as error:  # fmt: skip
            load_model(str(moved))
        assert "\n" not in str(error.value)
        _, other = fit_tiny_checkpoint(tmp_path, write_random_shards(tmp_path / "s", 12, 4, 3, seed=3), steps=4)
        shutil.copy(other, base)  # the same path, other weights
        with pytest.raises(CheckpointError, match=rf"{base}: not the base these adapters were trained on"):
            load_model(str(moved))
    finally:
        shutil.move(saved, base)


def test_a_moved_base_is_given_with_lora_base(lora_run, tmp_path):
    """The base moved (the LoRA checkpoint names its old path): ``lora_base`` points at it, checked by sha256, in
    ``load_model`` and in ``sample`` from the checkpoint alone; the same images as before the move."""
    tmp, _, base, ckpt = lora_run
    before = sample_npz(tmp_path, ckpt, "before")
    reference = load_model(str(ckpt))
    moved = tmp_path / "elsewhere" / "base.ckpt"
    moved.parent.mkdir()
    shutil.move(base, moved)
    try:
        model = load_model(str(ckpt), lora_base=str(moved))
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
        assert np.array_equal(sample_npz(tmp_path, ckpt, "after", f"--lora_base={moved}"), before)
        with pytest.raises(UsageError, match=rf"--lora_base {moved}: {moved} is not a LoRA model"):
            load_model(str(moved), lora_base=str(moved))
        _, other = fit_tiny_checkpoint(tmp_path, write_random_shards(tmp_path / "s", 12, 4, 3, seed=3), steps=4)
        with pytest.raises(CheckpointError, match=rf"{other}: not the base these adapters were trained on"):
            load_model(str(ckpt), lora_base=str(other))
    finally:
        shutil.move(moved, base)


def test_a_bad_adapter_is_one_line_naming_it(lora_run, tmp_path):
    tmp, _, base, _ = lora_run
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=rf"^{bad}: not a readable LoRA adapter"):
        read_adapter(bad)
    with pytest.raises(CheckpointError, match=rf"^{base}: not a LoRA checkpoint"):
        read_adapter(base)
    with pytest.raises(CheckpointError, match="no such adapter"):
        read_adapter(tmp_path / "nothing")
    wide, _, _ = backbone_and_input("autonat-tiny", {"width": 48, "num_layers": 1, "num_heads": 2})
    add_adapters(wide, LoraSettings(rank=2))
    other = Adapter("wide", pair_layers(adapter_state(wide), "wide"), 1.0)
    with pytest.raises(CheckpointError, match=r"^wide: adapts mid_block.attn.qkv \(144, 48\), but the model's layer"):
        merge_adapters(load_model(str(base)).ema_backbone.state_dict(), [(other, 1.0)])
    with pytest.raises(UsageError, match="--adapter_weights: 1 weights for 2 adapters"):
        main(["merge-adapter", f"--ckpt_path={base}", "--out", str(tmp_path / "m.ckpt"), "--adapters", "a", "b",
              "--adapter_weights", "1"])  # fmt: skip


def test_lora_settings_are_checked_in_one_line(lora_run, monkeypatch):
    _, _, base, _ = lora_run
    tiny = dict(arch="autonat-tiny", arch_overrides={"width": 32, "num_layers": 1, "num_heads": 2}, codebook_size=12,
                grid_size=4, num_classes=3)  # fmt: skip
    with pytest.raises(UsageError, match="--model.lora needs --model.init_from"):
        NATModule(**tiny, lora={"rank": 2})
    with pytest.raises(UsageError, match=r"'qkvv' names no Linear layer of this UViT backbone \(its Linear layers end "
                                         r"in fc, fc1, fc2, proj, qkv"):  # fmt: skip
        NATModule(**tiny, init_from=str(base), lora={"target_modules": ["qkvv"]})
    with pytest.raises(UsageError, match="unknown setting 'r'"):
        NATModule(**tiny, init_from=str(base), lora={"r": 2})
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # as if peft were not installed
    with pytest.raises(UsageError, match=r"^a LoRA model \(--model.lora\) needs peft: pip install 'lit_nat\[lora\]'$"):
        NATModule(**tiny, init_from=str(base), lora={"rank": 2})
