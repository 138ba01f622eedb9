"""Your own images, end to end as docs/data.md tells it: a folder (class sub-folders, or a caption beside each
image) -> ``tokenize`` (a random VQGAN of the real layout) -> ``fit --config configs/own_images.yaml`` (the shape of
the data read from meta.json, nothing edited) -> ``sample``; and the bad inputs of such a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lit_nat.commands.cli import main
from lit_nat.core.errors import LitNatError
from lit_nat.data import read_metadata
from tests.conftest import REPO
from tests.data.test_text_data import WORDS
from tests.helpers.data import CAPTIONS, image
from tests.helpers.paper import NARROW_VQGAN, cpu_overrides

TEMPLATE = REPO / "configs" / "own_images.yaml"
#: mixed sizes and shapes, as a phone's photos are: each is centre-cropped to the resolution
SIZES = [(48, 40), (40, 64), (100, 30), (32, 32), (70, 70), (36, 90)]


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory) -> Path:
    from lit_nat.tokenizers.vqgan import save_random_checkpoint

    path = tmp_path_factory.mktemp("vqgan") / "vqgan.ckpt"
    save_random_checkpoint(path, **NARROW_VQGAN)
    return path


def tokenize(images: Path, out: Path, vqgan: Path, split: str, *extra: str) -> None:
    main(["tokenize", "--images", str(images), "--out", str(out), "--split", split, "--resolution", "32",
          "--checkpoint", str(vqgan), "--tokenizer_arg", *[f"{k}={v}" for k, v in NARROW_VQGAN.items()],
          "--images_per_shard", "4", *extra])  # fmt: skip


def class_folders(root: Path, classes=("cat", "dog", "owl"), per_class: int = 4) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image(10 * c + i, size=SIZES[(c + i) % len(SIZES)]).save(root / name / f"{i}.png")
    return root


def fit_template(tmp_path: Path, root: Path) -> Path:
    """The template, unedited but for the CPU and tiny-size overrides every shipped config gets in the tests."""
    main(["fit", f"--config={TEMPLATE}", *cpu_overrides(tmp_path, steps=2), f"--data.root={root}",
          "--evaluation.enabled=false", "--trainer.val_check_interval=2", "--data.batch_size=2",
          "--trainer.callbacks.samples_per_class=1", "--model.schedule_params={steps: 2}"])  # fmt: skip
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    return ckpt


def test_class_folders_to_samples_with_the_template(tmp_path, vqgan):
    root = tmp_path / "data"
    tokenize(class_folders(tmp_path / "mine"), root, vqgan, "train")
    tokenize(class_folders(tmp_path / "mine_val", per_class=1), root, vqgan, "val", "--classes",
             str(root / "classes.txt"))  # fmt: skip
    meta = read_metadata(root)
    assert meta.num_classes == 3 and meta.split("train").num_samples == 24  # 12 images and their flips
    ckpt = fit_template(tmp_path, root)
    main(["sample", "--ckpt_path", str(ckpt), "--labels", "0", "2", "--num_samples", "2",
          "--out", str(tmp_path / "out"), "--trainer.accelerator", "cpu"])  # fmt: skip
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["num_samples"] == 2 and (tmp_path / "out" / "grid.png").exists()
    assert Image.open(tmp_path / "out" / "grid.png").size[0] >= 64  # two decoded 32 px images side by side


def test_captioned_images_to_samples_with_the_same_template(tmp_path, vqgan):
    images, val = tmp_path / "mine", tmp_path / "mine_val"
    for folder, count in ((images, 6), (val, 3)):
        folder.mkdir()
        for i in range(count):
            image(i, size=SIZES[i]).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(CAPTIONS[i], encoding="utf-8")
    root = tmp_path / "data"
    for folder, split in ((images, "train"), (val, "val")):
        tokenize(folder, root, vqgan, split, "--text_encoder", json.dumps(WORDS))
    assert read_metadata(root).text_encoder == WORDS
    ckpt = fit_template(tmp_path, root)
    # no prompts in the template: the grid's rows are the validation captions
    grid = Image.open(next((tmp_path / "run").rglob("samples.png")))
    assert grid.size[1] >= 3 * 32
    main(["sample", "--ckpt_path", str(ckpt), "--prompts", "a red bus", "--num_samples", "1",
          "--out", str(tmp_path / "out"), "--trainer.accelerator", "cpu"])  # fmt: skip
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["num_samples"] == 1


def test_an_empty_class_folder_is_one_line_naming_it(tmp_path, vqgan):
    images = class_folders(tmp_path / "mine", classes=("cat", "dog"), per_class=2)
    (images / "empty").mkdir()
    with pytest.raises((LitNatError, ValueError), match=r"mine/empty is an empty class folder; remove it or add"):
        tokenize(images, tmp_path / "data", vqgan, "train")
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").glob("*.tar"))


def test_mixed_sizes_are_centre_cropped_not_refused(tmp_path, vqgan):
    images = class_folders(tmp_path / "mine", classes=("a",), per_class=6)  # six sizes, four aspect ratios
    tokenize(images, tmp_path / "data", vqgan, "train", "--flip", "false")
    assert read_metadata(tmp_path / "data").split("train").num_samples == 6
