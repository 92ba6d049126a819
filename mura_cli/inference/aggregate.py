"""Image rows -> study rows: study probability = mean (the MURA paper) or max of its images."""

from __future__ import annotations

import numpy as np
import pandas as pd

STUDY_COLUMNS = [
    "study_id",
    "body_part",
    "patient_id",
    "label",
    "n_images",
    "n_failed",
    "probability",
    "prediction",
    "threshold",
]


def _first_nonempty(values: pd.Series) -> str:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return ""


def aggregate_studies(images: pd.DataFrame, method: str, threshold: float) -> pd.DataFrame:
    """One row per study, sorted by study_id. Failed images count in n_failed, not in the mean; a
    study whose every image failed has no probability and no prediction."""
    if method not in ("mean", "max"):
        raise ValueError(f"unknown aggregation '{method}'")
    grouped = images.groupby("study_id", sort=True, dropna=False)
    rows = []
    for study_id, group in grouped:
        probs = group["probability"].to_numpy(dtype=float)
        scored = probs[~np.isnan(probs)]
        probability = (scored.mean() if method == "mean" else scored.max()) if scored.size else np.nan
        labels = group["label"].dropna().unique()
        rows.append(
            {
                "study_id": study_id,
                "body_part": _first_nonempty(group["body_part"]),
                "patient_id": _first_nonempty(group["patient_id"]),
                "label": int(labels[0]) if len(labels) == 1 else pd.NA,
                "n_images": int(len(group)),
                "n_failed": int(np.isnan(probs).sum()),
                "probability": probability,
                "prediction": pd.NA if np.isnan(probability) else int(probability >= threshold),
                "threshold": threshold,
            }
        )
    table = pd.DataFrame(rows, columns=STUDY_COLUMNS)
    for column in ("label", "prediction"):
        table[column] = table[column].astype("Int64")
    return table
