"""Labelled image tables for train and evaluate. Every reader returns the same columns:

path (absolute), rel_path, study_id, patient_id, body_part, label (0/1), split ('train', 'valid',
'test' or '' when the source does not say).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura_cli.errors import InputError
from mura_cli.inputs.datasets.tables import COLUMNS, select_split

__all__ = ["COLUMNS", "read_dataset", "select_split"]


def read_dataset(source: str | Path) -> pd.DataFrame:
    """A MURA-v1.1 root (official CSVs), a FracAtlas folder, a manifest CSV, or a MURA-layout folder."""
    from mura_cli.inputs.datasets import fracatlas, manifest, mura

    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    path = path.resolve()
    if path.is_file():
        return manifest.read_manifest(path)
    if mura.find_official_root(path) is not None:
        return mura.read_official(path)
    if fracatlas.is_fracatlas(path):
        return fracatlas.read_fracatlas(path)
    return mura.read_layout_folder(path)
