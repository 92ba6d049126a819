"""The real command line: through CliRunner and as a subprocess, with its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from mura_cli.cli.commands import app

runner = CliRunner()


def test_score_cli_writes_results_and_exits_0(mura_folder, tmp_path, tiny_model):
    out = tmp_path / "res"
    result = runner.invoke(
        app,
        [
            "score",
            str(mura_folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"images.csv", "studies.csv", "run.json"}
    assert "images scored" in result.output and "8 of 8" in result.output


def test_score_cli_partial_failure_exits_3_and_names_the_file(mura_folder, tmp_path, tiny_model):
    (mura_folder / "XR_HAND" / "zero.png").write_bytes(b"")
    result = runner.invoke(
        app,
        [
            "score",
            str(mura_folder),
            "-m",
            str(tiny_model),
            "-o",
            str(tmp_path / "r"),
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 3
    assert "XR_HAND/zero.png: empty file" in result.output


def test_score_cli_fatal_and_usage_errors(tmp_path, tiny_model, mura_folder):
    missing = runner.invoke(app, ["score", str(tmp_path / "nowhere"), "-m", str(tiny_model)])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
    bad_option = runner.invoke(app, ["score", str(mura_folder), "--aggregate", "median"])
    assert bad_option.exit_code == 2
    bad_device = runner.invoke(
        app, ["score", str(mura_folder), "-m", str(tiny_model), "--device", "tpu", "-o", str(tmp_path / "x")]
    )
    assert bad_device.exit_code == 1 and "--device tpu" in bad_device.output


def test_sample_data_then_score_as_a_subprocess(tmp_path, tiny_model):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MURA_CLI_MALLOC_TUNING")},
        "PYTHONUNBUFFERED": "1",
    }
    samples = tmp_path / "samples"
    made = subprocess.run(
        [sys.executable, "-m", "mura_cli", "sample-data", str(samples)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert len(list(samples.glob("*.dcm"))) == 2
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "mura_cli",
            "score",
            str(samples),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "out"),
            "--pdf",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr
    studies = pd.read_csv(tmp_path / "out" / "studies.csv")
    assert (
        len(studies) == 1 and studies.loc[0, "n_images"] == 2 and studies.loc[0, "body_part"] == "EXTREMITY"
    )
    assert (tmp_path / "out" / "report.pdf").stat().st_size > 10_000
    import json

    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "glibc.malloc.trim_threshold" in run["runtime"]["glibc_tunables"]  # re-executed with tuned malloc


def test_malloc_tuning_can_be_turned_off(tmp_path, tiny_model, mura_folder):
    import json

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["MURA_CLI_MALLOC_TUNING"] = "0"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mura_cli",
            "score",
            str(mura_folder),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["runtime"]["glibc_tunables"] == ""


def test_train_then_evaluate_with_boxes_through_the_cli(learnable_folder, tmp_path):
    import json

    model = tmp_path / "model"
    trained = runner.invoke(
        app,
        [
            "train",
            str(learnable_folder),
            "--out",
            str(model),
            "--arch",
            "resnet10t",
            "--img-size",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--lr",
            "3e-3",
            "--head-lr",
            "1e-2",
            "--val-fraction",
            "0.25",
            "--freeze-epochs",
            "1",
            "--rotate",
            "30",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "best epoch" in trained.output and (model / "model.safetensors").is_file()
    assert "epochs (validation at study level)" in trained.output and "val AUROC" in trained.output
    again = runner.invoke(app, ["train", str(learnable_folder), "--out", str(model)])
    assert again.exit_code == 1 and "--resume" in again.output

    images = pd.read_csv(model / "split.csv")
    positive = images[images["label"] == 1]["rel_path"].iloc[0]
    (tmp_path / "boxes.csv").write_text(f"path,x0,y0,x1,y1\n{positive},0,0,64,80\n")
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            str(learnable_folder),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "ev"),
            "--boxes",
            str(tmp_path / "boxes.csv"),
            "--workers",
            "0",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "study level" in evaluated.output and "AUROC" in evaluated.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["localisation"]["overall"]["n"] == 1
    assert metrics["localisation"]["overall"]["pointing_game"] == 1.0  # the box covers the whole image
    assert metrics["localisation"]["overall"]["energy_inside"] == pytest.approx(1.0, abs=1e-6)
    bad_split = runner.invoke(
        app,
        [
            "evaluate",
            str(learnable_folder),
            "--model",
            str(model),
            "--split",
            "test",
            "--out",
            str(tmp_path / "ev2"),
        ],
    )
    assert bad_split.exit_code == 1 and "no images in split 'test'" in bad_split.output


def test_models_lists_user_models_with_held_out_metrics(tmp_path, tiny_model, monkeypatch):
    import json
    import shutil

    user = tmp_path / "user-models"
    shutil.copytree(tiny_model, user / "good")
    evaluation = {
        "study": {
            "overall": {
                "auroc": {"value": 0.9312, "ci": [0.9, 0.96]},
                "sensitivity": {"value": 0.8, "ci": [0.7, 0.9]},
                "specificity": {"value": 0.85, "ci": [0.8, 0.9]},
            }
        }
    }
    (user / "good" / "evaluation.json").write_text(json.dumps(evaluation))
    (user / "broken").mkdir()
    (user / "broken" / "config.json").write_text('{"architecture": "resnet10t", "threshold": 7}')
    monkeypatch.setenv("MURA_CLI_MODELS", str(user))
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert (
        "good" in result.output
        and "0.931 [0.900-0.960]" in result.output
        and "0.800 / 0.850" in result.output
    )
    assert "broken" in result.output and "threshold" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["score", ".", "--precision", "foo"],
        ["score", ".", "--tta", "mirror"],
        ["score", ".", "--allow-modality", "C T"],
        ["train", ".", "--out", "m", "--in-chans", "2"],
        ["train", ".", "--out", "m", "--pooling", "max"],
        ["evaluate", ".", "--precision", "foo"],
        ["check-precision", ".", "--precision", "fp8"],
        ["merge", "a", "b", "--out", "m", "--pdf=maybe"],
    ],
)
def test_invalid_values_exit_2_before_torch_is_imported(args):
    probe = (
        "import sys\nfrom typer.testing import CliRunner\nfrom mura_cli.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "print(result.exit_code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


@pytest.mark.parametrize(
    "command, config_name, least",
    [
        ("score", "ScoreConfig", 12),
        ("train", "TrainConfig", 12),
        ("evaluate", "EvalConfig", 12),
        ("merge", "MergeConfig", 2),
        ("check-precision", "PrecisionCheckConfig", 5),
    ],
)
def test_every_option_takes_its_default_help_and_choices_from_the_config(command, config_name, least):
    import dataclasses
    import typing

    import typer.main

    from mura_cli import config as config_module

    config_cls = getattr(config_module, config_name)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    declared = [name for name, f in fields.items() if f.metadata]
    assert len(declared) >= least
    for name in declared:
        param = params.get(name) or params.get({"out_dir": "out"}.get(name, name))
        if name == "resume_changes":  # given as one comma-separated string
            continue
        assert param is not None, f"{command} has no option for {name}"
        spec = fields[name]
        default = param.default
        default = tuple(default) if isinstance(default, list) else default
        assert default == spec.default, name
        assert param.help == spec.metadata["help"], name
        if spec.metadata["choice"] is not None:
            annotation = param.type_descriptor.annotation
            inner = typing.get_args(annotation) or (annotation,)  # list[Choice] for a repeatable one
            assert inner[0] is spec.metadata["choice"], name  # Typer lists and checks them


def test_a_flat_folder_of_many_images_gets_a_notice_and_group_by_image_splits_it(tmp_path, tiny_model):
    import json

    from conftest import radiograph, save_png8

    for k in range(14):
        save_png8(radiograph(k), tmp_path / "scans" / f"scan{k:02d}.png")
    common = ["--model", str(tiny_model), "--workers", "0"]
    grouped = runner.invoke(app, ["score", str(tmp_path / "scans"), "--out", str(tmp_path / "a"), *common])
    assert grouped.exit_code == 0 and "notice: 14 images in scans were grouped as one study" in grouped.output
    assert json.loads((tmp_path / "a" / "run.json").read_text())["notices"][0].startswith(
        "14 images in scans"
    )
    assert len(pd.read_csv(tmp_path / "a" / "studies.csv")) == 1
    alone = runner.invoke(
        app, ["score", str(tmp_path / "scans"), "--out", str(tmp_path / "b"), "--group-by", "image", *common]
    )
    assert alone.exit_code == 0 and "notice:" not in alone.output
    assert len(pd.read_csv(tmp_path / "b" / "studies.csv")) == 14
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["group_by"] == "image"
