"""The built wheel carries models/ and report_templates/, and works installed in a fresh virtual
environment (as `pipx install` does), run from a folder that is not this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_install_scores_with_pdf_outside_the_repo(tmp_path, tiny_model, mura_folder):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("mura_cli-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    for template in ("base.html.j2", "score.html.j2", "report.css"):
        assert f"mura_cli/_data/report_templates/{template}" in names
    assert "mura_cli/_data/models/README.md" in names
    for shipped in ("config.json", "model.safetensors", "MODEL_CARD.md", "evaluation.json"):
        assert f"mura_cli/_data/models/fracatlas-efficientnet-lite0/{shipped}" in names
    for dependency in ("torch", "timm", "pydicom", "pylibjpeg-openjpeg", "weasyprint", "safetensors"):
        assert f"Requires-Dist: {dependency}" in metadata

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    # the heavy dependencies (torch, ...) come from this test's environment instead of a new download
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "zz_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import mura_cli; print(mura_cli.__file__)"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert where.startswith(str(env_dir)), where
    result = subprocess.run(
        [
            str(env_dir / "bin" / "mura-cli"),
            "score",
            str(mura_folder),
            "--model",
            str(tiny_model),
            "--out",
            "results",
            "--pdf",
            "--workers",
            "0",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(workdir / "results" / "studies.csv")) == 4
    assert (workdir / "results" / "report.pdf").read_bytes().startswith(b"%PDF")
    # the README's first command, from the installed wheel: default model, real sample radiographs
    cli = str(env_dir / "bin" / "mura-cli")
    subprocess.run([cli, "sample-data", "samples"], cwd=workdir, env=env, check=True, timeout=120)
    default = subprocess.run(
        [cli, "score", "samples", "--pdf"], cwd=workdir, capture_output=True, text=True, env=env, timeout=300
    )
    assert default.returncode == 0, default.stderr
    run = json.loads((workdir / "mura-results" / "run.json").read_text())
    assert run["model"]["name"] == "fracatlas-efficientnet-lite0"
    assert run["model"]["path"].startswith(str(env_dir))  # the copy inside the installed package
    assert (workdir / "mura-results" / "report.pdf").stat().st_size > 20_000
