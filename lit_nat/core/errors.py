"""The errors a user can cause or meet, each with a one-line message that names the file, key or value.

The command line (:func:`lit_nat.commands.cli.entry`) prints a :class:`LitNatError` as ``lit_nat: error: <message>``
and exits with its ``exit_code``, without a traceback (``LIT_NAT_DEBUG=1`` shows it). Each class also derives from the
builtin exception a caller would expect (``ValueError``, ``RuntimeError``...), so code that catches those keeps working.
"""

from __future__ import annotations


class LitNatError(Exception):
    """A user-facing error; ``exit_code`` is the status the command line exits with."""

    exit_code = 2


class UsageError(LitNatError, ValueError):
    """A value, file or saved state that does not fit what the command needs (e.g. resuming with other settings)."""


class CheckpointError(LitNatError, ValueError):
    """A checkpoint file that is missing, truncated, unreadable, of another model, or holds non-finite weights."""


class DataError(LitNatError, ValueError):
    """A shard or sample that breaks the token format: unreadable tar, missing member, id or label out of range."""


class UnsafeNameError(LitNatError, ValueError):
    """A name read from a file (a shard member, an image or caption key, an output name) that would leave its folder
    if used as a path: empty, ``.``/``..``, absolute, or holding a path separator or a NUL byte."""


class DiskFullError(LitNatError, OSError):
    """A write ran out of space (ENOSPC, or a quota): the temporary file was removed and the previous file kept;
    rerun once space is free and the job resumes."""

    exit_code = 1


class LockedError(LitNatError, RuntimeError):
    """A run directory or output folder already in use by a live process."""


class NonFiniteError(LitNatError, FloatingPointError):
    """Training produced non-finite losses or gradients (or weights) and the guard's policy stopped the run."""

    exit_code = 1


class JobError(LitNatError, RuntimeError):
    """A job the command waited for (a candidate fit, a SLURM job) failed, was cancelled or timed out."""

    exit_code = 1


class Stopped(LitNatError):
    """The command was asked to stop (SIGTERM/SIGINT) and did, keeping what it had finished; rerun to resume."""

    exit_code = 143
