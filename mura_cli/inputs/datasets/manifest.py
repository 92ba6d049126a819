"""A manifest CSV: ``path,label`` plus optional ``study_id,patient_id,body_part,split``.

Relative paths are taken from the manifest's folder. A missing study or patient id means one per
image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura_cli.errors import InputError
from mura_cli.inputs.datasets.tables import finish_table


def read_manifest(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    for column in ("path", "label"):
        if column not in table.columns:
            raise InputError(f"{path}: manifest needs the columns path,label (missing '{column}')")
    base = path.parent
    table["rel_path"] = table["path"].str.replace("\\", "/", regex=False)
    table["path"] = [str((base / p).resolve()) for p in table["rel_path"]]
    try:
        table["label"] = table["label"].astype(int)
    except ValueError:
        raise InputError(f"{path}: 'label' must be 0 or 1 on every row") from None
    for column in ("study_id", "patient_id"):
        if column not in table.columns:
            table[column] = ""
        empty = table[column] == ""
        table.loc[empty, column] = table.loc[empty, "rel_path"]
    for column in ("body_part", "split"):
        if column not in table.columns:
            table[column] = ""
    return finish_table(table, str(path))
