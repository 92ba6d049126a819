"""score_folder end to end on synthetic MURA studies and real DICOM: what a user checks in the CSVs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mura_cli.choices import ExitCode
from mura_cli.config import ScoreConfig
from mura_cli.errors import InputError, ModelError
from mura_cli.scoring.score import IMAGE_COLUMNS, score_folder

from conftest import MURA_STUDIES, copy, radiograph, save_png8, save_png16


def run(input_path, out, model, **kw):
    config = ScoreConfig(
        input=str(input_path), out_dir=str(out), model=str(model), workers=0, batch_size=4, **kw
    )
    return score_folder(config)


def test_csv_columns_values_and_study_grouping(mura_folder, tmp_path, tiny_model):
    result = run(mura_folder, tmp_path / "out", tiny_model)
    assert result.exit_code == ExitCode.OK
    images = pd.read_csv(tmp_path / "out" / "images.csv", keep_default_na=False)
    studies = pd.read_csv(tmp_path / "out" / "studies.csv")
    assert list(images.columns) == IMAGE_COLUMNS
    assert list(studies.columns) == [
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
    assert images["path"].str.startswith("XR_").all() and not images["path"].str.contains("\\\\").any()
    assert (images["width"] == 70).all() and (images["height"] == 90).all()
    assert images["heatmap_peak_x"].between(0, 69).all() and images["heatmap_peak_y"].between(0, 89).all()
    assert len(studies) == len(MURA_STUDIES)
    for part, patient, study, count in MURA_STUDIES:
        row = studies.set_index("study_id").loc[f"{part}/{patient}/{study}"]
        assert row["n_images"] == count and row["body_part"] == part[3:] and row["patient_id"] == patient
        assert row["label"] == (1 if study.endswith("positive") else 0)
        mine = pd.to_numeric(images.loc[images["study_id"] == f"{part}/{patient}/{study}", "probability"])
        assert row["probability"] == pytest.approx(mine.mean(), abs=1e-6)
        assert row["prediction"] == int(row["probability"] >= 0.5)
    assert images["probability"].astype(float).nunique() > 3  # the model does look at the images
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["counts"] == {
        "images": 8,
        "scored": 8,
        "failed": 0,
        "studies": 4,
        "skipped_files": 2,
        "positive_studies": int(studies["prediction"].sum()),
        "negative_studies": int((studies["prediction"] == 0).sum()),
    }
    assert len(run_json["model"]["weights_sha256"]) == 64 and run_json["runtime"]["heatmap_method"] == "cam"
    assert run_json["config"]["input"] == str(mura_folder)


def test_max_aggregation_and_threshold_override(mura_folder, tmp_path, tiny_model):
    result = run(mura_folder, tmp_path / "out", tiny_model, aggregate="max", threshold=0.9)
    per_image = result.images.groupby("study_id")["probability"].max()
    studies = result.studies.set_index("study_id")
    np.testing.assert_allclose(studies["probability"], per_image.loc[studies.index], atol=1e-12)
    assert (studies["threshold"] == 0.9).all()
    assert (studies["prediction"] == (studies["probability"] >= 0.9).astype(int)).all()


def test_twins_score_alike(tmp_path, tiny_model, rg3_files):
    image = radiograph(7, 200, 160)
    save_png8(image, tmp_path / "in" / "s1" / "eight.png")
    save_png16(image, tmp_path / "in" / "s1" / "sixteen.png")
    copy(rg3_files[0], tmp_path / "in" / "dicom" / "plain.dcm")
    copy(rg3_files[1], tmp_path / "in" / "dicom" / "j2k.dcm")
    result = run(tmp_path / "in", tmp_path / "out", tiny_model)
    p = dict(zip(result.images["path"], result.images["probability"]))
    # the 8-bit file is resized in 8 bits, its 16-bit twin in float: canvases within one grey level
    assert p["s1/eight.png"] == pytest.approx(p["s1/sixteen.png"], abs=2e-3)
    assert p["dicom/plain.dcm"] == pytest.approx(p["dicom/j2k.dcm"], abs=1e-6)
    peaks = result.images.set_index("path")[["heatmap_peak_x", "heatmap_peak_y"]]
    assert peaks.loc["dicom/plain.dcm"].tolist() == peaks.loc["dicom/j2k.dcm"].tolist()


def test_bad_files_are_reported_and_the_rest_scored(mura_folder, tmp_path, tiny_model):
    (mura_folder / "XR_WRIST" / "patient00001" / "study1_positive" / "image9.png").write_bytes(b"")
    (mura_folder / "XR_HAND" / "patient00003" / "study1_positive" / "broken.jpg").write_bytes(
        b"\xff\xd8\xff\xe0trunc"
    )
    result = run(mura_folder, tmp_path / "out", tiny_model)
    assert result.exit_code == ExitCode.PARTIAL
    images = pd.read_csv(tmp_path / "out" / "images.csv", keep_default_na=False).set_index("path")
    assert images.loc["XR_WRIST/patient00001/study1_positive/image9.png", "error"] == "empty file"
    assert images.loc["XR_HAND/patient00003/study1_positive/broken.jpg", "error"].startswith("cannot decode")
    assert images.loc["XR_HAND/patient00003/study1_positive/broken.jpg", "probability"] == ""
    assert (images["error"] == "").sum() == 8
    studies = result.studies.set_index("study_id")
    assert studies.loc["XR_WRIST/patient00001/study1_positive", ["n_images", "n_failed"]].tolist() == [4, 1]
    assert {p for p, _ in result.failures} == {
        "XR_WRIST/patient00001/study1_positive/image9.png",
        "XR_HAND/patient00003/study1_positive/broken.jpg",
    }


def test_nothing_scorable_is_fatal(tmp_path, tiny_model):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_text("text")
    result = run(tmp_path / "in", tmp_path / "out", tiny_model)
    assert result.exit_code == ExitCode.FATAL
    assert pd.isna(result.studies.loc[0, "probability"]) and pd.isna(result.studies.loc[0, "prediction"])


def test_empty_folder_and_existing_results(tmp_path, tiny_model, mura_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG, JPEG or DICOM"):
        run(tmp_path / "empty", tmp_path / "o1", tiny_model)
    run(mura_folder, tmp_path / "o2", tiny_model)
    with pytest.raises(InputError, match="--overwrite"):
        run(mura_folder, tmp_path / "o2", tiny_model)
    config = ScoreConfig(
        input=str(mura_folder), out_dir=str(tmp_path / "o2"), model=str(tiny_model), workers=0
    )
    assert score_folder(config, overwrite=True).exit_code == ExitCode.OK


def test_missing_default_model_says_how_to_get_one(tmp_path, mura_folder, monkeypatch):
    from mura_cli.model import factory as modeling

    monkeypatch.setattr(modeling, "model_search_dirs", lambda: [tmp_path / "none"])
    config = ScoreConfig(input=str(mura_folder), out_dir=str(tmp_path / "o"))
    with pytest.raises(ModelError, match="--model DIR"):
        score_folder(config)


def test_model_by_name_from_user_models_folder(tmp_path, mura_folder, tiny_model, monkeypatch):
    monkeypatch.setenv("MURA_CLI_MODELS", str(tiny_model.parent))
    config = ScoreConfig(
        input=str(mura_folder), out_dir=str(tmp_path / "o"), model=tiny_model.name, workers=0
    )
    assert score_folder(config).run.model.name == tiny_model.name


def test_worker_processes_give_the_same_rows(mura_folder, tmp_path, resnet_model):
    single = run(mura_folder, tmp_path / "a", resnet_model)
    config = ScoreConfig(
        input=str(mura_folder), out_dir=str(tmp_path / "b"), model=str(resnet_model), workers=2, batch_size=3
    )
    multi = score_folder(config)
    pd.testing.assert_frame_equal(single.images, multi.images, atol=1e-6, check_exact=False)


def test_bf16_stays_within_1e2_of_fp32(mura_folder, tmp_path, resnet_model):
    fp32 = run(mura_folder, tmp_path / "a", resnet_model, precision="fp32")
    bf16 = run(mura_folder, tmp_path / "b", resnet_model, precision="bf16")
    assert bf16.run.runtime.precision == "bf16"
    diff = np.abs(fp32.images["probability"].to_numpy(float) - bf16.images["probability"].to_numpy(float))
    assert diff.max() < 1e-2


def test_weights_that_do_not_match_the_architecture(tmp_path, tiny_model, mura_folder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architecture"] = "resnet10t"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match 'resnet10t'"):
        run(mura_folder, tmp_path / "o", broken)


def test_no_patient_demographics_in_any_output(tmp_path, tiny_model, rg3_files):
    import pydicom
    from pypdf import PdfReader

    planted = {
        "PatientName": "Doe^Janeplanted",
        "PatientID": "PID-778899",
        "PatientBirthDate": "19230405",
        "AccessionNumber": "ACC-55501",
        "InstitutionName": "Planted General Hospital",
        "ReferringPhysicianName": "Smith^Plantedphys",
    }
    ds = pydicom.dcmread(rg3_files[0])
    for key, value in planted.items():
        setattr(ds, key, value)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "study.dcm")
    config = ScoreConfig(
        input=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0, pdf=True
    )
    assert score_folder(config).exit_code == ExitCode.OK
    texts = [p.read_text(encoding="utf-8") for p in (tmp_path / "out").glob("*.csv")]
    texts.append((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))
    texts.append("".join(page.extract_text() for page in PdfReader(tmp_path / "out" / "report.pdf").pages))
    for value in planted.values():
        for fragment in {value, value.replace("^", " "), value.split("^")[0]}:
            assert not any(fragment in text for text in texts), fragment
