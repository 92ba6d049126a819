"""The real command line: through CliRunner and as a subprocess, with its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
from typer.testing import CliRunner

from mura_cli.cli import app

runner = CliRunner()


def test_score_cli_writes_results_and_exits_0(mura_folder, tmp_path, tiny_model):
    out = tmp_path / "res"
    result = runner.invoke(app, ["score", str(mura_folder), "--model", str(tiny_model), "--out", str(out),
                                 "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"images.csv", "studies.csv", "run.json"}
    assert "images scored" in result.output and "8 of 8" in result.output


def test_score_cli_partial_failure_exits_3_and_names_the_file(mura_folder, tmp_path, tiny_model):
    (mura_folder / "XR_HAND" / "zero.png").write_bytes(b"")
    result = runner.invoke(app, ["score", str(mura_folder), "-m", str(tiny_model), "-o", str(tmp_path / "r"),
                                 "--workers", "0", "--quiet"])
    assert result.exit_code == 3
    assert "XR_HAND/zero.png: empty file" in result.output


def test_score_cli_fatal_and_usage_errors(tmp_path, tiny_model, mura_folder):
    missing = runner.invoke(app, ["score", str(tmp_path / "nowhere"), "-m", str(tiny_model)])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
    bad_option = runner.invoke(app, ["score", str(mura_folder), "--aggregate", "median"])
    assert bad_option.exit_code == 2
    bad_device = runner.invoke(app, ["score", str(mura_folder), "-m", str(tiny_model), "--device", "tpu",
                                     "-o", str(tmp_path / "x")])
    assert bad_device.exit_code == 1 and "--device tpu" in bad_device.output


def test_sample_data_then_score_as_a_subprocess(tmp_path, tiny_model):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    samples = tmp_path / "samples"
    made = subprocess.run([sys.executable, "-m", "mura_cli", "sample-data", str(samples)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert len(list(samples.glob("*.dcm"))) == 2
    scored = subprocess.run([sys.executable, "-m", "mura_cli", "score", str(samples), "--model", str(tiny_model),
                             "--out", str(tmp_path / "out"), "--pdf"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert scored.returncode == 0, scored.stderr
    studies = pd.read_csv(tmp_path / "out" / "studies.csv")
    assert len(studies) == 1 and studies.loc[0, "n_images"] == 2 and studies.loc[0, "body_part"] == "EXTREMITY"
    assert (tmp_path / "out" / "report.pdf").stat().st_size > 10_000
