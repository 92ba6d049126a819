"""The shared image-table format and helpers."""

from __future__ import annotations

import pandas as pd

from mura_cli.errors import InputError

COLUMNS = ["path", "rel_path", "study_id", "patient_id", "body_part", "label", "split"]


def finish_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and normalise a reader's table: columns, types, stable order."""
    if table.empty:
        raise InputError(f"{source}: no labelled images found")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{source}: table lacks columns {missing}")
    table = table[COLUMNS].copy()
    bad = ~table["label"].isin([0, 1])
    if bad.any():
        raise InputError(f"{source}: labels must be 0 or 1 (row for {table.loc[bad, 'rel_path'].iloc[0]})")
    table["label"] = table["label"].astype(int)
    mixed = table.groupby("study_id")["label"].nunique()
    if (mixed > 1).any():
        study = mixed[mixed > 1].index[0]
        raise InputError(
            f"{source}: study {study} has images labelled both 0 and 1 "
            f"({int((mixed > 1).sum())} such studies); a study has one label"
        )
    for column in ("rel_path", "study_id", "patient_id", "body_part", "split"):
        table[column] = table[column].fillna("").astype(str)
    table["body_part"] = table["body_part"].str.upper()
    return table.sort_values("rel_path", kind="stable").reset_index(drop=True)


def select_split(table: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Rows of one split; None or 'all' keeps every row."""
    if split in (None, "", "all"):
        return table
    chosen = table[table["split"] == split]
    if chosen.empty:
        present = sorted(s for s in table["split"].unique() if s) or ["none"]
        raise InputError(f"no images in split '{split}' (splits present: {', '.join(present)})")
    return chosen.reset_index(drop=True)
