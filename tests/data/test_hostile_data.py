"""Hostile data: names read from files never become paths, shards are what tokenize wrote, and every mistake in a data
command is one line (exit 2). Property-based (hypothesis) where the input space is wide: member names, meta.json
values, listing names."""

from __future__ import annotations

import json
import os
import shutil
import string
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_nat.commands.cli import entry
from lit_nat.core.errors import DataError, LitNatError, UnsafeNameError
from lit_nat.data import ShardWriter, TokenShardDataModule, TokenShardDataset, read_metadata
from lit_nat.data.captioned import list_coco, list_img2dataset
from lit_nat.data.imagefolder import read_class_list
from lit_nat.data.integrity import check_shard
from lit_nat.data.samples import read_range
from lit_nat.data.tokenize import tokenize_folder
from lit_nat.data.tokenize_verify import verify_split
from lit_nat.tokenizers import TOKENIZERS
from tests.helpers.cli import command
from tests.helpers.data import image, listing, make_img2dataset, rehash_record, renamed_shard, tar_members, write_tar
from tests.helpers.tokenizers import PatchMeanTokenizer

verify = command("tokenize-verify")

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: names a hostile file may hold: separators, '..', empty, control and non-ASCII characters, and plain ones
NAMES = st.one_of(
    st.sampled_from(["", ".", "..", "../../X", "/abs/X", "a/b", "a\\b", "..\\X", "x\x00y", "ok", "ok_flip", "é字"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(alphabet=string.ascii_letters + "./\\_-", min_size=1, max_size=12),
)


@pytest.fixture(autouse=True)
def _registered_test_tokenizer(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, "patchmean", PatchMeanTokenizer)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    """A finalised split 'val' of 6 images in one shard, made by tokenize (so its shard has a record)."""
    base = tmp_path_factory.mktemp("hostile")
    for c in range(2):
        (base / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            image(10 * c + i, (40, 36)).save(base / "images" / f"c{c}" / f"i{i}.png")
    tokenize_folder(base / "images", base / "root", PatchMeanTokenizer(), split="val", resolution=32,
                    images_per_shard=8, num_workers=0)  # fmt: skip
    return base / "root"


def _copy(root: Path, where: Path) -> Path:
    """The tokenised root copied two folders deep under ``where`` (a '../../X' would land in ``where``)."""
    copy = where / "a" / "b" / "root"
    shutil.copytree(root, copy)
    return copy


def _dataset(root: Path, bad_data: str = "fail") -> TokenShardDataset:
    info = read_metadata(root).splits["val"]
    return TokenShardDataset(root, [s.name for s in info.shards], info.shard_sizes, batch_size=2, mode="eval",
                             return_keys=True, bad_data=bad_data)  # fmt: skip


# ---------------------------------------------------------------------------------------------- names are not paths
def test_a_shard_with_path_members_fails_verification_and_decodes_nothing(tokenized, tmp_path, capsys):
    """The issue's reproduction: members '../../X.tokens.npy' (record rehashed): once 'OK' and X.png above the root."""
    root = _copy(tokenized, tmp_path)
    shard = root / "val-000000.tar"
    renamed_shard(shard, lambda key: "../../X" if key == tar_members(shard)[0][0].split(".")[0] else key)
    before = listing(tmp_path, tmp_path / "a", tmp_path / "a" / "b")
    report = verify_split(root, "val", decode=8, tokenizer=PatchMeanTokenizer())
    assert not report["ok"] and "decoded" not in report
    assert report["problems"] == [
        "val-000000.tar: member '../../X.cls' is not a plain file name (no separators, "
        "'..', empty or control characters); refusing to use it as a path"
    ]
    with pytest.raises(SystemExit) as exit_info:
        verify(["--root", str(root), "--split", "val", "--decode", "8", "--tokenizer", "patchmean"])
    assert exit_info.value.code == 1 and "PROBLEM: val-000000.tar: member '../../X.cls'" in capsys.readouterr().out
    assert listing(tmp_path, tmp_path / "a", tmp_path / "a" / "b") == before
    with pytest.raises(DataError, match=r"val-000000.tar: member '../../X.cls' is not a plain file name"):
        list(_dataset(root))


@FEW
@given(name=NAMES)
def test_any_member_name_is_read_safely_or_refused(tokenized, tmp_path_factory, name):
    where = tmp_path_factory.mktemp("names")
    root = _copy(tokenized, where)
    shard = root / "val-000000.tar"
    first = tar_members(shard)[0][0].split(".")[0]
    try:
        renamed_shard(shard, lambda key: name if key == first else key)
    except (ValueError, UnicodeError, tarfile.TarError):  # a name tar itself cannot store: nothing to read
        return
    before = listing(where, where / "a", where / "a" / "b", root)
    report = verify_split(root, "val", decode=8, tokenizer=PatchMeanTokenizer())
    after = listing(where, where / "a", where / "a" / "b", root)
    assert {k: v for k, v in after.items() if k != root} == {k: v for k, v in before.items() if k != root}
    new = after[root] - before[root]
    assert new <= {"tokenize_val_decoded", "tokenize_val_report.json", "tokenize_val_skipped.txt"}
    decoded = root / "tokenize_val_decoded"
    if report["ok"]:
        assert all(Path(p).parent == decoded for p in report["decoded"]) and len(os.listdir(decoded)) == 6
    else:
        assert all(p.startswith("val-000000.tar") for p in report["problems"])
    try:
        keys = [k for batch in _dataset(root) for k in batch["key"]]
    except (DataError, UnsafeNameError) as err:
        assert "val-000000.tar" in str(err) and "\n" not in str(err)
    else:
        assert all(k and "/" not in k and "\\" not in k and k not in (".", "..") for k in keys)


@FEW
@given(name=NAMES)
def test_img2dataset_members_are_listed_only_as_plain_names(tmp_path_factory, name):
    folder = make_img2dataset(tmp_path_factory.mktemp("i2d") / "shards")
    tar = folder / "00000.tar"
    members = tar_members(tar)
    write_tar(tar, [(name + ".jpg" if n == "000000000.jpg" else n, d) for n, d in members])
    try:
        listed, _ = list_img2dataset(folder)
    except UnsafeNameError as err:
        assert str(err).startswith(f"{tar}: member ") and "\n" not in str(err)
    else:
        assert all("/" not in f.split("::", 1)[1] and "\\" not in f.split("::", 1)[1] for f in listed.files)


def test_coco_file_names_and_class_lists_are_names(tmp_path):
    folder = tmp_path / "train2014"
    folder.mkdir()
    image(0).save(folder / "a.jpg")
    (tmp_path / "X.jpg").write_bytes(b"")  # what '../X.jpg' would reach
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "../X.jpg"}, {"id": 2, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": 1, "caption": "x"}]}))  # fmt: skip
    with pytest.raises(UnsafeNameError, match=r"captions.json: images\[id=1\].file_name '../X.jpg' is not a plain"):
        list_coco(folder, captions)
    classes = tmp_path / "classes.txt"
    classes.write_text("n01\n../n02 a comment\n")
    with pytest.raises(UnsafeNameError, match=r"classes.txt: class name '../n02' is not a plain file name"):
        read_class_list(classes)


# ---------------------------------------------------------------------------------------------- meta.json values
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
META_KEYS = ["format", "codebook_size", "grid_size", "num_classes", "tokenizer", "fields", "text_encoder", "extra",
             "splits", "splits.val.num_samples", "splits.val.shards", "shard.name", "shard.num_samples",
             "tokenizer.levels", "tokenizer.image_size"]  # fmt: skip


def _set(meta: dict, key: str, value) -> None:
    if key.startswith("shard."):
        meta["splits"]["val"]["shards"][0][key[len("shard.") :]] = value
        return
    *path, last = key.split(".")
    for part in path:
        meta = meta[part]
    meta[last] = value


@FEW
@given(key=st.sampled_from(META_KEYS), value=st.one_of(JSON, NAMES))
def test_any_meta_json_value_is_accepted_or_one_line_naming_it(tokenized, tmp_path_factory, key, value):
    root = _copy(tokenized, tmp_path_factory.mktemp("meta"))
    meta = json.loads((root / "meta.json").read_text())
    _set(meta, key, value)
    (root / "meta.json").write_text(json.dumps(meta))
    try:
        dm = TokenShardDataModule(str(root), batch_size=2, num_workers=0, val_split="val", bad_data="fail")
        list(dm.val_dataloader())
    except LitNatError as err:  # one line naming meta.json (and the key) or the shard it lists
        message = str(err)
        shard = str(root / value) if key == "shard.name" and isinstance(value, str) else "val-000000.tar"
        assert "\n" not in message and message.startswith((str(root / "meta.json"), shard)), message


# ---------------------------------------------------------------------------------------------- shard integrity
def test_a_shard_flipped_after_tokenize_is_refused_by_the_reader(tokenized, tmp_path):
    root = _copy(tokenized, tmp_path)
    shard = root / "val-000000.tar"
    assert len([k for b in _dataset(root) for k in b["key"]]) == 6  # whole: read, and the verdict cached
    data = bytearray(shard.read_bytes())
    data[data.index(b"\x93NUMPY") + 128] ^= 1  # one bit of one token id: same size, still a valid tar, id in range
    shard.write_bytes(bytes(data))
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # (mtime ticks may be coarser than this test)
    message = (f"{shard}: {len(data)} bytes whose sha256 differs from its record val-000000.json ({len(data)} bytes): "
               "truncated, bit-rotted or modified since tokenize wrote it")  # fmt: skip
    with pytest.raises(DataError) as err:
        list(_dataset(root))
    assert str(err.value) == message
    with pytest.raises(DataError, match="sha256 differs"):
        next(read_range(shard, 2, 3))  # a partial read checks the whole shard too
    with pytest.warns(UserWarning, match="skipping bad samples of val-000000.tar .*sha256 differs"):
        with pytest.raises(DataError, match="no readable sample"):  # every sample of the split is in that shard
            list(_dataset(root, bad_data="skip"))
    rehash_record(shard)  # a record that describes the bytes again: read (the samples' own checks still apply)
    assert len([k for b in _dataset(root) for k in b["key"]]) == 6


def test_a_damaged_record_is_one_line_naming_it(tokenized, tmp_path):
    root = _copy(tokenized, tmp_path)
    record = root / "val-000000.json"
    for text, expected in [
        ("{", "unreadable shard record"),
        ("[]", "must be a JSON object"),
        (json.dumps({**json.loads(record.read_text()), "sha256": 5}), "key 'sha256' must be"),
    ]:
        record.write_text(text)
        with pytest.raises(DataError, match=expected) as err:
            check_shard(root / "val-000000.tar")
        assert str(err.value).startswith(str(record)) and "\n" not in str(err.value)
    record.unlink()  # no record (a ShardWriter root): nothing to check against
    check_shard(root / "val-000000.tar")


# ---------------------------------------------------------------------------------------------- one line, exit 2
def _entry(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lit_nat", *argv])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    return exit_info.value.code, capsys.readouterr().err


def test_tokenize_mistakes_and_yaml_tags_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "images").mkdir()
    pwned = tmp_path / "pwned"
    code, err = _entry(monkeypatch, capsys, "tokenize", "--images", str(tmp_path / "images"), "--out",
                       str(tmp_path / "out"), "--tokenizer", "patchmean", "--tokenizer_arg",
                       f"levels=!!python/object/apply:os.system ['touch {pwned}']")  # fmt: skip
    assert code == 2 and not pwned.exists() and len(err.strip().splitlines()) == 1
    assert err.startswith("lit_nat: error: --tokenizer_arg \"levels=!!python/object/apply:os.system") and \
        err.endswith("not a plain YAML value (could not determine a constructor for the tag "
                     "'tag:yaml.org,2002:python/object/apply:os.system')\n")  # fmt: skip
    code, err = _entry(monkeypatch, capsys, "tokenize", "--images", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert (code, err) == (2, f"lit_nat: error: --images {tmp_path / 'nope'}: no such folder\n")
    code, err = _entry(monkeypatch, capsys, "tokenize-verify", "--root", str(tmp_path))
    assert code == 2 and err.startswith(f"lit_nat: error: no tokenisation plan {tmp_path}/tokenize_train_plan.json")


# ---------------------------------------------------------------------------------------------- exact resume
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_an_exact_resume_says_so_instead_of_lightnings_not_resumable_warning(tokenized, tmp_path, caplog):
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 2)

        def training_step(self, batch, batch_idx):
            return self.emb(batch["ids"]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(steps: int, *callbacks) -> L.Trainer:
        return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=list(callbacks),
                         enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip

    def data() -> TokenShardDataModule:  # 6 samples, batches of 1: 6 per epoch
        return TokenShardDataModule(str(tokenized), batch_size=1, num_workers=0, train_split="val")

    saver = L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=2, save_top_k=-1)
    trainer(3, saver).fit(Tiny(), data())  # saves step=2.ckpt: 2 of 6 batches, mid-epoch
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        trainer(4).fit(Tiny(), data(), ckpt_path=tmp_path / "step=2.ckpt")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert "data: resuming epoch 0 exactly after its first 2 batches" in caplog.text


def test_a_shardwriter_overwriting_a_tokenized_split_drops_its_stale_records(tokenized, tmp_path):
    """The records describe the shards tokenize wrote; once ShardWriter replaces them, the reader must not refuse
    the new shards as 'modified'."""
    root = _copy(tokenized, tmp_path)
    meta = read_metadata(root)
    assert (root / "val-000000.json").exists()
    space = dict(codebook_size=meta.codebook_size, grid_size=meta.grid_size, num_classes=meta.num_classes)
    with ShardWriter(root, "val", tokenizer_config=meta.tokenizer, overwrite=True, **space) as writer:
        for i in range(4):
            writer.write([i % meta.codebook_size] * (meta.grid_size[0] * meta.grid_size[1]), i % meta.num_classes)
    assert not list(root.glob("val-*.json"))
    assert len([k for b in _dataset(root) for k in b["key"]]) == 4
