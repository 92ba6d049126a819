"""Patient-level train/validation split, stratified by label and body part, seeded; or one read from a
split file (another run's ``split.csv``, or folds made from it)."""

from __future__ import annotations

import warnings

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mura_cli.config import parse_fold
from mura_cli.errors import InputError, MuraError

SPLIT_SIDES = ("train", "val", "holdout")  # holdout: named in the file, left out of this run


def _patient_folds(table: pd.DataFrame, folds: int, seed: int) -> list:
    """(train index, held index) per fold of ``table``'s rows: by patient, stratified by body part and
    label, seeded."""
    strata = table["body_part"].astype(str) + "_" + table["label"].astype(str)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare strata (fewer rows than folds) are spread as well as they can be
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(table, strata, groups=table["patient_id"]))


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
    _, val_index = _patient_folds(table, folds, seed)[0]
    side = pd.Series("train", index=table.index)
    side.iloc[val_index] = "val"
    return side


def holdout_fold(table: pd.DataFrame, side: pd.Series, fold: str, seed: int) -> pd.Series:
    """``side`` with fold K of N of its 'train' rows made 'holdout', so that N runs with K = 0..N-1
    leave out each training image once and keep the same validation images (cross-fitted teachers)."""
    k, n = parse_fold(fold)
    train = table[side == "train"]
    if train["patient_id"].nunique() < n:
        raise MuraError(f"--holdout-fold {fold}: {n} folds need at least {n} training patients")
    _, held = _patient_folds(train, n, seed)[k]
    side = side.copy()
    side.loc[train.index[held]] = "holdout"
    return side


def read_split_file(path) -> pd.DataFrame:
    """A split file's rows (``rel_path``, ``side`` and whatever else it has), checked: an InputError
    naming the file when it is unreadable, lacks the columns, names a side not in SPLIT_SIDES or an
    image twice."""
    try:
        split = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable split file ({exc})") from None
    if not {"rel_path", "side"} <= set(split.columns):
        raise InputError(f"{path}: a split file needs the columns rel_path,side (another run's split.csv)")
    bad = sorted(set(split["side"]) - set(SPLIT_SIDES))
    if bad:
        raise InputError(f"{path}: side {bad[0]!r} is not one of {', '.join(SPLIT_SIDES)}")
    twice = split["rel_path"][split["rel_path"].duplicated()]
    if len(twice):
        raise InputError(f"{path}: {twice.iloc[0]} is listed twice")
    return split


def split_from_file(table: pd.DataFrame, path) -> pd.Series:
    """'train', 'val' or 'holdout' per row of ``table``, as the split file at ``path`` says; an
    InputError naming the file when ``read_split_file`` refuses it, or it leaves out or adds images,
    or puts one patient on two sides."""
    split = read_split_file(path)
    sides = dict(zip(split["rel_path"], split["side"]))
    rel = table["rel_path"].astype(str)
    missing, extra = sorted(set(rel) - set(sides)), sorted(set(sides) - set(rel))
    if missing:
        raise InputError(
            f"{path}: no side for {len(missing)} of the training images, e.g. {missing[0]} (a split file "
            "names every training image; side 'holdout' leaves one out of the run)"
        )
    if extra:
        raise InputError(
            f"{path}: names {len(extra)} images outside the training pool (rows with split 'train' or "
            f"none), e.g. {extra[0]}"
        )
    side = rel.map(sides)
    used = table.assign(side=side)[side != "holdout"]
    mixed = used.groupby("patient_id")["side"].nunique()
    if (mixed > 1).any():
        raise InputError(
            f"{path}: patient {mixed[mixed > 1].index[0]} has images on both the train and val side"
        )
    return side
