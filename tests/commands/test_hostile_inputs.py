"""Hostile inputs to ``edit``, ``sample``, ``search`` and every flag: images of any mode and dtype are converted by
their true range (never saturated), unreadable, empty or non-image files are one line naming them, names from files
never become paths, and every user mistake met by the command line is one line ``lit_nat: error: ...``, exit 2.

Property-based where it fits (hypothesis: random PIL modes, dtypes, shapes, ranges and npz keys); the reference
conversions here are written out per mode, independently of :mod:`lit_nat.generation.editing`.
"""

from __future__ import annotations

import io
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from lit_nat.commands.cli import entry
from lit_nat.core.errors import LitNatError, UnsafeNameError, UsageError
from lit_nat.core.io import check_name
from lit_nat.generation.editing import load_images, parse_mask, read_image_file, to_unit_float
from tests.conftest import fit_tiny_checkpoint, write_random_shards
from tests.helpers.cli import run_lit_nat
from tests.helpers.tiny import UVIT_ARCH

REPO = Path(__file__).resolve().parents[2]
LUMA = np.array([0.299, 0.587, 0.114])
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PNG_MODES = ("1", "L", "LA", "P", "P+alpha", "RGB", "RGBA", "I;16")


# ------------------------------------------------------------------------------------------------ the reference rule
def reference_colour(samples: np.ndarray, mode: str, palette: np.ndarray | None) -> np.ndarray:
    """What a pixel of ``mode`` means, written out per mode: ``(H, W, 1 or 3)`` in [0, 1], alpha over black."""
    if mode == "1":
        return samples.astype(np.float64)[..., None]
    if mode == "I;16":
        return samples.astype(np.float64)[..., None] / 65535
    if mode.startswith("P"):
        samples = palette[samples]  # (H, W, 3 or 4) bytes
    unit = samples.astype(np.float64) / 255
    unit = unit[..., None] if unit.ndim == 2 else unit
    has_alpha = mode in ("LA", "RGBA", "P+alpha")
    return unit[..., :-1] * unit[..., -1:] if has_alpha else unit


def reference_channels(colour: np.ndarray, channels: int) -> np.ndarray:
    if colour.shape[-1] == channels:
        return colour
    return (colour @ LUMA)[..., None] if channels == 1 else np.repeat(colour, 3, axis=-1)


@st.composite
def png_images(draw) -> tuple[str, np.ndarray, np.ndarray | None, Image.Image]:
    """A random image in one of the PNG modes: ``(mode, samples, palette, PIL image)``."""
    mode = draw(st.sampled_from(PNG_MODES))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    palette = None
    if mode == "1":
        samples = draw(arrays(np.bool_, shape))
        image = Image.fromarray(samples)
    elif mode == "I;16":
        samples = draw(arrays(np.uint16, shape))
        image = Image.fromarray(samples)
    elif mode.startswith("P"):
        entries = draw(st.integers(1, 8))
        palette = draw(arrays(np.uint8, (entries, 4 if mode == "P+alpha" else 3)))
        samples = draw(arrays(np.uint8, shape, elements=st.integers(0, entries - 1)))
        image = Image.fromarray(samples, "P")
        image.putpalette(palette[:, :3].tobytes())
        if mode == "P+alpha":  # a tRNS chunk: one alpha per palette entry
            image.info["transparency"] = palette[:, 3].tobytes()
    else:
        depth = {"L": (), "LA": (2,), "RGB": (3,), "RGBA": (4,)}[mode]
        samples = draw(arrays(np.uint8, shape + depth))
        image = Image.fromarray(samples, mode)
    return mode, samples, palette, image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=image.info.get("transparency"))
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- images in any mode
@PROPERTY
@given(image=png_images(), channels=st.sampled_from([1, 3]))
def test_a_png_of_every_mode_is_converted_by_its_true_range(image, channels):
    mode, samples, palette, pil = image
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "x.png").write_bytes(png_bytes(pil))
        pixels, names = load_images(folder, samples.shape[:2], channels)
    want = reference_channels(reference_colour(samples, mode, palette), channels)
    assert names == ["x"] and pixels.shape == (1, channels, *samples.shape[:2])
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), want, atol=1e-4)


def test_a_16_bit_png_is_scaled_not_saturated(tmp_path):
    levels = np.array([[0, 300, 32768, 65535]], dtype=np.uint16)  # 300: dark, which clipping to 8 bits made white
    Image.fromarray(levels).save(tmp_path / "deep.png")
    pixels, _ = load_images(tmp_path, (1, 4), 1)
    np.testing.assert_allclose(pixels[0, 0, 0].numpy(), levels[0] / 65535, atol=1e-6)
    assert float(pixels.max()) == 1.0 and float(pixels[0, 0, 0, 1]) < 0.01


@pytest.mark.parametrize("mode", ["F", "I"])
def test_float_and_32_bit_modes_of_other_formats(tmp_path, mode):
    values = np.array([[0.0, 0.25, 1.0]], np.float32) if mode == "F" else np.array([[0, 300, 65535]], np.int32)
    Image.fromarray(values, mode).save(tmp_path / "x.tiff")
    unit = to_unit_float(read_image_file(tmp_path / "x.tiff"), "x")
    np.testing.assert_allclose(unit, values / (1 if mode == "F" else 65535), atol=1e-6)
    Image.fromarray(np.array([[2.0]], np.float32), "F").save(tmp_path / "bright.tiff")
    with pytest.raises(UsageError, match=r"bright.tiff: float pixel values must lie in \[0, 1\], found \[2, 2\]"):
        to_unit_float(read_image_file(tmp_path / "bright.tiff"), str(tmp_path / "bright.tiff"))


@st.composite
def npz_stacks(draw) -> np.ndarray:
    """A stack (N, H, W[, C]) of a dtype with a known range, in that range."""
    dtype = draw(st.sampled_from([np.bool_, np.uint8, np.uint16, np.float16, np.float32, np.float64]))
    depth = draw(st.sampled_from([(), (1,), (2,), (3,), (4,)]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), *depth)
    elements = st.floats(0, 1, width=np.dtype(dtype).itemsize * 8) if np.dtype(dtype).kind == "f" else None
    return draw(arrays(dtype, shape, elements=elements))


def reference_unit(stack: np.ndarray) -> np.ndarray:
    scale = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(stack.dtype, 1)
    unit = stack.astype(np.float64) / scale
    unit = unit[..., None] if unit.ndim == 3 else unit
    return unit[..., :-1] * unit[..., -1:] if unit.shape[-1] in (2, 4) else unit


@PROPERTY
@given(stack=npz_stacks(), channels=st.sampled_from([1, 3]))
def test_npz_arrays_of_every_known_dtype_are_converted_by_their_true_range(stack, channels):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "images.npz")
        np.savez(path, arr_0=stack)
        pixels, names = load_images(path, stack.shape[1:3], channels)
    assert names == [f"arr_0_{i}" for i in range(len(stack))]
    want = reference_channels(reference_unit(stack), channels)
    np.testing.assert_allclose(pixels.permute(0, 2, 3, 1).numpy(), want, atol=1e-4)


@PROPERTY
@given(stack=arrays(np.float32, (1, 2, 2), elements=st.floats(-2, 3, width=32) | st.just(float("nan"))))
def test_floats_outside_0_1_are_one_line_naming_the_file_and_the_range(stack):
    out_of_range = bool(np.isnan(stack).any() or stack.min() < 0 or stack.max() > 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "floats.npz")
        np.savez(path, arr_0=stack)
        if not out_of_range:
            load_images(path, (2, 2), 1)
            return
        message = r"floats.npz:arr_0_0: float pixel values must lie in \[0, 1\], found \["
        with pytest.raises(UsageError, match=message) as error:
            load_images(path, (2, 2), 1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_integer_dtypes_of_unknown_range_are_refused(tmp_path, dtype):
    np.savez(tmp_path / "ints.npz", arr_0=np.zeros((1, 2, 2), dtype))
    with pytest.raises(UsageError, match=rf"ints.npz:arr_0_0: pixels of dtype {np.dtype(dtype)} have no known range"):
        load_images(tmp_path / "ints.npz", (2, 2), 1)


@PROPERTY
@given(image=png_images())
def test_a_mask_image_of_every_mode_is_thresholded_at_half_its_true_range(image):
    mode, samples, palette, pil = image
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "mask.png").write_bytes(png_bytes(pil))
        keep = parse_mask(str(Path(folder, "mask.png")), samples.shape[:2]).numpy()
    grey = reference_channels(reference_colour(samples, mode, palette), 1)[..., 0]
    clear = np.abs(grey - 0.5) > 1e-4  # (a tie at exactly half may round either way)
    assert np.array_equal(keep[clear], (grey < 0.5)[clear])


# ------------------------------------------------------------------------------------------------ unreadable files
def _png_head() -> bytes:
    return png_bytes(Image.fromarray(np.zeros((4, 4), np.uint8)))[:30]  # a PNG cut off inside its header chunk


BAD_IMAGES = {"zero-byte": b"", "text": b"hello, not an image\n", "truncated": _png_head()}


@pytest.mark.parametrize("content", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
@pytest.mark.parametrize("role", ["images", "mask"])
def test_an_unreadable_image_or_mask_is_one_line_naming_the_file(tmp_path, content, role):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a.png")
    bad = (folder if role == "images" else tmp_path) / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(LitNatError) as error:
        load_images(folder, (4, 4), 1) if role == "images" else parse_mask(str(bad), (4, 4))
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def _object_array_npz(path: Path) -> None:
    np.savez(path, arr_0=np.array([{"a": 1}], dtype=object))


BAD_NPZ = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("not an archive"),
    "no arrays": lambda p: np.savez(p),
    "no images": lambda p: np.savez(p, arr_0=np.zeros((0, 4, 4, 3), np.uint8)),
    "pickled objects": _object_array_npz,
    "one image, no stack": lambda p: np.savez(p, arr_0=np.zeros((4, 4), np.uint8)),
}


@pytest.mark.parametrize("write", BAD_NPZ.values(), ids=BAD_NPZ.keys())
def test_an_unreadable_or_empty_npz_is_one_line_naming_the_file(tmp_path, write):
    path = tmp_path / "images.npz"
    write(path)
    with pytest.raises(LitNatError) as error:
        load_images(path, (4, 4), 3)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ names are never paths
@settings(max_examples=50, deadline=None)
@given(key=st.text(alphabet=st.sampled_from(list("ab._/\\\n\x00")), max_size=5))
def test_npz_keys_become_output_names_only_when_they_are_plain_names(key):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "x.npz")
        try:
            np.savez(path, **{key: np.zeros((2, 2, 2), np.uint8)})
        except (ValueError, OSError):  # a name the zip format itself cannot hold
            return
        with np.load(path) as data:
            (key,) = data.files  # as the archive holds it (zip names end at a NUL byte)
        try:
            check_name(key, "test")
        except UnsafeNameError:
            with pytest.raises(UnsafeNameError, match="x.npz: array name"):
                load_images(path, (2, 2), 1)
            return
        _, names = load_images(path, (2, 2), 1)
    assert names == [f"{key}_0", f"{key}_1"]
    assert all(Path(folder, "edited", n).parent == Path(folder, "edited") for n in names)


@pytest.mark.parametrize("names", [["..png"], ["a.png", "a.jpg"], ["new\nline.png"]])
def test_image_files_whose_stems_are_not_plain_unique_names_are_refused(tmp_path, names):
    for name in names:
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / name, format="PNG")
    with pytest.raises(LitNatError, match=r"not a plain file name|several images named 'a'"):
        load_images(tmp_path, (2, 2), 1)


# ---------------------------------------------------------------------------- the command line: one line, exit 2
def run_entry(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """``python -m lit_nat <argv>`` through the real console entry: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lit_nat", *argv])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and "Traceback" not in err and "usage:" not in err, err
    assert errors == [err.strip().splitlines()[-1]] and errors[0].startswith("lit_nat: error: "), err
    assert expected in errors[0], errors[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny class-conditional checkpoint over a 4x4 pixel tokenizer, its config, and a folder of 4x4 images."""
    root = tmp_path_factory.mktemp("tiny")
    shards = write_random_shards(root / "shards", codebook_size=12, grid=4, num_classes=3)
    with pytest.MonkeyPatch.context() as patch:  # (the autouse argv fixture is per test)
        patch.setattr(sys, "argv", ["lit_nat"])
        config, ckpt = fit_tiny_checkpoint(root, shards, steps=2)
    images = root / "images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(images / "a.png")
    return config, ckpt, images


@pytest.mark.parametrize("options, expected", [
    (["--mask", "border:abc"], "--mask 'border:abc': expected border:<width>"),
    (["--mask", "half", "--seeds", "0", "0"], "--seeds [0, 0]: seed 0 is given twice"),
    (["--mask", "half", "--dilate", "-3"], "--dilate -3: expected a number of tokens >= 0"),
    (["--mask", "half", "--dilate", "abc"], "--dilate: expected int, got 'abc'"),
])  # fmt: skip
def test_edit_mistakes_are_one_line(tiny, tmp_path, monkeypatch, capsys, options, expected):
    config, ckpt, images = tiny
    code, err = run_entry(monkeypatch, capsys, "edit", f"--config={config}", f"--ckpt_path={ckpt}",
                          f"--images={images}", f"--out={tmp_path / 'out'}", *options)  # fmt: skip
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "out" / "edits.json").exists()


def test_a_prompts_file_that_is_not_utf8_is_one_line_naming_it(tiny, tmp_path, monkeypatch, capsys):
    config, ckpt, _ = tiny
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("un caf\u00e9\n".encode("latin-1"))
    code, err = run_entry(monkeypatch, capsys, "sample", f"--ckpt_path={ckpt}", f"--prompts_file={prompts}",
                          "--num_samples=2", f"--out={tmp_path / 'out'}")  # fmt: skip
    assert_one_line_error(code, err, f"{prompts}: the prompts file is not UTF-8 text")


@pytest.mark.parametrize("argv, expected", [
    (["sample", "--ckpt_path=x.ckpt", "--num_samples", "abc"], "--num_samples: expected int, got 'abc'"),
    (["sample", "--ckpt_path=x.ckpt", "--overwrite", "maybe"], "--overwrite: expected bool, got 'maybe'"),
    (["sample", "--ckpt_path=x.ckpt", "--seed=1.5"], "--seed: expected int, got '1.5'"),
    (["fit", f"--config={REPO / 'configs/demo_digits.yaml'}", "--trainer.max_steps=abc"],
     "--trainer.max_steps: expected int, got 'abc'"),
    (["flops", f"--config={REPO / 'configs/demo_digits.yaml'}", "--steps", "abc"], "--steps: expected int, got 'abc'"),
    (["tokenize-verify", "--no_such_option=1"], "lit_nat: error: "),
])  # fmt: skip
def test_a_type_error_in_a_flag_is_one_line_not_the_usage(monkeypatch, capsys, argv, expected):
    code, err = run_entry(monkeypatch, capsys, *argv)
    assert_one_line_error(code, err, expected)


def test_a_refused_pickle_as_the_search_extractor_weights_is_one_line(tmp_path, monkeypatch, capsys):
    from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier

    shards = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    clf = save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")
    evaluation = {"class_path": "lit_nat.callbacks.GenerativeEvaluation",
                  "init_args": {"extractor": "digits", "weights_path": str(clf), "reference_split": "val",
                                "num_samples": 4, "batch_size": 4, "inception_score": False}}  # fmt: skip
    config, ckpt = fit_tiny_checkpoint(tmp_path, shards, steps=2, callbacks=[evaluation])
    torch.save({"state_dict": {}, "hook": Path("/")}, clf)  # a Path object: refused by a weights-only load
    code, err = run_entry(monkeypatch, capsys, "search", f"--config={config}", f"--ckpt_path={ckpt}",
                          f"--out={tmp_path / 'search'}", "--num_samples=4")  # fmt: skip
    assert_one_line_error(code, err, f"{clf}: holds Python objects that a weights-only load refuses")


# ---------------------------------------------------------------------------------------------------- Ctrl-C
def test_a_ctrl_c_that_lightning_catches_itself_exits_130_saying_so(monkeypatch, capsys):
    """sample and search: Lightning catches the KeyboardInterrupt, tears the run down and exits 1; entry says SIGINT,
    that the finished files are kept, and exits 130."""
    import lightning as L
    from lightning.pytorch.trainer.call import _call_and_handle_interrupt

    def interrupted() -> None:
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
        _call_and_handle_interrupt(trainer, lambda: (_ for _ in ()).throw(KeyboardInterrupt()))

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("lit_nat.commands.cli.main", interrupted)
    try:
        with pytest.raises(SystemExit) as exit_info:
            entry()
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C while it shuts down
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "lit_nat: stopped by SIGINT; what was finished is saved, rerun to resume"


@pytest.mark.slow
def test_ctrl_c_during_fit_saves_the_current_step_like_sigterm_and_exits_130(tmp_path):
    shards = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    run = tmp_path / "run"
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 100, "save_last": True}},
        {"class_path": "tests.helpers.probes.KillAtStep",
         "init_args": {"step": 3, "signal_name": "SIGINT", "marker": str(tmp_path / "killed")}},
    ]  # fmt: skip
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 6, "limit_val_batches": 0, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run),
                    "callbacks": callbacks},
        "model": {"arch": "autonat-tiny", "arch_overrides": UVIT_ARCH},
        "data": {"root": str(shards), "batch_size": 4, "num_workers": 0},
    }))  # fmt: skip
    done = run_lit_nat("fit", f"--config={config}")
    last = run / "checkpoints" / "last.ckpt"
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"lit_nat: stopped by SIGINT after step 3: saved {last}" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "lit_nat: stopped by SIGINT; what was finished is saved, rerun to resume")
    assert torch.load(last, weights_only=False)["global_step"] == 3  # the current step, as SIGTERM saves it
