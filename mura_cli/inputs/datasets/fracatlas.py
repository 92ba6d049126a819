"""FracAtlas (Abedeen et al., Sci Data 10:521, 2023; CC BY 4.0): ``dataset.csv`` plus ``images/``.

Label: ``fractured``. Body part from the hand/leg/hip/shoulder columns (MIXED when several). There
are no patient ids, so each image is its own study and patient. A seeded split, stratified by body
part and label, sets aside a test part (``split == 'test'``) that training and threshold choice never
see; the rest is 'train' (train makes its own validation part from it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura_cli.errors import MuraError
from mura_cli.inputs.datasets.tables import finish_table

PARTS = ("hand", "leg", "hip", "shoulder")
TEST_FRACTION = 0.2
SPLIT_SEED = 20231


def is_fracatlas(path: Path) -> bool:
    return (path / "dataset.csv").is_file() and (path / "images").is_dir()


def _body_part(row) -> str:
    parts = [p.upper() for p in PARTS if str(row.get(p, "0")) == "1"]
    return parts[0] if len(parts) == 1 else "MIXED" if parts else ""


def test_split(keys: pd.Series, fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> pd.Series:
    """'test' for a stratified share of rows (stratum = key), 'train' for the rest; deterministic."""
    from sklearn.model_selection import train_test_split

    index = keys.index.to_numpy()
    counts = keys.value_counts()
    strata = keys.where(keys.map(counts) >= 2, "rare")  # strata of one row cannot be split
    if (strata == "rare").sum() == 1:  # nor can a lone rare row: it joins the largest stratum
        strata = strata.replace("rare", counts.idxmax())
    try:
        _, test_index = train_test_split(index, test_size=fraction, random_state=seed, stratify=strata)
    except ValueError as error:  # e.g. fewer test rows than strata
        raise MuraError(
            f"{len(keys)} images are too few for a stratified {fraction:.0%} test split ({error})"
        ) from None
    split = pd.Series("train", index=keys.index)
    split.loc[test_index] = "test"
    return split


def read_fracatlas(path: Path) -> pd.DataFrame:
    meta = pd.read_csv(path / "dataset.csv", dtype=str)
    present = meta[[(path / "images" / name).is_file() for name in meta["image_id"]]].copy()
    present["body_part"] = [_body_part(row) for row in present.to_dict("records")]
    present["label"] = present["fractured"].astype(int)
    present["rel_path"] = "images/" + present["image_id"]
    present["path"] = [str(path / rel) for rel in present["rel_path"]]
    present["study_id"] = present["image_id"]
    present["patient_id"] = present["image_id"]
    try:
        present["split"] = test_split(present["body_part"] + "_" + present["label"].astype(str))
    except MuraError as error:
        raise MuraError(f"{path / 'dataset.csv'}: {error}") from None
    table = finish_table(present, str(path))
    table.attrs["seeded_split"] = True  # mura-cli's own held-out part, not an official split
    return table
