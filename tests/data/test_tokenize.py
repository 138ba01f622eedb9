"""Image folder -> token shards: the ADM centre crop, the listing, resumable and parallel tokenisation, refusals,
verification and finalisation, the DataModule on the result, and the SLURM script's arguments."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lit_nat.data.tokenize_plan as plan_module
from lit_nat.commands.cli import main
from lit_nat.data import TokenShardDataModule, read_metadata
from lit_nat.data.imagefolder import center_crop_arr, list_image_folder, read_class_list, sample_keys
from lit_nat.data.tokenize import tokenize_folder
from lit_nat.data.tokenize_plan import TokenizeError
from lit_nat.data.tokenize_verify import verify_split
from lit_nat.tokenizers import TOKENIZERS, Tokenizer
from tests.helpers.cli import command
from tests.helpers.tokenizers import PatchMeanTokenizer


def parsed_options(argv: list[str]):
    """The options a command line gives its command (parsed by the real parser, nothing run)."""
    from lit_nat.commands import COMMANDS
    from lit_nat.commands.parsing import command_parser, parse

    return parse(command_parser(argv[0], COMMANDS[argv[0]].function), argv[1:])


tokenize = command("tokenize")
verify = command("tokenize-verify")

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["n001", "n002", "n003"]
SIZES = [(40, 30), (64, 80), (33, 33), (100, 50), (32, 32)]  # (width, height): upscale, downscale, square, ...
MODES = [("RGB", "JPEG"), ("L", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("P", "gif")]  # per image of a class


@pytest.fixture(autouse=True)
def _registered_test_tokenizer(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, "patchmean", PatchMeanTokenizer)
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)


def _gradient(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    slope = rng.integers(-3, 4, 3)
    arr = rng.integers(0, 256, 3) + (xx + yy)[..., None] * slope
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_folder(root: Path, classes=CLASSES, seed: int = 0) -> Path:
    """Per class: a JPEG, a grey PNG, an RGBA PNG, a CMYK JPEG and a palette GIF of assorted sizes; one image in a
    sub-folder; a truncated JPEG and a text file named .jpg (both must be skipped); files that are not listed."""
    rng = np.random.default_rng(seed)
    for name in reversed(classes):  # creation order must not matter
        d = root / name
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            mode, ext = MODES[i]
            _gradient(rng, w, h).convert(mode).save(d / f"img{i}.{ext}")
        (d / "readme.txt").write_text("not listed")
        (d / ".hidden").mkdir()
        _gradient(rng, 20, 20).save(d / ".hidden" / "x.png")
    (root / classes[-1] / "sub").mkdir()
    _gradient(rng, 48, 36).save(root / classes[-1] / "sub" / "deep.png")
    truncated = root / classes[1] / "broken.jpg"
    _gradient(rng, 120, 90).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:600])
    (root / classes[0] / "notes.jpg").write_text("this is not a JPEG")
    return root


@pytest.fixture
def images(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def _args(images: Path, out: Path, *extra: str) -> list[str]:
    common = ["--images", str(images), "--out", str(out), "--resolution", "32", "--tokenizer", "patchmean"]
    return [*common, "--images_per_shard", "4", "--num_workers", "0", "--device", "cpu", *extra]


def _expected(images: Path, tokenizer: Tokenizer, files: list[str], labels: list[int]) -> dict[str, tuple]:
    """key -> (ids, label) for every readable file and its flip, computed directly (not through the command)."""
    out = {}
    for key, f, label in zip(sample_keys(files), files, labels):
        try:
            with Image.open(images / f) as image:
                image.load()
                crop = center_crop_arr(image, 32)
        except OSError:
            continue
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        out[key] = (tokenizer.encode(x)[0], label)
        out[key + "_flip"] = (tokenizer.encode(x.flip(-1))[0], label)
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every output file's bytes, except the report (it names its own path)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file() and "report" not in p.name}


# ---------------------------------------------------------------------------------------------- preprocessing


def test_center_crop_halves_with_box_then_crops_the_centre():
    blocks = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    big = Image.fromarray(blocks.repeat(4, 0).repeat(4, 1))  # 600 x 400, constant 4x4 blocks
    # 400 >= 2*100: halve to 300x200, 200 >= 200: halve to 150x100 (exactly `blocks`); scale 1; centre 100 columns
    out = center_crop_arr(big, 100)
    assert out.dtype == np.uint8 and out.shape == (100, 100, 3)
    np.testing.assert_array_equal(out, blocks[:, 25:125])
    direct = np.asarray(big.resize((150, 100), Image.Resampling.BICUBIC))[:, 25:125]
    assert (direct != out).any()  # a single bicubic resize would give another image: the halving loop ran


@pytest.mark.parametrize(("w", "h", "resized", "offset"), [(45, 30, (48, 32), (0, 8)), (50, 70, (32, 45), (6, 0))])
def test_center_crop_bicubic_rounding_and_offsets(w, h, resized, offset):
    image = _gradient(np.random.default_rng(1), w, h)
    expected = np.asarray(image.resize(resized, Image.Resampling.BICUBIC))
    top, left = offset
    np.testing.assert_array_equal(center_crop_arr(image, 32), expected[top : top + 32, left : left + 32])


def test_center_crop_converts_every_mode_to_rgb():
    image = _gradient(np.random.default_rng(2), 32, 32)
    np.testing.assert_array_equal(center_crop_arr(image, 32), np.asarray(image))  # the right size: untouched
    for mode in ("L", "RGBA", "CMYK", "P", "LA", "1"):
        converted = image.convert(mode)
        out = center_crop_arr(converted, 16)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, center_crop_arr(converted.convert("RGB"), 16))


def test_listing_order_labels_keys_and_class_lists(images, tmp_path):
    listing = list_image_folder(images)
    assert listing.classes == tuple(CLASSES)
    assert listing.files[:7] == (
        "n001/img0.JPEG", "n001/img1.png", "n001/img2.png", "n001/img3.jpg", "n001/img4.gif", "n001/notes.jpg",
        "n002/broken.jpg",
    )  # fmt: skip
    assert listing.files[-1] == "n003/sub/deep.png" and len(listing) == 18
    assert listing.labels == (0,) * 6 + (1,) * 6 + (2,) * 6
    shuffled = listing.shuffled(0)
    assert sorted(shuffled.files) == sorted(listing.files) and shuffled.files != listing.files
    assert shuffled == listing.shuffled(0) and shuffled.sha256() != listing.sha256()
    keys = sample_keys(listing.files)
    assert keys[0] == "n001_img0" and keys[-1] == "n003_sub_deep"
    clash = sample_keys(["a/x.jpg", "a/x.png", "a/y.jpg", "a/y_flip.png"])
    assert len(set(clash + [k + "_flip" for k in clash])) == 8 and clash[0].startswith("a_x_")
    assert clash == sample_keys(["a/x.jpg", "a/x.png", "a/y.jpg", "a/y_flip.png"][::-1])[::-1]  # order-free
    # an explicit list (ImageNet's LOC_synset_mapping.txt format works): labels follow it
    mapping = tmp_path / "synsets.txt"
    mapping.write_text("n000 zero, nothing\nn003 three\n\nn002 two\nn001 one  # comment\n")
    assert read_class_list(mapping) == ["n000", "n003", "n002", "n001"]
    relabelled = list_image_folder(images, read_class_list(mapping))
    assert relabelled.files == listing.files and relabelled.labels == (3,) * 6 + (2,) * 6 + (1,) * 6
    with pytest.raises(ValueError, match="not in the class list.*n003"):
        list_image_folder(images, ["n001", "n002"])
    (images / "loose.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="directly"):
        list_image_folder(images)


# ---------------------------------------------------------------------------------------------- tokenisation


def test_tokenize_skips_bad_files_and_the_datamodule_reads_the_result(images, tmp_path, capsys):
    out = tmp_path / "out"
    main(["tokenize", *_args(images, out, "--batch_size", "3", "--shuffle_seed", "7")])  # python -m lit_nat tokenize
    summary = tokenize(_args(images, out, "--shuffle_seed", "7"))  # again: everything is complete already
    assert summary["written"] == 0
    assert summary["complete"] and summary["report"]["ok"] and summary["report"]["finalized"]
    assert "images/s" in capsys.readouterr().err  # progress with rate and ETA
    meta = read_metadata(out)
    assert (meta.codebook_size, meta.grid_size, meta.num_classes) == (64, (2, 2), 3)
    assert meta.tokenizer == {"name": "patchmean", "image_size": 32, "levels": 4, "patch": 16}
    assert meta.extra["classes"] == CLASSES and meta.extra["tokenize"]["train"]["flip"] is True
    listing = list_image_folder(images)
    order = listing.shuffled(7).files  # 18 images in 5 shards of 4; the 2 bad ones skipped, the rest doubled
    bad = {"n001/notes.jpg", "n002/broken.jpg"}
    assert meta.splits["train"].shard_sizes == [2 * len(set(order[i : i + 4]) - bad) for i in range(0, 18, 4)]
    skipped = (out / "tokenize_train_skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == sorted(bad)
    assert all("Error" in line.split("\t")[1] for line in skipped)
    index = next(i for i, f in enumerate(order) if f == "n002/broken.jpg") // 4
    record = json.loads((out / f"train-{index:06d}.json").read_text())
    assert record["skipped"][0]["file"] == "n002/broken.jpg" and "runcated" in record["skipped"][0]["reason"]
    assert record["num_samples"] == 2 * (record["num_images"] - len(record["skipped"]))
    expected = _expected(images, PatchMeanTokenizer(), list(listing.files), list(listing.labels))
    assert len(expected) == 32
    dm = TokenShardDataModule(
        str(out), batch_size=4, val_batch_size=5, num_workers=0, return_keys=True, val_split="train"
    )
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(expected) and keys[1] == keys[0] + "_flip"
    assert {keys[2 * i].split("_")[0] for i in range(4)} != {keys[0].split("_")[0]}  # shuffled: classes mix
    ids, labels = torch.cat([b["ids"] for b in batches]), torch.cat([b["label"] for b in batches])
    assert torch.equal(ids, torch.stack([expected[k][0] for k in keys]))
    assert labels.tolist() == [expected[k][1] for k in keys]
    assert not torch.equal(ids[0::2], ids[1::2])  # the flips are not copies

    # val into the same root: no flips by default, a subset of the classes needs train's list
    val = tmp_path / "val"
    (val / "n002").mkdir(parents=True)
    _gradient(np.random.default_rng(5), 70, 40).save(val / "n002" / "v.png")
    with pytest.raises(TokenizeError, match="other class names.*--classes .*classes.txt"):
        tokenize(_args(val, out, "--split", "val"))
    assert read_class_list(out / "classes.txt") == CLASSES
    tokenize(_args(val, out, "--split", "val", "--classes", str(out / "classes.txt")))
    meta = read_metadata(out)
    assert meta.splits["val"].num_samples == 1 and meta.splits["train"].num_samples == 32
    assert meta.extra["tokenize"]["val"]["flip"] is False
    (batch,) = TokenShardDataModule(str(out), batch_size=4, num_workers=0, return_keys=True).val_dataloader()
    assert batch["key"] == ["n002_v"] and batch["label"].tolist() == [1]


def test_interrupted_parallel_and_resumed_runs_write_identical_bytes(images, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    tokenize(_args(images, ref, "--batch_size", "4"))
    out = tmp_path / "out"
    tokenize(_args(images, out, "--batch_size", "3", "--task_index", "1", "--num_tasks", "2"))  # shards 1 and 3
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000001.tar", "train-000003.tar"]
    assert not (out / "meta.json").exists()  # array tasks never finalise

    real = plan_module.atomic_write_bytes
    host = socket.gethostname()

    def killed_mid_write(path, data):
        if Path(path).name == "train-000002.tar":  # the record is already written: a kill mid-write
            Path(path).with_name(f".train-000002.tar.{host}.999999999.tmp").write_bytes(data[: len(data) // 2])
            raise RuntimeError("killed")
        return real(path, data)

    monkeypatch.setattr(plan_module, "atomic_write_bytes", killed_mid_write)
    with pytest.raises(RuntimeError, match="killed"):
        tokenize(_args(images, out, "--batch_size", "2", "--task_index", "0", "--num_tasks", "2"))
    monkeypatch.setattr(plan_module, "atomic_write_bytes", real)
    assert (out / "train-000000.tar").exists() and (out / "train-000002.json").exists()
    assert not (out / "train-000002.tar").exists() and list(out.glob(".train-000002.tar.*.tmp"))
    (out / f".train-000004.tar.{host}.999999998.tmp").write_bytes(b"left over by a crash")
    with pytest.raises(SystemExit) as exit_info:  # incomplete: verification says so and does not finalise
        verify(["--root", str(out), "--finalize"])
    assert exit_info.value.code == 1 and not (out / "meta.json").exists()
    report = json.loads((out / "tokenize_train_report.json").read_text())
    assert report["problems"] == [f"train-00000{i}.tar: missing (not tokenised yet)" for i in (2, 4)]

    summary = tokenize(_args(images, out, "--batch_size", "5", "--num_workers", "2"))  # resume: 2 of 5 shards left
    assert summary["written"] == 2 and summary["report"]["finalized"]
    assert not list(out.glob(".*.tmp"))  # the dead writers' temporary files were removed
    assert _files(out) == _files(ref)  # shards, records, plan, meta.json, skipped list: byte for byte


def test_refusals_leave_the_root_untouched(images, tmp_path):
    out = tmp_path / "out"
    tokenize(_args(images, out))
    before = _files(out)
    refusals = [
        (["--tokenizer_arg", "levels=3"], "plans another tokenisation.*tokenizer"),
        (["--resolution", "48"], "resolution 32 != 48"),
        (["--flip", "false"], "flip True != False"),
        (["--images_per_shard", "5"], "images_per_shard"),
        (["--sorted"], "order"),
    ]
    for extra, message in refusals:
        with pytest.raises(TokenizeError, match=message):
            tokenize(_args(images, out, *extra))
    _gradient(np.random.default_rng(9), 40, 40).save(images / "n002" / "new.png")
    with pytest.raises(TokenizeError, match="num_images 18 != 19.*files_sha256 differ"):
        tokenize(_args(images, out))
    assert _files(out) == before
    with pytest.raises(TokenizeError, match="multiple of 16"):
        tokenize(_args(images, tmp_path / "other", "--resolution", "40", "--tokenizer_arg", "image_size=40"))
    with pytest.raises(TokenizeError, match=r"encodes \(32, 32\) images but --resolution is 48"):
        tokenize(_args(images, tmp_path / "other", "--resolution", "48", "--tokenizer_arg", "image_size=32"))
    with pytest.raises(TokenizeError, match="unknown tokenizer 'nope'"):
        tokenize(_args(images, tmp_path / "other", "--tokenizer", "nope"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(TokenizeError, match="without its record"):
        tokenize(_args(images, foreign))
    assert (foreign / "train-000000.tar").read_bytes() == b"someone else's"
    summary = tokenize(_args(images, tmp_path / "dry", "--dry_run"))  # sizes an array job; writes nothing
    assert summary["num_shards"] == 5 and summary["plan"]["num_images"] == 19 and not (tmp_path / "dry").exists()
    with pytest.raises(TokenizeError, match="task 2 of 2"):
        tokenize_folder(images, tmp_path / "x", PatchMeanTokenizer(), resolution=32, task_index=2, num_tasks=2)


def test_verify_reports_tokens_decodes_and_catches_tampering(images, tmp_path, capsys):
    out = tmp_path / "out"
    tokenize(_args(images, out, "--flip=false", "--split", "val"))
    capsys.readouterr()
    report = verify(["--root", str(out), "--split", "val", "--decode", "3"])
    assert "codes used" in capsys.readouterr().out
    assert report == json.loads((out / "tokenize_val_report.json").read_text())
    assert report["num_samples"] == report["expected_samples"] == 16 and report["skipped_images"] == 2
    tokens = report["tokens"]
    assert tokens["tokens"] == 16 * 4 and tokens["codebook_size"] == 64 and 1 < tokens["codes_used"] <= 64
    assert 0 < tokens["entropy_bits"] <= np.log2(tokens["codes_used"]) + 1e-6
    assert sum(c["fraction"] for c in tokens["most_frequent"]) <= 1
    assert report["labels"] == {
        "classes": 3, "classes_present": 3, "min_per_class": 5, "max_per_class": 6, "empty_classes": []
    }  # fmt: skip
    decoded = [Path(p) for p in report["decoded"]]
    assert len(decoded) == 3 and all(p.is_file() for p in decoded)
    first = next(iter(TokenShardDataModule(str(out), batch_size=3, num_workers=0, return_keys=True).val_dataloader()))
    assert decoded[0].name == first["key"][0] + ".png"
    image = PatchMeanTokenizer().decode(first["ids"][:1])[0]
    np.testing.assert_array_equal(np.asarray(Image.open(decoded[0])), (image * 255).round().byte().permute(1, 2, 0))

    meta = (out / "meta.json").read_bytes()
    shard = out / "val-000001.tar"
    data = bytearray(shard.read_bytes())
    data[data.index(b"\x93NUMPY") + 128] ^= 1  # one bit of the first token: same size, still a valid tar
    shard.write_bytes(bytes(data))
    assert any("val-000001.tar" in p and "sha256" in p for p in verify_split(out, "val")["problems"])
    shard.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(SystemExit) as exit_info:
        verify(["--root", str(out), "--split", "val", "--finalize"])
    assert exit_info.value.code == 1 and "PROBLEM: val-000001.tar" in capsys.readouterr().out
    assert (out / "meta.json").read_bytes() == meta


# ---------------------------------------------------------------------------------------------- SLURM


def test_slurm_tokenize_script_passes_options_the_commands_accept(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (shims / "echo-args").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "LIT_NAT_PYTHON": "echo-args",
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_MIN": "2",
        "SLURM_ARRAY_TASK_COUNT": "8",
        "SLURM_CPUS_PER_TASK": "16",
        "TOKENIZER_CKPT": "/ckpt/vqgan.pth",
        "RESOLUTION": "512",
    }
    script = str(REPO / "scripts/slurm/tokenize.sbatch")
    text = Path(script).read_text()
    assert "#SBATCH --array=" in text and "#SBATCH --gres=gpu:1" in text and "afterok" in text

    def run(*args: str) -> list[str]:
        done = subprocess.run(["bash", script, *args], env=env, check=True, capture_output=True, text=True)
        argv = done.stdout.splitlines()
        assert argv[:2] == ["-m", "lit_nat"]
        return argv[2:]

    argv = run("/data/imagenet/train", "/data/in512", "train", "--images_per_shard", "500")
    assert argv[0] == "tokenize"
    args = parsed_options(argv)
    assert (args.images, args.out, args.split, args.resolution) == ("/data/imagenet/train", "/data/in512", "train", 512)
    assert (args.tokenizer, args.checkpoint, args.device, args.num_workers) == ("vqgan", "/ckpt/vqgan.pth", "cuda", 15)
    assert (args.task_index, args.num_tasks, args.images_per_shard) == (5, 8, 500)
    argv = run("--finalize", "/data/in512", "train")
    assert argv[0] == "tokenize-verify"
    args = parsed_options(argv)
    assert (args.root, args.split, args.finalize, args.decode) == ("/data/in512", "train", True, 8)
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", "--help"])
    assert exit_info.value.code == 0


def test_command_line_mistakes_are_one_line_before_any_work(tmp_path):
    with pytest.raises(TokenizeError, match=f"--images {tmp_path / 'nope'}: no such folder"):
        tokenize(["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(TokenizeError, match="tokenizer 'vqgan' .*missing 1 required positional argument: 'checkpoint'"):
        tokenize(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")])  # no --checkpoint
    assert not (tmp_path / "out").exists()
