"""MURA-v1.1: through its official CSVs, or any folder in MURA's layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura_cli.errors import InputError
from mura_cli.inputs.datasets.tables import finish_table
from mura_cli.inputs.discover import discover, parse_mura_path

OFFICIAL = {
    "train": ("train_image_paths.csv", "train_labeled_studies.csv"),
    "valid": ("valid_image_paths.csv", "valid_labeled_studies.csv"),
}


def find_official_root(path: Path) -> Path | None:
    """The folder holding the official CSVs: ``path`` itself or ``path/MURA-v1.1``."""
    for candidate in (path, path / "MURA-v1.1"):
        if (candidate / OFFICIAL["train"][0]).is_file() or (candidate / OFFICIAL["valid"][0]).is_file():
            return candidate
    return None


def _rows(root: Path, split: str) -> list[dict]:
    images_csv, studies_csv = (root / name for name in OFFICIAL[split])
    if not images_csv.is_file():
        return []
    images = pd.read_csv(images_csv, header=None, names=["path"], dtype=str)
    studies = pd.read_csv(studies_csv, header=None, names=["study", "label"], dtype={"study": str})
    labels = {s.rstrip("/"): int(v) for s, v in zip(studies["study"], studies["label"])}
    base = root.parent  # paths inside the CSVs start with 'MURA-v1.1/'
    rows = []
    for rel in images["path"]:
        study_dir = rel.rsplit("/", 1)[0]
        if study_dir not in labels:
            raise InputError(f"{images_csv}: {rel} has no study label in {studies_csv.name}")
        mura = parse_mura_path(tuple(rel.split("/")))
        rows.append(
            {
                "path": str(base / rel),
                "rel_path": rel,
                "label": labels[study_dir],
                "split": split,
                "study_id": f"XR_{mura.body_part}/{mura.patient_id}/{mura.study}",
                "patient_id": mura.patient_id,
                "body_part": mura.body_part,
            }
        )
    return rows


def read_official(path: Path) -> pd.DataFrame:
    root = find_official_root(path)
    rows = _rows(root, "train") + _rows(root, "valid")
    return finish_table(pd.DataFrame(rows), str(root))


def read_layout_folder(path: Path) -> pd.DataFrame:
    """Any folder in MURA's layout; labels from ``studyN_positive|negative``."""
    found = discover(path)
    unlabelled = [r.rel_path for r in found.images if r.label is None]
    if unlabelled:
        raise InputError(
            f"{path}: {len(unlabelled)} images have no label (e.g. {unlabelled[0]}): use folders "
            "named studyN_positive / studyN_negative, or a manifest CSV"
        )
    rows = [
        {
            "path": str(r.path),
            "rel_path": r.rel_path,
            "study_id": r.study_id,
            "patient_id": r.patient_id,
            "body_part": r.body_part,
            "label": r.label,
            "split": _split_from_path(r.rel_path),
        }
        for r in found.images
    ]
    return finish_table(pd.DataFrame(rows), str(path))


def _split_from_path(rel_path: str) -> str:
    first = rel_path.split("/", 1)[0].lower()
    return first if first in ("train", "valid", "test") else ""
