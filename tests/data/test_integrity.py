"""What we load is what we wrote: a checkpoint with flipped bytes is refused by name, never loaded as other weights.

torch.load does not check the zip's CRC-32s, so a bit-rotted checkpoint (same size, still a zip) used to load and
sample other images. :func:`lit_nat.core.checkpointing.read_checkpoint` checks them first.
"""

from __future__ import annotations

import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_nat.core.checkpointing import read_checkpoint, save_checkpoint_file
from lit_nat.core.errors import CheckpointError
from lit_nat.core.io import verify_archive

WEIGHTS = {"state_dict": {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3)}, "global_step": 7}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "model.ckpt"
    save_checkpoint_file(WEIGHTS, path)
    return path


def tensor_span(path) -> tuple[int, int]:
    """The byte range of the largest tensor record inside the archive."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
        with open(path, "rb") as f:
            f.seek(record.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        start = record.header_offset + 30 + name_len + extra_len
        return start, start + record.file_size


def test_a_flipped_byte_inside_a_tensor_is_refused_naming_the_file(written, tmp_path):
    path, data = written, written.read_bytes()
    start, end = tensor_span(path)
    damaged = bytearray(data)
    damaged[(start + end) // 2] ^= 0x10
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(damaged))
    assert isinstance(torch.load(bad, weights_only=True), dict)  # torch alone takes it
    with pytest.raises(CheckpointError, match=rf"^{bad}: damaged file .*Bad CRC-32"):
        read_checkpoint(bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_changes_nothing_loaded(written, tmp_path, position, mask):
    data = written.read_bytes()
    damaged = bytearray(data)
    damaged[int(position * len(data))] ^= mask
    bad = tmp_path / "flip.ckpt"
    bad.write_bytes(bytes(damaged))
    try:
        loaded = read_checkpoint(bad)
    except CheckpointError as err:
        assert str(err).startswith(f"{bad}: ") and "\n" not in str(err)
        return
    # a flip in the archive's padding or alignment bytes: harmless, every value is the one written
    assert loaded["global_step"] == 7
    for name, tensor in WEIGHTS["state_dict"].items():
        assert torch.equal(loaded["state_dict"][name], tensor)


def test_a_file_checked_once_is_not_read_again_until_it_changes(written, tmp_path, monkeypatch):
    data = written.read_bytes()
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(data)
    verify_archive(copy)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or pytest.fail("read again"))
    verify_archive(copy)  # cached by (path, inode, size, mtime)
    monkeypatch.undo()
    start, end = tensor_span(copy)
    damaged = bytearray(data)
    damaged[start + 5] ^= 1
    copy.write_bytes(bytes(damaged))  # a new mtime: checked again, and refused
    with pytest.raises(CheckpointError):
        verify_archive(copy)
    assert opened == []


def test_an_mmap_look_at_the_hyper_parameters_does_not_read_the_weights(written, tmp_path):
    path, data = written, written.read_bytes()
    start, _ = tensor_span(path)
    damaged = bytearray(data)
    damaged[start] ^= 1
    bad = tmp_path / "peek.ckpt"
    bad.write_bytes(bytes(damaged))
    assert read_checkpoint(bad, mmap=True)["global_step"] == 7  # a peek; the load of the weights checks
    with pytest.raises(CheckpointError):
        read_checkpoint(bad, mmap=True, verify=True)
