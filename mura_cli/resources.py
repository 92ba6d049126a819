"""Where shipped files live: inside the wheel (mura_cli/_data/...) or, in a source checkout, at the
top of the repository."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """``models`` or ``report_templates``: the installed copy first, then the checkout's."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mura-cli installation is incomplete: folder '{name}' not found")
