"""Captioned images end to end: a tiny MS-COCO folder and a tiny img2dataset (CC3M-style) folder are tokenised,
verified, trained on and sampled from with prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lit_nat.commands.cli import main
from lit_nat.core.errors import UsageError
from lit_nat.data import TokenShardDataModule, read_metadata
from lit_nat.data.captioned import list_coco, list_img2dataset
from lit_nat.data.tokenize_verify import verify_split
from lit_nat.tokenizers import TOKENIZERS
from tests.conftest import fit_tiny_checkpoint
from tests.helpers.cli import command
from tests.helpers.data import CAPTIONS, make_coco, make_img2dataset
from tests.helpers.tokenizers import PatchMeanTokenizer

tokenize = command("tokenize")

WORDS = {"name": "words", "vocab": ["a", "red", "bus", "cat", "on", "the", "table", "dog"], "dim": 16,
         "max_length": 8}  # fmt: skip


@pytest.fixture(autouse=True)
def _registered_test_tokenizer(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, "patchmean", PatchMeanTokenizer)


def args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["--images", str(images), "--out", str(out), "--resolution", "32", "--tokenizer", "patchmean",
            "--images_per_shard", "2", "--num_workers", "0", "--device", "cpu", *extra]  # fmt: skip


def test_coco_listing_follows_ids_keeps_every_caption_and_lists_what_it_skips(tmp_path):
    folder, captions = make_coco(tmp_path)
    listing, skipped = list_coco(folder, captions)
    assert listing.files[0] == "COCO_train2014_000000000005.jpg"  # id 95 sorts first
    assert len(listing) == 6 and listing.classes == ("image",) and set(listing.labels) == {0}
    assert all(len(c) in (2, 3) for c in listing.captions) and listing.captions[-1][0] == CAPTIONS[0]  # stripped
    assert sorted(reason.split(" ")[0] for _, reason in skipped) == ["has", "listed"]
    with pytest.raises(ValueError, match="not a COCO captions file"):
        list_coco(folder, folder / "COCO_train2014_000000000000.jpg")


def test_a_coco_folder_tokenises_with_cached_states_verifies_trains_and_samples(tmp_path):
    folder, captions = make_coco(tmp_path)
    out = tmp_path / "coco"
    summary = tokenize(args(folder, out, "--captions", str(captions), "--split", "train",
                            "--text_encoder", json.dumps(WORDS), "--cache_text"))  # fmt: skip
    assert summary["complete"] and summary["unlisted"] == 2 and summary["report"]["finalized"]
    assert (out / "tokenize_train_unlisted.txt").read_text().count("\n") == 2
    caption_stats = summary["report"]["captions"]
    assert caption_stats["images"] == 6 and caption_stats["captions"] == 15 and caption_stats["per_image"]["max"] == 3
    meta = read_metadata(out)
    assert meta.fields == ("tokens.npy", "cls", "captions.json", "text.npz") and meta.text_encoder == WORDS
    tokenize(args(folder, out, "--captions", str(captions), "--split", "val", "--text_encoder", json.dumps(WORDS),
                  "--cache_text"))  # fmt: skip
    batch = next(iter(TokenShardDataModule(str(out), batch_size=3, num_workers=0).train_dataloader()))
    assert batch["text_emb"].shape == (3, 8, 16) and all(t.strip() in CAPTIONS for t in batch["text"])

    config, ckpt = fit_tiny_checkpoint(tmp_path, out, steps=2)
    samples = tmp_path / "samples"
    main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=5", "--batch_size=2",
          f"--out={samples}", "--prompts", "a red bus", "a cat"])  # fmt: skip
    with np.load(samples / "samples.npz") as data:
        assert data["arr_0"].shape == (5, 32, 32, 3)
    info = json.loads((samples / "samples.json").read_text())
    assert info["image_prompts"] == ["a red bus", "a cat", "a red bus", "a cat", "a red bus"]
    assert (samples / "grid.png").exists()
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a dog\n\nthe red table\n")
    main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=2", f"--out={tmp_path / 's2'}",
          f"--prompts_file={prompts_file}"])  # fmt: skip
    assert json.loads((tmp_path / "s2" / "samples.json").read_text())["image_prompts"] == ["a dog", "the red table"]


def test_an_img2dataset_folder_tokenises_verifies_trains_and_samples(tmp_path):
    folder = make_img2dataset(tmp_path / "cc3m")
    listing, skipped = list_img2dataset(folder)
    assert len(listing) == 7 and listing.files[0] == "00000.tar::000000000.jpg"
    assert skipped == [("00001.tar::000010002.jpg", "has no caption (.txt or json caption)")]
    out = tmp_path / "tokens"
    for split in ("train", "val"):
        summary = tokenize(args(folder, out, "--split", split, "--text_encoder", json.dumps(WORDS)))
        assert summary["report"]["finalized"] and summary["report"]["num_samples"] == 7  # no flips for text
    report = verify_split(out, "train")
    assert report["ok"] and report["captions"]["per_image"] == {"min": 1, "mean": 1.0, "max": 1}
    assert read_metadata(out).fields == ("tokens.npy", "cls", "captions.json")  # on-the-fly encoding: no states
    config, ckpt = fit_tiny_checkpoint(tmp_path, out, steps=2)
    main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=2", f"--out={tmp_path / 's'}",
          "--prompts", "a red bus"])  # fmt: skip
    assert (tmp_path / "s" / "samples.npz").exists()
    with pytest.raises(ValueError, match="text-conditioned: pass --prompts"):
        main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=2", f"--out={tmp_path / 'x'}"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: the prompts file holds no prompt"):
        main(["sample", f"--config={config}", f"--ckpt_path={ckpt}", "--num_samples=2", f"--out={tmp_path / 'y'}",
              f"--prompts_file={empty}"])  # fmt: skip


def test_list_options_take_several_values_after_one_flag():
    from lit_nat.commands import COMMANDS
    from lit_nat.commands.parsing import command_parser, function_kwargs, parse

    parser = command_parser("sample", COMMANDS["sample"].function)
    config = parse(parser, ["--prompts", "a red bus", "7", "--seed", "1", "--labels", "3", "7"])
    request = function_kwargs(config, COMMANDS["sample"].function)["request"]
    assert (request.prompts, request.seed, request.labels) == (["a red bus", "7"], 1, [3, 7])
    config = parse(parser, ["--labels", "1", "--labels", "2"])  # given again: added to
    assert config.labels == [1, 2]
    with pytest.raises(UsageError, match="--labels: expected int, got 'x'"):
        parse(parser, ["--labels", "3", "x"])


def test_an_img2dataset_json_that_is_not_an_object_skips_only_its_image(tmp_path):
    import io
    import tarfile

    from lit_nat.data.imagefolder import TAR_INDEX, open_image

    folder = tmp_path / "wds"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, sidecar in (("a", b"not json"), ("b", b"[1, 2]"), ("c", b'{"caption": "a dog"}')):
            for name, data in ((f"{key}.jpg", b"jpeg bytes " + key.encode()), (f"{key}.json", sidecar)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    listing, skipped = list_img2dataset(folder)
    assert listing.files == ("00000.tar::c.jpg",) and listing.captions == (("a dog",),)
    assert [member for member, _ in skipped] == ["00000.tar::a.jpg", "00000.tar::b.jpg"]
    # the listing indexed the tar: an image is read by one seek, its bytes exactly
    assert str(folder / "00000.tar") in TAR_INDEX
    assert open_image(f"{folder / '00000.tar'}::c.jpg").read() == b"jpeg bytes c"


def test_caption_statistics_are_running_counts():
    from lit_nat.data.tokenize_verify import CaptionStats

    stats = CaptionStats()
    for texts in (["a b", "c"], ["d e f"], ["x", " ", "y z"]):
        stats.add(texts)
    assert stats.summary() == {"images": 3, "captions": 6, "per_image": {"min": 1, "mean": 2.0, "max": 3},
                               "words": {"min": 0, "mean": 1.5, "max": 3}, "empty": 1,
                               "examples": ["a b", "d e f", "x"]}  # fmt: skip
    assert CaptionStats().summary()["per_image"] == {"min": 0, "mean": 0.0, "max": 0}
