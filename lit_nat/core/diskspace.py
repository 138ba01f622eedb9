"""Disk space: one message for a full disk, free-space checks before a write, and allocation ahead of a memory map.

:func:`lit_nat.core.io.atomic_write` writes through :class:`SpaceCheckedFile`, so "no space left" (ENOSPC), "over quota"
(EDQUOT) and "file too large" (EFBIG) become one :class:`~lit_nat.core.errors.DiskFullError` that names the mount
point, the file, what it needed and what is free, even where a library wraps the error in its own (torch.save's
``unexpected pos``). The command line also finds such an error in any exception's chain (:func:`disk_full_cause`), so a
library's own write (LightningCLI's ``config.yaml``, a logger's event file) ends in the same one line.

Standard library only, like :mod:`lit_nat.core.io`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any

from lit_nat.core.errors import DiskFullError

#: the errors that mean "no room": no space left, over quota, file too large for the filesystem
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on ``folder``'s filesystem."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the filesystem holding ``path`` (which may not exist yet)."""
    path = Path(os.path.abspath(path))
    while not path.exists() or not os.path.ismount(path):
        if path.parent == path:
            break
        path = path.parent
    return path


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in _FULL_ERRNOS


def disk_full_error(
    path: str | os.PathLike | None, needed: int | None, cause: OSError | None = None, at_least: bool = False
) -> DiskFullError:
    """The one message of a full disk: where, what was being written, how much it needed, how much is free
    (``path`` None: a library's write that did not name its file)."""
    reason = "over quota" if cause is not None and cause.errno == errno.EDQUOT else "no space left"
    if path is None:
        error = DiskFullError(f"{reason} on a disk while writing a file the library did not name; free space and "
                              "rerun to resume")  # fmt: skip
    else:
        folder = Path(path).parent
        try:
            free = human_bytes(free_bytes(folder))
        except OSError:
            free = "unknown"
        need = "size unknown" if needed is None else f"{'at least ' if at_least else ''}{human_bytes(needed)} needed"
        error = DiskFullError(
            f"{reason} on {mount_point(folder)} while writing {path} ({need}, {free} free); the previous file is "
            "kept: free space and rerun to resume"
        )
    error.errno = errno.ENOSPC  # (set after: with it in the constructor the message would start with "[Errno 28]")
    return error


def disk_full_cause(err: BaseException) -> OSError | None:
    """The "no space" error behind ``err`` (itself, or in its chain of causes: libraries wrap it, as torch.save's
    ``unexpected pos`` does), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if is_disk_full(err):
            return err  # type: ignore[return-value]
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def ensure_space(folder: str | os.PathLike, needed: int, path: str | os.PathLike) -> None:
    """Refuse at once, before any write, a step that needs ``needed`` bytes in ``folder`` where they are not free."""
    try:
        free = free_bytes(folder)
    except OSError:  # a filesystem that cannot say: let the write itself find out
        return
    if free < needed:
        raise disk_full_error(path, needed)


class SpaceCheckedFile:
    """A binary file whose writes turn "no space" into :class:`DiskFullError` (and remember it: a library that wraps
    the error in its own, as torch.save's ``unexpected pos``, is still told apart from a real bug)."""

    def __init__(self, raw: IO[bytes], path: Path, needed: int | None) -> None:
        self._raw, self._path, self._needed = raw, path, needed
        self.full: DiskFullError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as err:
            raise self._full(err) if is_disk_full(err) else err

    def flush(self) -> None:
        try:
            self._raw.flush()
        except OSError as err:
            raise self._full(err) if is_disk_full(err) else err

    def _full(self, err: OSError) -> DiskFullError:
        if self.full is None:
            if self._needed is not None:
                self.full = disk_full_error(self._path, self._needed, err)
            else:  # what had been written when the disk filled is a lower bound
                self.full = disk_full_error(self._path, max(self._raw.tell(), 1), err, at_least=True)
            self.full.__cause__ = err
        return self.full

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno, closed, ...: the raw file's
        return getattr(self._raw, name)


def allocate(path: str | os.PathLike, nbytes: int, named: str | os.PathLike | None = None) -> None:
    """Allocate ``nbytes`` of an existing file's blocks now, so that no later write into it can meet a full disk. A
    memory-mapped file needs this: a page fault on a full disk is a SIGBUS that kills the process, not an error.
    Refused at once with :class:`~lit_nat.core.errors.DiskFullError` where the space is not there (naming ``named``, the
    file the user asked for, where ``path`` is a working file behind it)."""
    named = path if named is None else named
    ensure_space(Path(path).parent, nbytes, named)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(named, nbytes, err) from err
        # EOPNOTSUPP/EINVAL: a filesystem that cannot allocate ahead; the free-space check above is what we have
    finally:
        os.close(fd)
