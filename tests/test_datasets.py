"""Dataset readers (official MURA CSVs, MURA layout, manifest, FracAtlas) and the patient split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mura_cli.errors import InputError, MuraError
from mura_cli.inputs.datasets import read_dataset, select_split
from mura_cli.inputs.datasets.fracatlas import read_fracatlas
from mura_cli.training.split import patient_split
from mura_cli.training.train import class_weights

from conftest import REPO, radiograph, save_png8


def fake_mura_root(base):
    """MURA-v1.1 with its four official CSVs (no header; paths start with 'MURA-v1.1/')."""
    root = base / "MURA-v1.1"
    studies = {
        "train": [
            ("XR_WRIST", "patient00001", "study1_positive", 1),
            ("XR_ELBOW", "patient00002", "study1_negative", 0),
        ],
        "valid": [("XR_WRIST", "patient11185", "study1_negative", 0)],
    }
    for split, rows in studies.items():
        image_lines, study_lines = [], []
        for part, patient, study, label in rows:
            rel = f"MURA-v1.1/{split}/{part}/{patient}/{study}/"
            study_lines.append(f"{rel},{label}")
            for k in (1, 2):
                save_png8(radiograph(k), base / rel / f"image{k}.png")
                image_lines.append(f"{rel}image{k}.png")
        (root / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n")
    return root


@pytest.mark.parametrize("given", ["root", "parent"])
def test_official_csv_reader(tmp_path, given):
    root = fake_mura_root(tmp_path)
    table = read_dataset(root if given == "root" else tmp_path)
    assert len(table) == 6
    assert table.groupby("split").size().to_dict() == {"train": 4, "valid": 2}
    wrist = table[table["study_id"] == "XR_WRIST/patient00001/study1_positive"]
    assert wrist["label"].tolist() == [1, 1] and set(wrist["body_part"]) == {"WRIST"}
    assert all(Path(p).is_file() for p in table["path"])
    assert len(select_split(table, "valid")) == 2


def test_layout_folder_reader_needs_labels(mura_folder, tmp_path):
    table = read_dataset(mura_folder)
    assert set(table["label"]) == {0, 1} and set(table["patient_id"]) >= {"patient00001"}
    save_png8(radiograph(1), tmp_path / "plain" / "x.png")
    with pytest.raises(InputError, match="no label"):
        read_dataset(tmp_path / "plain")


def test_manifest_defaults_one_study_and_patient_per_image(tmp_path):
    save_png8(radiograph(1), tmp_path / "imgs" / "a.png")
    save_png8(radiograph(2), tmp_path / "imgs" / "b.png")
    (tmp_path / "m.csv").write_text("path,label,body_part\nimgs/a.png,1,hand\nimgs/b.png,0,hand\n")
    table = read_dataset(tmp_path / "m.csv")
    assert table["study_id"].tolist() == ["imgs/a.png", "imgs/b.png"]
    assert table["patient_id"].tolist() == ["imgs/a.png", "imgs/b.png"]
    assert table["body_part"].tolist() == ["HAND", "HAND"]
    (tmp_path / "bad.csv").write_text("path,label\nimgs/a.png,maybe\n")
    with pytest.raises(InputError, match="label"):
        read_dataset(tmp_path / "bad.csv")


def test_fracatlas_reader_and_its_held_out_test_part():
    shared = REPO.parent / "shared" / "fracatlas"
    if not shared.is_dir():
        pytest.skip("../shared/fracatlas not present")
    table = read_fracatlas(shared)
    assert len(table) == 3421 and set(table["split"]) == {"train", "test"}
    assert set(table["body_part"]) == {"HAND", "LEG", "HIP", "SHOULDER", "MIXED"}
    test = table[table["split"] == "test"]
    assert 0.18 < len(test) / len(table) < 0.22
    assert abs(test["label"].mean() - table["label"].mean()) < 0.01  # stratified
    assert read_fracatlas(shared)["split"].tolist() == table["split"].tolist()  # deterministic


def fracatlas_folder(base: Path, parts_and_labels: list[tuple[str, int]]) -> Path:
    """A FracAtlas-layout folder (dataset.csv + images/) of small synthetic radiographs."""
    (base / "images").mkdir(parents=True)
    rows = []
    for k, (part, label) in enumerate(parts_and_labels):
        name = f"IMG{k:07d}.png"
        save_png8(radiograph(seed=k, height=48, width=40), base / "images" / name)
        flags = {p: int(p == part) for p in ("hand", "leg", "hip", "shoulder")}
        rows.append({"image_id": name, **flags, "fractured": label})
    pd.DataFrame(rows).to_csv(base / "dataset.csv", index=False)
    return base


def test_fracatlas_subset_with_one_lone_stratum_still_splits(tmp_path):
    # one shoulder image: a stratum of one row, and the only such ('rare' of one row cannot split)
    given = [("hand", 0)] * 12 + [("hand", 1)] * 8 + [("leg", 0)] * 6 + [("shoulder", 1)]
    table = read_fracatlas(fracatlas_folder(tmp_path / "subset", given))
    assert len(table) == len(given) and set(table["split"]) == {"train", "test"}


def test_fracatlas_folder_too_small_to_split_is_a_one_line_error(tmp_path):
    folder = fracatlas_folder(tmp_path / "tiny", [("hand", 0), ("hand", 0), ("leg", 1), ("leg", 1)])
    with pytest.raises(MuraError, match=r"dataset\.csv: 4 images are too few for a stratified 20% test"):
        read_fracatlas(folder)


def test_patient_split_keeps_patients_whole_and_strata_balanced(learnable_folder):
    table = read_dataset(learnable_folder)
    side = patient_split(table, 0.25, seed=3)
    sides_per_patient = table.assign(side=side).groupby("patient_id")["side"].nunique()
    assert (sides_per_patient == 1).all()
    assert 0.15 < (side == "val").mean() < 0.35
    assert side.tolist() == patient_split(table, 0.25, seed=3).tolist()
    assert side.tolist() != patient_split(table, 0.25, seed=4).tolist()


def test_class_weights_follow_the_mura_paper():
    train = pd.DataFrame(
        {
            "study_id": ["a", "b", "c", "d", "e"],
            "body_part": ["WRIST"] * 4 + ["HAND"],
            "label": [1, 0, 0, 0, 1],
        }
    )
    weights = class_weights(train, "per-part")
    assert weights[("WRIST", 1)] == pytest.approx(3 / 4) and weights[("WRIST", 0)] == pytest.approx(1 / 4)
    assert weights[("HAND", 1)] == 1.0  # a part with one class only is not reweighted
    assert class_weights(train, "none")[("WRIST", 1)] == 1.0
    assert class_weights(train, "global")[("HAND", 1)] == pytest.approx(3 / 5)


def test_too_few_patients_for_a_split_is_a_clear_error(mura_folder):
    from mura_cli.errors import MuraError

    table = read_dataset(mura_folder)  # three patients
    with pytest.raises(MuraError, match="needs at least 7 patients"):
        patient_split(table, 0.15, seed=0)


def test_a_study_with_two_labels_is_refused(tmp_path):
    save_png8(radiograph(1), tmp_path / "a.png")
    save_png8(radiograph(2), tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label,study_id\na.png,1,S1\nb.png,0,S1\n")
    with pytest.raises(InputError, match="study S1 has images labelled both 0 and 1"):
        read_dataset(tmp_path / "m.csv")


def test_evaluate_takes_every_image_of_fracatlas_unless_a_split_is_named():
    from mura_cli.evaluation.evaluate import default_split

    shared = REPO.parent / "shared" / "fracatlas"
    if not shared.is_dir():
        pytest.skip("../shared/fracatlas not present")
    table = read_fracatlas(shared)
    assert default_split(table) == "all"  # its test part is mura-cli's seeded one, not FracAtlas's
    manifest_like = table.copy()
    manifest_like.attrs = {}
    assert default_split(manifest_like) == "test"  # a declared split is still honoured
