"""Patient-level train/validation split, stratified by label and body part, seeded."""

from __future__ import annotations

import warnings

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mura_cli.errors import MuraError


def patient_split(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """'train' or 'val' per row; every patient's images fall on one side only."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    folds = max(2, round(1.0 / val_fraction))
    patients = table["patient_id"].nunique()
    if patients < folds:
        raise MuraError(
            f"a validation fraction of {val_fraction} needs at least {folds} patients; the data has "
            f"{patients} (use a manifest with more patients, or a larger --val-fraction)"
        )
    strata = table["body_part"].astype(str) + "_" + table["label"].astype(str)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare strata (fewer rows than folds) are spread as well as they can be
        warnings.simplefilter("ignore", UserWarning)
        _, val_index = next(splitter.split(table, strata, groups=table["patient_id"]))
    side = pd.Series("train", index=table.index)
    side.iloc[val_index] = "val"
    return side
