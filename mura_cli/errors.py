"""The project's own error types. Each carries a message meant for the user, in one line."""

from __future__ import annotations


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
