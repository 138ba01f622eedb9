"""Durable files: everything lit_nat writes appears whole or not at all, and a lock keeps two writers apart.

:func:`atomic_write` is the one way a file is written: into a temporary file *in the destination's directory* (so
the final rename never crosses a filesystem, which would turn it into a copy), flushed and fsynced, renamed over the
destination, and the directory fsynced so the rename itself survives a power loss. A process killed at any instant
leaves either the old file or the new one, never a truncated one; the temporary file of a killed writer is removed by
the next write of the same destination on the same host.

:class:`DirectoryLock` is an advisory POSIX record lock (``lockf``) on ``<dir>/.lit_nat.lock`` held for the life of a
job (a fit's run directory, a ``sample``/``search``/``autonat`` output folder). The kernel releases it when the holder
dies, so a killed job never leaves a stale lock; a second live job gets a one-line error naming the holder. (A POSIX
lock belongs to the process, not to its forked DataLoader workers, which may outlive a killed parent by seconds; an
``flock`` would stay held by them. It also works across NFS clients through the lock manager.)

Standard library only: every other module may depend on this one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import socket
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lit_nat.core.diskspace import SpaceCheckedFile, disk_full_error, ensure_space, is_disk_full
from lit_nat.core.errors import CheckpointError, DiskFullError, LockedError, UnsafeNameError

TEMP_SUFFIX = ".tmp"
LOCK_FILE = ".lit_nat.lock"


def check_name(name: str, source: str, what: str = "name") -> str:
    """``name`` (read from a file or given by a user: a shard member's key, an image's name, an output stem) if it is
    one plain path component; else :class:`~lit_nat.core.errors.UnsafeNameError` naming ``source``. A name from a file
    is never a path: empty names, ``.``, ``..``, separators (``/``, ``\\``), NUL and other control characters would
    let it leave its folder or hide in a listing."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\") \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):  # fmt: skip
        raise UnsafeNameError(
            f"{source}: {what} {name!r} is not a plain file name (no separators, '..', empty or "
            "control characters); refusing to use it as a path"
        )
    return name


def child_path(folder: str | os.PathLike, name: str, source: str, what: str = "name") -> Path:
    """``folder / name`` for a name checked by :func:`check_name`: always a direct child of ``folder``."""
    return Path(folder) / check_name(name, source, what)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike, pattern: str | None = None) -> list[Path]:
    """Remove temporary files of ``path`` left by writers on this host that no longer run; returns them.

    With ``pattern`` (e.g. ``"*.png"``), ``path`` is a folder and the temporary files of every destination in it whose
    name matches are swept in one listing (the name must match exactly, so another host's temporary files are never
    mistaken for ours).
    """
    path = Path(path)
    folder, name = (path, pattern) if pattern is not None else (path.parent, path.name)
    host = socket.gethostname()
    removed = []
    for temp in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
        rest, _, pid = temp.name[1 : -len(TEMP_SUFFIX)].rpartition(".")  # "<name>.<host>", "<pid>"
        destination, dot, owner_host = rest.rpartition(f".{host}")
        if dot and not owner_host and fnmatch.fnmatchcase(destination, name) and pid.isdigit() \
                and not _pid_alive(int(pid)):  # fmt: skip
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and FUSE mounts) refuse fsync on directories
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A binary file that appears under ``path`` only when :meth:`commit` is called (temp file beside it, fsync,
    rename, directory fsync); :meth:`discard` (or a crash) leaves the destination as it was. For writers that stream
    over many calls (a shard being filled); everything else uses :func:`atomic_write`.

    ``reserve`` (bytes, where the size is known or bounded below) is checked against the free space first, so a disk
    that cannot hold the file is one :class:`~lit_nat.core.errors.DiskFullError` before anything is written; and the
    first write that finds no space raises it too. Either way the temporary file is removed and the destination keeps
    its previous content. (A free-space check, not an allocation: ``posix_fallocate`` falls back to writing every block
    on filesystems without it, e.g. some cluster filesystems, which would double the cost of a checkpoint.)
    """

    def __init__(self, path: str | os.PathLike, sweep: bool = True, reserve: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if sweep:  # (a writer of many files into one folder sweeps it once instead: each sweep lists the folder)
            remove_stale_temps(self.path)
        if reserve:
            ensure_space(self.path.parent, reserve, self.path)
        self.temp = _temp_name(self.path)
        self.needed = reserve
        self.file: SpaceCheckedFile = SpaceCheckedFile(open(self.temp, "wb"), self.path, reserve)  # type: ignore

    def commit(self) -> Path:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.path)
        except BaseException as err:
            self.discard()
            if is_disk_full(err) and not isinstance(err, DiskFullError):
                raise disk_full_error(self.path, self.needed, err) from err
            raise
        fsync_directory(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Drop the temporary file (whatever closing it says: on a full disk, the flush in ``close`` fails too)."""
        try:
            self.file.close()
        except OSError:
            pass
        finally:
            self.temp.unlink(missing_ok=True)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], sweep: bool = True, reserve: int | None = None
) -> Path:
    """Write ``path`` whole or not at all: ``write(f)`` fills a binary temp file beside it, fsynced, then renamed.

    If ``write`` raises (or the process dies), the destination keeps its previous content and the temporary file is
    removed. A full disk is one :class:`~lit_nat.core.errors.DiskFullError` (``reserve``: see :class:`AtomicFile`), even
    where the library writing the file wraps the ``ENOSPC`` in an error of its own. Returns the path.
    ``sweep=False`` skips removing dead writers' temporary files of ``path`` (for a caller that swept the folder once
    with ``remove_stale_temps(folder, "*")`` before writing thousands of files into it).
    """
    target = AtomicFile(path, sweep, reserve)
    try:
        write(target.file)
    except BaseException:
        target.discard()
        if target.file.full is not None:
            raise target.file.full from None
        raise
    return target.commit()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data`` (its size checked against the free space first)."""
    return atomic_write(path, lambda f: f.write(data), reserve=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def changed_entries(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` for every key of ``now`` whose value differs from the one in a state file read back as
    ``saved`` (``now`` compared as JSON would store it: tuples as lists, non-finite floats as null)."""
    now = json.loads(json.dumps(json_safe(now)))
    return {key: (saved.get(key), value) for key, value in now.items() if saved.get(key) != value}


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``value`` as strict JSON (non-finite floats become ``null``)."""
    return atomic_write_text(path, json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
_HELD: set[str] = set()  # lock files this process holds (POSIX locks do not conflict within one process)


class DirectoryLock:
    """An exclusive, advisory lock on a directory for the life of a job (``lockf`` on ``<dir>/.lit_nat.lock``).

    ``acquire`` fails at once with :class:`~lit_nat.core.errors.LockedError` naming the holder (pid, host, what it runs,
    since when) if another live process holds it. The kernel drops the lock when its holder exits or is killed, so
    there is never a stale lock to remove by hand. On a filesystem without lock support the lock is skipped with a
    warning (nothing else changes). Within one process a second lock of the same directory is refused too.

    Args:
        directory: the directory to lock (created if missing).
        purpose: what the holder does, shown to a second process (e.g. ``"fit"``).
    """

    def __init__(self, directory: str | os.PathLike, purpose: str) -> None:
        self.directory = Path(directory)
        self.purpose = purpose
        self._file: IO[str] | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> DirectoryLock:
        if self._file is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            raise LockedError(f"{self.directory} is already in use by this process ({self.purpose})")
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LockedError(
                f"{self.directory} is in use by {holder}; wait for it to end or use another directory"
            ) from None
        except OSError as err:  # ENOLCK / EOPNOTSUPP: e.g. a network filesystem mounted without lock support
            f.close()
            print(f"lit_nat: warning: cannot lock {self.path} ({err}); not protected against a second writer",
                  file=sys.stderr)  # fmt: skip
            return self
        f.seek(0)
        f.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"{self.purpose} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n")
        f.flush()
        self._file = f
        _HELD.add(key)
        return self

    def release(self) -> None:
        if self._file is not None:
            _HELD.discard(str(self.path.resolve()))
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------------------------------
# What we read is what was written: one notion of "this version of a file", one hasher
def file_version(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """``(resolved path, inode, size, mtime)``: the key under which a check of a file's content is remembered for
    the life of the process (a rewrite, a copy over it or a touch makes a new version)."""
    path = Path(path)
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[int, str]:
    """``(size, hex sha256)`` of a file, read ``chunk`` bytes at a time (never whole in memory); not cached."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


#: file versions (:func:`file_version`) whose CRCs were checked by this process: a file is read whole once
_VERIFIED: set[tuple[str, int, int, int]] = set()


def verify_archive(path: str | os.PathLike) -> None:
    """Check every record of a ``torch.save`` archive (or ``.npz``) against the CRC-32 the zip holds for it.

    torch.load does not: a checkpoint with flipped bytes inside a tensor (same size, still a zip) loads without a word
    and samples other images. A mismatch is a :class:`CheckpointError` naming the file and the record. Costs one read
    of the file (0.53 s for a 695 MB AutoNAT-S training checkpoint from the page cache, where torch.load takes
    0.32 s: ``scripts/benchmark_reliability.py``); a file already checked by this process, unchanged, is not read
    again. Records whose CRC field is
    0 are not checked (torch can be told not to compute them: ``torch.serialization.config.save.compute_crc32``).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):  # torch's legacy format (before 1.6) has no CRCs to check
        return
    key = file_version(path)
    if key in _VERIFIED:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC == 0 and record.file_size:
                    continue
                with archive.open(record) as stream:  # zipfile compares the CRC-32 when the record is read to its end
                    while stream.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:  # ValueError: a bad UTF-8 name
        raise CheckpointError(
            f"{path}: damaged file ({type(err).__name__}: {err}): its bytes are not the ones written; use an earlier "
            "copy or fetch it again"
        ) from None
    _VERIFIED.add(key)
