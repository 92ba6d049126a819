"""Hostile and odd input, interrupted runs, resume, privacy switches."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from mura_cli.choices import ExitCode
from mura_cli.config import ScoreConfig
from mura_cli.errors import DecodeError, InputError
from mura_cli.inputs.decode import decode_image
from mura_cli.scoring import score as score_module
from mura_cli.scoring.score import score_folder

from conftest import make_model_dir, radiograph, save_png8


def small_dicom(rg3: Path, path: Path, **changes) -> Path:
    """A 64x64 version of the real RG3 radiograph, with header changes."""
    ds = pydicom.dcmread(rg3)
    pixels = ds.pixel_array[::27, ::27][:64, :64].copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    for key, value in changes.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def hostile_folder(root: Path, rg3: Path) -> dict[str, str]:
    """Writes odd files; returns {relative path: expected reason fragment, '' for scored}."""
    expected = {}
    good = save_png8(radiograph(1), root / "ok" / "good.png")
    expected["ok/good.png"] = ""
    (root / "bad").mkdir(parents=True)
    (root / "bad" / "zero.png").write_bytes(b"")
    expected["bad/zero.png"] = "empty file"
    data = good.read_bytes()
    (root / "bad" / "truncated.png").write_bytes(data[: len(data) // 2])
    expected["bad/truncated.png"] = "cannot decode"
    buffer = root / "bad" / "full.jpg"
    Image.fromarray(np.rint(radiograph(2) * 255).astype(np.uint8)).save(buffer, format="JPEG")
    (root / "bad" / "truncated.jpg").write_bytes(buffer.read_bytes()[:300])
    buffer.unlink()
    expected["bad/truncated.jpg"] = "cannot decode"
    whole = small_dicom(rg3, root / "tmp.dcm").read_bytes()
    (root / "tmp.dcm").unlink()
    (root / "bad" / "truncated.dcm").write_bytes(whole[: len(whole) - 3000])
    expected["bad/truncated.dcm"] = "pixel data truncated"
    (root / "bad" / "text.png").write_text("I am a note, not a picture")
    expected["bad/text.png"] = "named .png but its content is not a PNG or JPEG image"
    save_png8(radiograph(3), root / "odd" / "png_named.dcm")
    expected["odd/png_named.dcm"] = ""
    report = pydicom.Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    report.SOPInstanceUID = "1.2.3.999.1"
    report.StudyInstanceUID = "1.2.3.999"
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.save_as(root / "bad" / "report.dcm", enforce_file_format=True)
    expected["bad/report.dcm"] = "without pixel data"
    jxl = pydicom.dcmread(small_dicom(rg3, root / "bad" / "jpegxl.dcm"))
    jxl.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no pixel decoder installed
    jxl.PixelData = pydicom.encaps.encapsulate([b"\xff\x0a" + b"\0" * 64])
    jxl["PixelData"].VR = "OB"
    jxl.save_as(root / "bad" / "jpegxl.dcm")
    expected["bad/jpegxl.dcm"] = "cannot decompress"
    frames = pydicom.dcmread(small_dicom(rg3, root / "odd" / "multiframe.dcm"))
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    frames.save_as(root / "odd" / "multiframe.dcm")
    expected["odd/multiframe.dcm"] = ""
    rgb = np.repeat((np.rint(radiograph(4) * 255).astype(np.uint8))[..., None], 3, axis=2)
    small_dicom(
        rg3,
        root / "odd" / "rgb.dcm",
        Rows=90,
        Columns=70,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=rgb.tobytes(),
    )
    expected["odd/rgb.dcm"] = ""
    signed = pydicom.dcmread(small_dicom(rg3, root / "odd" / "signed.dcm"))
    values = signed.pixel_array.astype(np.int16) - 512
    signed.PixelRepresentation, signed.PixelData, signed.WindowCenter = (
        1,
        values.tobytes(),
        float(signed.WindowCenter) - 512,
    )
    signed.save_as(root / "odd" / "signed.dcm")
    expected["odd/signed.dcm"] = ""
    Image.new("L", (1, 1), 128).save(root / "odd" / "one_pixel.png")
    expected["odd/one_pixel.png"] = "1 x 1 pixels, too small for a radiograph"
    bomb = Image.new("1", (20000, 20000))  # 1-bit: tiny file, 400 Mpixel declared
    bomb.save(root / "bad" / "bomb.png", optimize=True)
    expected["bad/bomb.png"] = "pixels"
    os.symlink("loop.png", root / "bad" / "loop.png")
    expected["bad/loop.png"] = "link"
    save_png8(radiograph(5), root / "Ünïcode study" / "bild 1 (copy).png")
    expected["Ünïcode study/bild 1 (copy).png"] = ""
    return expected


def test_every_odd_file_gets_its_own_reason_and_the_rest_is_scored(tmp_path, tiny_model, rg3_files):
    expected = hostile_folder(tmp_path / "in", rg3_files[0])
    started = time.perf_counter()
    result = score_folder(
        ScoreConfig(
            input=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0
        )
    )
    assert time.perf_counter() - started < 60  # the bomb is refused, not decoded
    assert result.exit_code == ExitCode.PARTIAL
    rows = pd.read_csv(tmp_path / "out" / "images.csv", keep_default_na=False).set_index("path")
    assert set(rows.index) == set(expected)
    for path, reason in expected.items():
        if reason:
            assert reason in rows.loc[path, "error"], (path, rows.loc[path, "error"])
            assert rows.loc[path, "probability"] == ""
            assert "\n" not in rows.loc[path, "error"]
        else:
            assert rows.loc[path, "error"] == "", (path, rows.loc[path, "error"])
            assert 0.0 <= float(rows.loc[path, "probability"]) <= 1.0


def test_a_file_deleted_during_the_run(tmp_path, tiny_model, monkeypatch, mura_folder):
    victim = next(mura_folder.rglob("image2.png"))
    real_discover = score_module.discover

    def discover_then_delete(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        victim.unlink()
        return found

    monkeypatch.setattr(score_module, "discover", discover_then_delete)
    result = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(tmp_path / "o"), model=str(tiny_model), workers=0)
    )
    assert result.exit_code == ExitCode.PARTIAL
    assert [reason for _, reason in result.failures] == ["file disappeared before it could be read"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    path = save_png8(radiograph(1), tmp_path / "secret.png")
    path.chmod(0)
    with pytest.raises(DecodeError, match="permission denied"):
        decode_image(path)


def _seeds(rg3: Path, tmp_path: Path) -> list[bytes]:
    png = save_png8(radiograph(1, 20, 16), tmp_path / "seed.png").read_bytes()
    dicom = small_dicom(rg3, tmp_path / "seed.dcm").read_bytes()
    return [png, dicom, b"\xff\xd8\xff\xe0" + b"\0" * 40, b"\0" * 128 + b"DICM"]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_decode_or_raise_decode_error(data, tmp_path, rg3_files):
    seeds = _seeds(rg3_files[0], tmp_path)
    base = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(0, 8))):  # flip, cut or insert bytes
        position = data.draw(st.integers(0, max(len(base) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and base:
            base[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del base[position:]
        else:
            base[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "fuzz.bin"
    path.write_bytes(bytes(base))
    try:
        image = decode_image(path)
    except DecodeError:
        return
    assert image.ndim == 2 and image.dtype == np.float32 and np.isfinite(image).all()


def _many_images(root: Path, count: int) -> Path:
    for k in range(count):
        save_png8(radiograph(k), root / f"study{k // 3:03d}" / f"img{k % 3}.png")
    return root


def _score_command(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mura_cli",
        "score",
        str(data),
        "--out",
        str(out),
        "--model",
        str(model),
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--quiet",
        *extra,
    ]


def _wait_for_rows(path: Path, rows: int, process, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and process.poll() is None:
        if path.is_file() and path.read_text().count("\n") > rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {rows} rows")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_rows(tmp_path):
    model = make_model_dir(tmp_path / "slow-model", "resnet10t", size=160)  # slow enough to be killed midway
    data = _many_images(tmp_path / "data", 48)
    whole = subprocess.run(_score_command(data, tmp_path / "whole", model), capture_output=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(_score_command(data, tmp_path / "cut", model), stderr=subprocess.PIPE)
    _wait_for_rows(tmp_path / "cut" / "images.csv", 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    partial = pd.read_csv(tmp_path / "cut" / "images.csv")
    assert 10 <= len(partial) < 48
    refused = subprocess.run(_score_command(data, tmp_path / "cut", model), capture_output=True, text=True)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = subprocess.run(
        _score_command(data, tmp_path / "cut", model, "--resume"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    for name in ("images.csv", "studies.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_end_cleanly_and_say_how_to_resume(tmp_path, signal_number):
    """SIGTERM (what batch schedulers send) is handled like Ctrl-C."""
    model = make_model_dir(tmp_path / "slow-model", "resnet10t", size=160)
    data = _many_images(tmp_path / "data", 120)
    command = _score_command(data, tmp_path / "out", model)
    command.remove("--quiet")
    # as from a terminal: a test run started in the background (`pytest &`) has SIGINT ignored, and a
    # child would inherit that
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_rows(tmp_path / "out" / "images.csv", 5, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    assert len(pd.read_csv(tmp_path / "out" / "images.csv")) >= 5


def test_resume_refuses_results_of_another_model(tmp_path, tiny_model, resnet_model, mura_folder):
    score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(tmp_path / "o"), model=str(tiny_model), workers=0)
    )
    with pytest.raises(InputError, match="another model"):
        score_folder(
            ScoreConfig(
                input=str(mura_folder), out_dir=str(tmp_path / "o"), model=str(resnet_model), workers=0
            ),
            resume=True,
        )


def test_include_phi_adds_patient_id_only_when_asked(tmp_path, tiny_model, rg3_files):
    small_dicom(rg3_files[0], tmp_path / "in" / "a.dcm", PatientID="PID-4242")
    plain = score_folder(
        ScoreConfig(
            input=str(tmp_path / "in"), out_dir=str(tmp_path / "o1"), model=str(tiny_model), workers=0
        )
    )
    assert "PID-4242" not in (tmp_path / "o1" / "studies.csv").read_text()
    assert plain.studies["patient_id"].tolist() == [""]
    with_phi = score_folder(
        ScoreConfig(
            input=str(tmp_path / "in"),
            out_dir=str(tmp_path / "o2"),
            model=str(tiny_model),
            workers=0,
            include_phi=True,
        )
    )
    assert with_phi.studies["patient_id"].tolist() == ["PID-4242"]


@pytest.mark.slow
def test_nothing_is_imported_from_the_working_directory(tmp_path, tiny_model, mura_folder):
    """`score` re-executes itself for the allocator tuning; a rich.py or mura_cli/ where the user runs
    it (a downloaded archive, say) must never be imported."""
    trap = tmp_path / "archive"
    marker = tmp_path / "imported.txt"
    planted = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (trap / "mura_cli").mkdir(parents=True)
    (trap / "rich.py").write_text(planted)
    (trap / "typer.py").write_text(planted)
    (trap / "mura_cli" / "__init__.py").write_text(planted)
    launcher = Path(sys.executable).with_name("mura-cli")
    result = subprocess.run(
        [
            str(launcher),
            "score",
            str(mura_folder),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model),
            "--quiet",
        ],
        cwd=trap,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), marker.read_text()
    assert (tmp_path / "out" / "images.csv").is_file()


@pytest.mark.slow
def test_fifos_and_other_special_files_never_hang(tmp_path, tiny_model, mura_folder):
    """Only regular files are opened: a FIFO named like an image, reached through a link, or without an
    extension gets a reason row or is skipped; a FIFO config.json is a one-line model error."""
    data = mura_folder
    os.mkfifo(data / "pipe.png")
    os.mkfifo(tmp_path / "elsewhere.fifo")
    os.symlink(tmp_path / "elsewhere.fifo", data / "linked.dcm")
    os.mkfifo(data / "1.2.840.99999")  # extension-less: only DICOM content would make it an image
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("mura-cli")),
            "score",
            str(data),
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    images = pd.read_csv(out / "images.csv", keep_default_na=False)
    reasons = dict(zip(images["path"], images["error"]))
    assert reasons["pipe.png"] == "not a regular file: a FIFO (named pipe)"
    assert reasons["linked.dcm"] == "not a regular file: a FIFO (named pipe)"
    assert "1.2.840.99999" not in reasons
    assert (images["error"] == "").sum() == len(images) - 2

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    os.mkfifo(model / "config.json")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("mura-cli")),
            "score",
            str(data),
            "--out",
            str(tmp_path / "out2"),
            "--model",
            str(model),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "config.json: not a regular file: a FIFO" in result.stderr


def test_unreadable_folders_and_files_are_reported_not_skipped(tmp_path, mura_folder, monkeypatch):
    """Root reads everything, so the permission errors are simulated where the OS would raise them."""
    from mura_cli.inputs import discover as discover_module
    from mura_cli.inputs import sniff

    locked = mura_folder / "XR_HAND" / "locked"
    locked.mkdir(parents=True)
    (mura_folder / "1.2.3.4").write_bytes(b"\0" * 200)
    real_scandir, real_sniff = os.scandir, sniff.sniff_file

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def sniff_file(path):
        if Path(path).name == "1.2.3.4":
            raise PermissionError(13, "Permission denied", str(path))
        return real_sniff(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(discover_module.sniff, "sniff_file", sniff_file)
    found = {r.rel_path: r for r in discover_module.discover(mura_folder).images}
    assert found["XR_HAND/locked/"].error == "folder cannot be read: permission denied"
    assert "1.2.3.4" in found and found["1.2.3.4"].kind == "unreadable"


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, tiny_model, mura_folder):
    from mura_cli.results import lock as folder_lock

    out = tmp_path / "out"
    with folder_lock.hold(out):  # as a live run holds it
        for resume in (False, True):
            with pytest.raises(InputError, match=r"in use by another mura-cli run \(process \d+\)"):
                score_folder(
                    ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0),
                    resume=resume,
                )
    result = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    )
    assert result.exit_code == 0  # free again once the holder has ended


def test_resume_refuses_another_input_and_retries_failed_rows(tmp_path, tiny_model, mura_folder):
    out = tmp_path / "out"
    broken = mura_folder / "XR_HAND" / "patient00009" / "study1_negative" / "image1.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    first = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    )
    assert first.exit_code == 3
    other = tmp_path / "other"
    shutil.copytree(mura_folder, other)  # same relative names, another folder
    with pytest.raises(InputError, match="another input"):
        score_folder(
            ScoreConfig(input=str(other), out_dir=str(out), model=str(tiny_model), workers=0), resume=True
        )
    save_png8(radiograph(5), broken)  # the file is mended: resume scores it instead of keeping the failure
    again = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0), resume=True
    )
    assert again.exit_code == 0
    row = again.images.set_index("path").loc["XR_HAND/patient00009/study1_negative/image1.png"]
    assert row["error"] == "" and 0 <= row["probability"] <= 1
    assert len(again.images) == len(first.images)


def test_resume_scores_again_an_image_changed_in_place(tmp_path, tiny_model, mura_folder):
    out = tmp_path / "out"
    config = ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    first = score_folder(config)
    rows = first.images.set_index("path")
    changed = sorted(rows.index)[0]
    assert rows.loc[changed, "file_bytes"] == (mura_folder / changed).stat().st_size
    save_png8(radiograph(99, height=120, width=60), mura_folder / changed)  # same name, another picture
    os.utime(mura_folder / changed, ns=(1_000_000_000, 1_000_000_000))
    again = score_folder(config, resume=True)
    fresh = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(tmp_path / "fresh"), model=str(tiny_model), workers=0)
    )
    assert again.run.resumed_changed_images == 1 and again.run.resumed_images == len(first.images) - 1
    pd.testing.assert_series_equal(again.images["probability"], fresh.images["probability"])
    assert again.images.set_index("path").loc[changed, "height"] == 120
    assert again.images.set_index("path").loc[changed, "probability"] != rows.loc[changed, "probability"]


def test_resume_scores_again_rows_written_without_a_fingerprint(tmp_path, tiny_model, mura_folder):
    out = tmp_path / "out"
    config = ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    first = score_folder(config)
    old = pd.read_csv(out / "images.csv").drop(
        columns=["file_bytes", "file_mtime_ns"]
    )  # an older release's file
    old.to_csv(out / "images.csv", index=False)
    again = score_folder(config, resume=True)
    assert again.run.resumed_images == 0 and again.run.resumed_changed_images == len(first.images)
    assert again.images["file_mtime_ns"].notna().all()


def test_names_that_are_not_utf8_or_hold_line_breaks_round_trip(tmp_path, tiny_model):
    folder = tmp_path / "names"
    names = {
        os.fsdecode(b"\xff\xfe.png"): "\\xff\\xfe.png",
        "car\rriage.png": "car\\rriage.png",
        "new\nline.png": "new\\nline.png",
        "plain é.png": "plain é.png",
    }
    for seed, name in enumerate(names):
        save_png8(radiograph(seed), Path(os.fsdecode(folder)) / name)
    config = ScoreConfig(input=str(folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0)
    first = score_folder(config)
    assert first.exit_code == 0
    table = pd.read_csv(tmp_path / "out" / "images.csv")  # valid UTF-8, one row per image
    assert sorted(table["path"]) == sorted(names.values()) and table["probability"].notna().all()
    again = score_folder(config, resume=True)  # the written names find their rows again
    assert again.run.resumed_images == len(names) and again.run.resumed_changed_images == 0


def test_non_radiograph_modalities_get_a_reason_unless_allowed(tmp_path, tiny_model, rg3_files):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(rg3_files[0], folder / "cr.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    config = ScoreConfig(input=str(folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0)
    result = score_folder(config)
    rows = result.images.set_index("path")
    assert result.exit_code == ExitCode.PARTIAL
    assert rows.loc["cr.dcm", "error"] == "" and 0 <= rows.loc["cr.dcm", "probability"] <= 1
    assert rows.loc["ct.dcm", "error"] == (
        "modality CT (computed tomography) is not a radiograph; --allow-modality CT scores it anyway"
    )
    assert rows.loc["mr.dcm", "error"].startswith("modality MR (magnetic resonance)")
    allowed = score_folder(
        ScoreConfig(
            input=str(folder),
            out_dir=str(tmp_path / "out2"),
            model=str(tiny_model),
            workers=0,
            allow_modality=("CT",),
        )
    )
    rows = allowed.images.set_index("path")
    assert rows.loc["ct.dcm", "error"] == "" and rows.loc["mr.dcm", "error"] != ""


def test_colour_photographs_are_refused_and_gray_rgb_is_not(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "face.jpg")
    gray = np.repeat((radiograph(1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    gray[:4, :4] = (255, 0, 0)  # a small coloured marker
    Image.fromarray(gray).save(tmp_path / "rgb_radiograph.png")
    with pytest.raises(DecodeError, match=r"face.jpg: a colour picture \(\d+\.\d% of its pixels coloured\)"):
        decode_image(tmp_path / "face.jpg")
    assert decode_image(tmp_path / "rgb_radiograph.png").shape == (90, 70)


def test_multi_frame_dicom_decodes_its_first_frame_and_bounds_the_count(tmp_path, rg3_files):
    ds = pydicom.dcmread(rg3_files[0])
    frame = ds.pixel_array[:64, :64]
    frames = np.stack([frame, frame[::-1], frame[:, ::-1]])
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, 3
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "frames.dcm")
    single = pydicom.dcmread(rg3_files[0])
    single.Rows, single.Columns = 64, 64
    single.PixelData = np.ascontiguousarray(frame).tobytes()
    single.save_as(tmp_path / "single.dcm")
    np.testing.assert_array_equal(
        decode_image(tmp_path / "frames.dcm"), decode_image(tmp_path / "single.dcm")
    )
    ds.NumberOfFrames = 50_000  # more than the file holds, and over the bound
    ds.save_as(tmp_path / "claims.dcm")
    with pytest.raises(DecodeError, match="declares 50,000 frames"):
        decode_image(tmp_path / "claims.dcm")


def test_resume_with_pdf_rescores_rows_that_have_no_thumbnail(tmp_path, tiny_model, mura_folder):
    from pypdf import PdfReader

    out = tmp_path / "out"
    first = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    )
    again = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0, pdf=True),
        resume=True,
    )
    assert again.run.resumed_images == 0  # scored again: the first run kept no thumbnails
    pd.testing.assert_series_equal(again.images["probability"], first.images["probability"])
    pictures = sum(len(page.images) for page in PdfReader(out / "report.pdf").pages)
    assert pictures >= len(first.images)


def _no_space_for(name: str, real):
    def write(table, path):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(table, path)

    return write


def test_full_disk_is_one_line_exit_4_and_resume_finishes(tmp_path, tiny_model, mura_folder, monkeypatch):
    from typer.testing import CliRunner

    from mura_cli.cli.commands import app

    out = tmp_path / "out"
    monkeypatch.setattr(score_module, "write_csv", _no_space_for("studies.csv", score_module.write_csv))
    result = CliRunner().invoke(
        app,
        ["score", str(mura_folder), "--out", str(out), "--model", str(tiny_model), "--workers", "0", "-q"],
    )
    assert result.exit_code == ExitCode.OUTPUT, result.output
    assert "studies.csv: cannot write the results (No space left on device)" in result.output
    assert "Traceback" not in result.output and "--resume" in result.output
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    images = len(list(mura_folder.rglob("*.png")))
    assert len(pd.read_csv(out / "images.csv")) == images  # every finished row kept
    monkeypatch.undo()
    resumed = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0), resume=True
    )
    assert resumed.run.status == "finished" and resumed.run.resumed_images == images


def test_overwrite_keeps_the_old_results_when_the_new_run_cannot_be_written(
    tmp_path, tiny_model, mura_folder, monkeypatch
):
    from mura_cli.errors import OutputError

    out = tmp_path / "out"
    config = ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    score_folder(config)
    before = {name: (out / name).read_bytes() for name in ("images.csv", "studies.csv", "run.json")}
    monkeypatch.setattr(score_module, "write_csv", _no_space_for("studies.csv", score_module.write_csv))
    with pytest.raises(OutputError, match="the earlier results are back in place"):
        score_folder(config, overwrite=True)
    assert {name: (out / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    score_folder(config, overwrite=True)
    assert not (out / score_module.PREVIOUS_FOLDER).exists()


def test_read_only_results_folder_is_one_line(tmp_path, tiny_model, mura_folder, monkeypatch):
    from mura_cli.errors import OutputError

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(
        OutputError, match=r"ro: cannot write the results \(Read-only file system\); nothing was scored"
    ):
        score_folder(
            ScoreConfig(
                input=str(mura_folder), out_dir=str(tmp_path / "ro"), model=str(tiny_model), workers=0
            )
        )


def test_failure_reasons_are_one_line(tmp_path, tiny_model, mura_folder, monkeypatch):
    assert DecodeError("a.png", "first line\nsecond line\r\n").reason == "first line second line"
    real = score_module.discover

    def with_odd_reason(*args, **kwargs):
        found = real(*args, **kwargs)
        first = found.images[0]
        from dataclasses import replace as replaced

        return replaced(found, images=(replaced(first, error="header:\n  bad\ttag"), *found.images[1:]))

    monkeypatch.setattr(score_module, "discover", with_odd_reason)
    result = score_folder(
        ScoreConfig(input=str(mura_folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0)
    )
    assert "header: bad tag" in set(result.images["error"])
    assert len((tmp_path / "out" / "images.csv").read_text().splitlines()) == len(result.images) + 1


def test_resume_keeps_rows_when_another_row_has_no_fingerprint(tmp_path, tiny_model, mura_folder):
    """A failed row (no size or time) must not turn the other rows' nanosecond times into floats."""
    os.symlink("missing.png", mura_folder / "XR_WRIST" / "broken_link.png")
    config = ScoreConfig(
        input=str(mura_folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0
    )
    first = score_folder(config)
    scored = int((first.images["error"] == "").sum())
    again = score_folder(config, resume=True)
    assert again.run.resumed_images == scored and again.run.resumed_changed_images == 0
    assert again.images["file_mtime_ns"].tolist() == first.images["file_mtime_ns"].tolist()


def test_an_input_folder_name_that_is_not_utf8_reaches_run_json(tmp_path, tiny_model):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/scans\xff"))
    save_png8(radiograph(1), folder / "a.png")
    result = score_folder(
        ScoreConfig(input=str(folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0)
    )
    assert result.exit_code == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))["input_root"].endswith(
        "scans\\xff"
    )
    config = ScoreConfig(input=str(folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0)
    assert score_folder(config, resume=True).run.resumed_images == 1  # the written root is recognised
    page = score_folder(
        ScoreConfig(
            input=str(folder), out_dir=str(tmp_path / "html"), model=str(tiny_model), workers=0, html=True
        )
    )
    assert page.exit_code == 0 and "scans\\\\xff/a.png" in (tmp_path / "html" / "report.html").read_text()


def test_every_pydicom_test_file_is_accounted_for_without_a_traceback_warning_or_hang(
    tmp_path, tiny_model, rg3_files
):
    """All of pydicom's and pydicom-data's test files (CT, MR, US, SEG, RT, SR, DICOMDIR, damaged files,
    every transfer syntax) beside the odd files above, once screened and once with every modality let in
    so that each file reaches the decoder: one row or one skip per file, a one-line reason per failure."""
    import data_store
    from pydicom.data import get_testdata_file

    root = tmp_path / "in"
    shutil.copytree(Path(get_testdata_file("CT_small.dcm")).parent, root / "pydicom")
    shutil.copytree(Path(data_store.__file__).parent / "data", root / "pydicom-data")
    hostile_folder(root / "odd", rg3_files[0])
    files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    everything = [
        arg
        for code in ("CT", "MR", "US", "OT", "NM", "SEG", "SR", "RTDOSE", "RTPLAN", "RTSTRUCT", "ECG")
        for arg in ("--allow-modality", code)
    ]
    for name, extra in (("screened", []), ("all", everything)):
        out = tmp_path / name
        run = subprocess.run(
            [*_score_command(root, out, tiny_model), "--batch-size", "16", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )  # a hang fails here
        assert run.returncode == ExitCode.PARTIAL, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and "Warning" not in run.stderr, run.stderr[-2000:]
        rows = pd.read_csv(out / "images.csv", keep_default_na=False)
        record = json.loads((out / "run.json").read_text())
        assert len(rows) + record["counts"]["skipped_files"] == len(files)
        failed = rows[rows["probability"] == ""]
        assert (failed["error"] != "").all() and not failed["error"].str.contains("\n").any()
        assert len(failed) == record["counts"]["failed"] and len(rows) - len(failed) >= 5
