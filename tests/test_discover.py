"""Finding images and grouping them into studies."""

from __future__ import annotations

import pydicom
import pytest

from mura_cli.errors import InputError
from mura_cli.inputs.discover import discover, parse_mura_path
from mura_cli.inputs.sniff import DICOM, sniff_file

from conftest import MURA_STUDIES, copy, radiograph, save_png8


def test_mura_layout_gives_studies_body_parts_patients_and_labels(mura_folder):
    found = discover(mura_folder)
    assert len(found.images) == sum(n for *_, n in MURA_STUDIES)
    studies = {r.study_id: r for r in found.images}
    assert set(studies) == {f"{p}/{pt}/{s}" for p, pt, s, _ in MURA_STUDIES}
    wrist = studies["XR_WRIST/patient00001/study1_positive"]
    assert (wrist.body_part, wrist.patient_id, wrist.label) == ("WRIST", "patient00001", 1)
    assert studies["XR_ELBOW/patient00002/study1_negative"].label == 0
    assert found.skipped == 2  # notes.txt and .DS_Store, counted, not listed as images
    assert [r.rel_path for r in found.images] == sorted(r.rel_path for r in found.images)


def test_extensions_in_any_case_and_plain_folders(tmp_path):
    save_png8(radiograph(1), tmp_path / "a" / "one.PNG")
    save_png8(radiograph(2), tmp_path / "a" / "two.Png")
    save_png8(radiograph(3), tmp_path / "b" / "three.png")
    save_png8(radiograph(4), tmp_path / ".hidden" / "four.png")
    found = discover(tmp_path)
    assert {(r.rel_path, r.study_id) for r in found.images} == {
        ("a/one.PNG", "a"),
        ("a/two.Png", "a"),
        ("b/three.png", "b"),
    }
    assert all(r.label is None and r.patient_id == "" for r in found.images)


def test_dicom_grouped_by_study_uid_across_folders(rg3_files, tmp_path):
    copy(rg3_files[0], tmp_path / "export1" / "IMG001.DCM")
    copy(rg3_files[1], tmp_path / "export2" / "deeper" / "IMG002.dicom")
    found = discover(tmp_path)
    uid = str(pydicom.dcmread(rg3_files[0], stop_before_pixels=True).StudyInstanceUID)
    assert [r.study_id for r in found.images] == [uid, uid]
    assert {r.body_part for r in found.images} == {"EXTREMITY"}
    assert {r.kind for r in found.images} == {"dicom"}


def test_dicom_without_extension_and_without_preamble(rg3_files, tmp_path):
    copy(rg3_files[0], tmp_path / "1.2.840.10008.5.1.4.1.1.1.123")  # UID-like name
    copy(rg3_files[0], tmp_path / "IM0001")
    bare = pydicom.dcmread(rg3_files[0])
    bare.save_as(tmp_path / "NOPREAMBLE", enforce_file_format=False)
    bare_bytes = (tmp_path / "NOPREAMBLE").read_bytes()
    if bare_bytes[128:132] == b"DICM":  # force a dataset-only file: drop preamble and file meta
        ds = pydicom.dcmread(rg3_files[0])
        ds.preamble = None
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.save_as(tmp_path / "NOPREAMBLE", enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert (tmp_path / "NOPREAMBLE").read_bytes()[128:132] != b"DICM"
    assert sniff_file(tmp_path / "NOPREAMBLE") == DICOM
    (tmp_path / "README").write_text("plain text, no extension")
    found = discover(tmp_path)
    assert sorted(r.rel_path for r in found.images) == [
        "1.2.840.10008.5.1.4.1.1.1.123",
        "IM0001",
        "NOPREAMBLE",
    ]
    assert found.skipped == 1


def test_shared_bare_dicom_is_found(shared_dicom, tmp_path):
    copy(shared_dicom / "fo-dicom_CR-MONO1-10-chest.dcm", tmp_path / "CHESTFILE")
    assert [r.rel_path for r in discover(tmp_path).images] == ["CHESTFILE"]


def test_single_file_input(tmp_path):
    path = save_png8(
        radiograph(1), tmp_path / "XR_FINGER" / "patient00009" / "study3_negative" / "image1.png"
    )
    found = discover(path)
    assert len(found.images) == 1
    record = found.images[0]
    assert record.rel_path == "image1.png"
    assert (record.study_id, record.body_part, record.label) == (
        "XR_FINGER/patient00009/study3_negative",
        "FINGER",
        0,
    )


def test_missing_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "nope")


def test_parse_mura_path_ignores_other_names():
    parsed = parse_mura_path(("data", "XR_SHOULDER", "patient11185", "study1_positive", "image1.png"))
    assert (parsed.body_part, parsed.patient_id, parsed.label) == ("SHOULDER", "patient11185", 1)
    assert parse_mura_path(("data", "study", "x.png")).label is None


def test_group_by_chooses_what_forms_a_study(mura_folder, rg3_files, tmp_path):
    flat = tmp_path / "flat"
    for k in range(14):
        save_png8(radiograph(k), flat / f"scan{k:02d}.png")
    auto = discover(flat)
    assert {r.study_id for r in auto.images} == {"flat"}
    assert len(auto.notices) == 1 and "14 images in flat were grouped as one study" in auto.notices[0]
    assert "--group-by image" in auto.notices[0]
    alone = discover(flat, group_by="image")
    assert len({r.study_id for r in alone.images}) == 14 and alone.notices == ()

    mura = discover(mura_folder)
    by_folder = discover(mura_folder, group_by="folder")
    assert discover(mura_folder).notices == ()  # MURA studies are named by their folders: no notice
    assert [r.study_id for r in mura.images] == [r.study_id for r in by_folder.images]  # MURA: its folders
    assert {r.study_id for r in by_folder.images} == {r.rel_path.rsplit("/", 1)[0] for r in by_folder.images}
    assert [r.label for r in by_folder.images] == [r.label for r in mura.images]  # labels stay

    for k, folder in enumerate(("a", "b")):  # one DICOM study spread over two folders
        copy(rg3_files[0], tmp_path / "dcm" / folder / f"{k}.dcm")
    assert len({r.study_id for r in discover(tmp_path / "dcm", group_by="dicom-study").images}) == 1
    assert len({r.study_id for r in discover(tmp_path / "dcm", group_by="folder").images}) == 2
