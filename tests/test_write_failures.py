"""A full or read-only disk under evaluate, train and merge: one line, exit code 4, nothing else lost;
labelled data gets the same modality screen as score."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from mura_cli.choices import ExitCode
from mura_cli.cli.commands import app
from mura_cli.errors import is_write_failure
from mura_cli.evaluation import evaluate as evaluate_module
from mura_cli.scoring import merge as merge_module
from mura_cli.training import checkpoints as training_io

from conftest import copy, learnable_mura, radiograph, save_png8

runner = CliRunner()


def _no_space(real, name: str):
    def write(data, path):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(data, path)

    return write


def _one_line_exit_4(result, name: str) -> None:
    assert result.exit_code == ExitCode.OUTPUT, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"{name}: cannot write the results (No space left on device)" in lines[0]


def test_evaluate_on_a_full_disk_is_one_line_exit_4(tmp_path, tiny_model, monkeypatch):
    data = learnable_mura(tmp_path / "data", patients=6)
    monkeypatch.setattr(evaluate_module, "write_csv", _no_space(evaluate_module.write_csv, "studies.csv"))
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(data),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "ev"),
            "--workers",
            "0",
            "--bootstrap",
            "100",
            "-q",
        ],
    )
    _one_line_exit_4(result, "studies.csv")
    assert "--overwrite" in result.output


def test_train_on_a_full_disk_is_one_line_exit_4_and_resume_finishes(tmp_path, learnable_folder, monkeypatch):
    out = tmp_path / "model"
    args = [
        "train",
        str(learnable_folder),
        "--val-fraction",
        "0.25",
        "--out",
        str(out),
        "--arch",
        "resnet10t",
        "--img-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--no-cache",
        "-q",
    ]
    real = training_io.atomic_write_bytes
    calls = {"checkpoints": 0}

    def second_checkpoint_fails(path, data):
        if Path(path).name == training_io.CHECKPOINT_FILE:
            calls["checkpoints"] += 1
            if calls["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(training_io, "atomic_write_bytes", second_checkpoint_fails)
    result = runner.invoke(app, args)
    _one_line_exit_4(result, "checkpoint.pt")
    assert "--resume" in result.output
    monkeypatch.undo()
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert pd.read_csv(out / "training_log.csv")["epoch"].tolist() == [1, 2]  # epoch 1 kept, epoch 2 redone


def test_merge_on_a_full_disk_is_one_line_exit_4_and_leaves_the_shards(tmp_path, tiny_model, monkeypatch):
    for k in range(6):
        save_png8(radiograph(k), tmp_path / "in" / f"study{k}" / "a.png")
    for i in range(2):
        scored = runner.invoke(
            app,
            [
                "score",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / f"s{i}"),
                "--model",
                str(tiny_model),
                "--workers",
                "0",
                "--shard",
                f"{i}/2",
                "-q",
            ],
        )
        assert scored.exit_code == 0, scored.output
    before = [(tmp_path / f"s{i}" / "images.csv").read_bytes() for i in range(2)]
    monkeypatch.setattr(merge_module, "write_csv", _no_space(merge_module.write_csv, "studies.csv"))
    result = runner.invoke(
        app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]
    )
    _one_line_exit_4(result, "studies.csv")
    assert [(tmp_path / f"s{i}" / "images.csv").read_bytes() for i in range(2)] == before


def test_write_failure_rule_full_disk_anywhere_permission_only_inside(tmp_path):
    out = tmp_path / "out"
    assert is_write_failure(OSError(errno.ENOSPC, "full", str(tmp_path / "cache" / "x")), out)
    assert is_write_failure(OSError(errno.EACCES, "denied", str(out / "images.csv")), out)
    assert not is_write_failure(
        OSError(errno.EACCES, "denied", str(tmp_path / "input.png")), out
    )  # an input's
    assert not is_write_failure(OSError(errno.ENOENT, "missing", str(out / "x")), out)


def test_evaluate_screens_dicom_modalities_like_score(tmp_path, tiny_model):
    from pydicom.data import get_testdata_file

    rows = []
    for k in range(6):
        rows.append((save_png8(radiograph(k), tmp_path / "data" / f"img{k}.png").name, k % 2))
    rows.append((copy(Path(get_testdata_file("CT_small.dcm")), tmp_path / "data" / "ct.dcm").name, 1))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "data" / "labels.csv", index=False)
    common = ["--model", str(tiny_model), "--workers", "0", "--bootstrap", "100", "-q"]
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "data" / "labels.csv"), "--out", str(tmp_path / "ev"), *common]
    )
    assert result.exit_code == 0, result.output
    images = pd.read_csv(tmp_path / "ev" / "images.csv", keep_default_na=False).set_index("path")
    assert (
        images.loc["ct.dcm", "error"].startswith("modality CT (")
        and images.loc["ct.dcm", "probability"] == ""
    )
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["run"]["failed_images"] == 1
    allowed = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "data" / "labels.csv"),
            "--out",
            str(tmp_path / "ev2"),
            "--allow-modality",
            "ct",
            *common,
        ],
    )
    assert allowed.exit_code == 0, allowed.output
    images = pd.read_csv(tmp_path / "ev2" / "images.csv", keep_default_na=False).set_index("path")
    assert images.loc["ct.dcm", "error"] == "" and 0 <= float(images.loc["ct.dcm", "probability"]) <= 1
