"""The error gallery of `evaluate`: the most confident false positives and false negatives (studies),
each image with its heatmap and, where boxes were given, the boxes drawn. The pictures come from the
evaluation's own pass (made for every image when a report is asked for): nothing is scored twice."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mura_cli.report.images import Thumbnails

KINDS = ("false positive", "false negative")


@dataclass(frozen=True)
class GalleryEntry:
    kind: str  # one of KINDS
    study_id: str
    body_part: str
    probability: float
    images: tuple[tuple[str, float, Thumbnails | None], ...]  # (path, image probability, pictures)


def pick_errors(studies: pd.DataFrame, k: int) -> dict[str, list[str]]:
    """The ``k`` most confident wrong studies of each kind: false positives by falling probability,
    false negatives by rising probability (the most certain mistakes first)."""
    if k <= 0:
        return {}
    scored = studies.dropna(subset=["probability", "label", "prediction"])
    label, prediction = scored["label"].astype(int), scored["prediction"].astype(int)
    fp = scored[(label == 0) & (prediction == 1)].sort_values("probability", ascending=False, kind="stable")
    fn = scored[(label == 1) & (prediction == 0)].sort_values("probability", ascending=True, kind="stable")
    return {KINDS[0]: fp["study_id"].head(k).tolist(), KINDS[1]: fn["study_id"].head(k).tolist()}


def gallery_entries(
    picked: dict[str, list[str]], images: pd.DataFrame, studies: pd.DataFrame, pictures: dict
) -> list[GalleryEntry]:
    """The picked studies with their images' probabilities and pictures, in the picked order."""
    by_study = studies.set_index("study_id")
    members = images.groupby("study_id", sort=False)
    entries = []
    for kind, ids in picked.items():
        for study in ids:
            rows = members.get_group(study)
            entries.append(
                GalleryEntry(
                    kind,
                    study,
                    str(by_study.loc[study, "body_part"] or ""),
                    float(by_study.loc[study, "probability"]),
                    tuple(
                        (path, float(p), pictures.get(path))
                        for path, p in zip(rows["path"], rows["probability"])
                    ),
                )
            )
    return entries
