"""Your own captioned images: a .txt beside each image, or a file,caption table (CSV or JSON lines)."""

from __future__ import annotations

import json

import pytest

from lit_nat.core.errors import UnsafeNameError
from lit_nat.data import read_metadata
from lit_nat.data.captioned import list_caption_files, list_caption_table
from lit_nat.tokenizers import TOKENIZERS
from tests.data.test_text_data import WORDS
from tests.helpers.cli import command
from tests.helpers.data import CAPTIONS, image
from tests.helpers.tokenizers import PatchMeanTokenizer

tokenize = command("tokenize")


@pytest.fixture(autouse=True)
def _registered_test_tokenizer(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, "patchmean", PatchMeanTokenizer)


@pytest.fixture
def folder(tmp_path):
    """Five images; a.txt-style captions for four of them (one with two lines), none for the fifth."""
    root = tmp_path / "mine"
    root.mkdir()
    for i in range(5):
        image(i).save(root / f"img{i}.png")
        if i < 4:
            (root / f"img{i}.txt").write_text(CAPTIONS[i] + ("\n" + CAPTIONS[5] if i == 0 else ""), encoding="utf-8")
    return root


def test_a_txt_beside_each_image_is_its_caption(folder):
    listing, skipped = list_caption_files(folder)
    assert listing.files == ("img0.png", "img1.png", "img2.png", "img3.png")
    assert listing.captions[0] == (CAPTIONS[0], CAPTIONS[5]) and listing.labels == (0, 0, 0, 0)
    assert skipped == [("img4.png", "has no img4.txt beside it")]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_caption_table_names_its_images_and_what_it_skips(folder, tmp_path, kind):
    rows = [("img0.png", "a red bus"), ("img0.png", "a cat"), ("img1.png", "  "), ("gone.png", "a dog")]
    table = tmp_path / f"captions.{kind}"
    if kind == "csv":
        table.write_text("file,caption\n" + "".join(f'{f},"{c}"\n' for f, c in rows), encoding="utf-8")
    else:
        table.write_text("".join(json.dumps({"file": f, "caption": c}) + "\n" for f, c in rows), encoding="utf-8")
    listing, skipped = list_caption_table(folder, table)
    assert listing.files == ("img0.png",) and listing.captions == (("a red bus", "a cat"),)
    assert sorted(skipped) == [("gone.png", f"named in {table.name} but not in {folder}"),
                               ("img1.png", f"has an empty caption in {table.name}")]  # fmt: skip


def test_a_bad_table_is_one_line_naming_it(folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\nimg0.png,a cat\n")
    with pytest.raises(ValueError, match="bad.csv: a captions CSV needs the header file,caption"):
        list_caption_table(folder, bad)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"file": "img0.png", "caption": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not"):
        list_caption_table(folder, lines)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("file,caption\nimg0.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv: the captions table is not UTF-8 text"):
        list_caption_table(folder, latin)
    escape = tmp_path / "escape.csv"
    escape.write_text("file,caption\n../../etc/passwd,a cat\n")
    with pytest.raises(UnsafeNameError, match="escape.csv"):
        list_caption_table(folder, escape)


def test_your_captioned_folder_tokenises_for_text_to_image(folder, tmp_path):
    out = tmp_path / "tokens"
    summary = tokenize(["--images", folder, "--out", out, "--resolution", "32", "--tokenizer", "patchmean",
                        "--text_encoder", json.dumps(WORDS), "--device", "cpu", "--num_workers", "0",
                        "--images_per_shard", "2"])  # fmt: skip
    assert summary["complete"] and summary["report"]["finalized"] and summary["report"]["num_samples"] == 4
    assert read_metadata(out).text_encoder == WORDS
