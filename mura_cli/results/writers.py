"""CSV and JSON writers. Every file is written to a temporary name and renamed into place, so a
reader never sees half a file and an interrupted run never leaves one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from mura_cli.files import atomic_write_bytes
from mura_cli.inputs.names import has_undecodable_bytes, printable_name

__all__ = ["atomic_write_bytes", "write_csv", "write_json"]


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    text = table.to_csv(index=False, float_format="%.6f", lineterminator="\n")
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(data: dict[str, Any], path: Path) -> Path:
    text = json.dumps(_printable(data), indent=2, default=str, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def _printable(value):
    """Strings (keys too) holding undecodable path bytes get Python's \\x escapes (mura_cli.inputs.names), so
    a folder name that is not valid UTF-8 is written, not refused."""
    if isinstance(value, str):
        return printable_name(value) if has_undecodable_bytes(value) else value
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value
