"""The project's own error types. Each carries a message meant for the user, in one line."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


class MuraError(Exception):
    """Base class: a problem the user can act on (bad input, missing model, ...)."""


class ModelError(MuraError):
    """A model folder is missing, incomplete or inconsistent."""


class InputError(MuraError):
    """The input path does not exist or holds nothing to score."""


class DecodeError(MuraError):
    """One image could not be read; the run goes on without it."""

    def __init__(self, path: str, reason: str):
        reason = " ".join(str(reason).split())  # one line, whatever the decoder's message held
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputError(MuraError):
    """The results could not be written (full disk, read-only folder, no permission): exit code 4."""


class ReportError(MuraError):
    """The PDF report could not be rendered (the CSV files are written regardless)."""


# errors that mean "the results cannot be written here", as opposed to a bug or an unreadable input
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # wherever they happen
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}  # only inside the folder written (else: an input's problem)


def inside(filename, folder: Path) -> bool:
    """Whether an OSError's file (None: unknown, as for a flush) lies in ``folder``."""
    if not filename:
        return True
    try:
        return Path(os.fsdecode(filename)).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


def is_write_failure(exc: OSError, folder: Path) -> bool:
    """A full or read-only disk anywhere, or a permission refused inside ``folder``."""
    return exc.errno in _DISK_ERRNOS or (exc.errno in _PERMISSION_ERRNOS and inside(exc.filename, folder))


def write_failure_message(exc: OSError, folder: Path) -> str:
    return f"{exc.filename or folder}: cannot write the results ({exc.strerror or exc})"


@contextlib.contextmanager
def writes_into(folder: Path, advice: str):
    """Turn a write failure (see is_write_failure) inside the block into one OutputError line."""
    try:
        yield
    except OSError as exc:
        if not is_write_failure(exc, folder):
            raise
        raise OutputError(f"{write_failure_message(exc, folder)}; {advice}") from None
