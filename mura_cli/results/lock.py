"""One run at a time in a results folder: an advisory lock held for the whole run.

Two `score` runs into the same --out (or a --resume while the first still runs) would clear each
other's thumbnails and interleave rows; the second one is refused with the first one's process id.
The lock is an flock on ``.mura-cli.lock`` in the folder, so it is released when the process ends,
whatever the way (kill -9 included); the file is removed at the end of a run that ends normally. Where the platform has no flock (Windows), runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mura_cli.errors import InputError

LOCK_FILE = ".mura-cli.lock"


@contextlib.contextmanager
def hold(folder: Path):
    """Create ``folder`` if needed and hold its lock until the block ends; InputError when taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    locked = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise InputError(
                f"{folder}: in use by another mura-cli run (process {holder}); wait for it to end "
                "or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        locked = True
        yield
    finally:
        if locked:  # removed while still held, so the results folder is left as the run's files alone
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
        handle.close()
