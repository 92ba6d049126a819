"""One guard for every command's --out (mura_cli.results.folder)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mura_cli.cli import app
from mura_cli.errors import InputError
from mura_cli.results.folder import check_out_dir

from conftest import learnable_mura, radiograph, save_png8

runner = CliRunner()


def test_the_rules_in_one_place(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "a-file", ("images.csv",))
    with pytest.raises(InputError, match="lies inside the input folder"):
        check_out_dir(tmp_path / "data" / "results", ("images.csv",), inputs=(tmp_path / "data",))
    with pytest.raises(InputError, match="is also an input of this run"):
        check_out_dir(tmp_path / "data", ("images.csv",), inputs=(tmp_path / "data",))
    with pytest.raises(InputError, match="choose one of --overwrite and --resume"):
        check_out_dir(tmp_path / "out", ("images.csv",), overwrite=True, resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        check_out_dir(tmp_path / "out", ("images.csv",), resume=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images.csv").write_text("")
    with pytest.raises(
        InputError, match=r"pass --resume to finish an interrupted run, --overwrite to replace"
    ):
        check_out_dir(tmp_path / "out", ("images.csv", "run.json"))
    with pytest.raises(InputError, match=r"\(images.csv\); choose another --out"):
        check_out_dir(tmp_path / "out", ("images.csv",), can_overwrite=False, can_resume=False)
    assert check_out_dir(tmp_path / "out", ("images.csv", "run.json"), overwrite=True) == ["images.csv"]
    assert check_out_dir(tmp_path / "elsewhere", ("images.csv",), inputs=(tmp_path / "data",)) == []
    assert check_out_dir(tmp_path / "out2", ("x",), inputs=(tmp_path / "a-file",)) == []  # a file input


def test_every_command_refuses_an_out_inside_its_input(tmp_path, tiny_model):
    data = learnable_mura(tmp_path / "data", patients=4)
    save_png8(radiograph(0), tmp_path / "one.png")
    commands = {
        "score": ["score", str(data), "--out", str(data / "results"), "--model", str(tiny_model)],
        "evaluate": ["evaluate", str(data), "--out", str(data / "ev"), "--model", str(tiny_model)],
        "train": [
            "train",
            str(data),
            "--out",
            str(data / "model"),
            "--arch",
            "resnet10t",
            "--img-size",
            "32",
        ],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (name, result.output)
        assert "lies inside the input folder" in result.output and "Traceback" not in result.output, name
        assert not any((data / sub).exists() for sub in ("results", "ev", "model")), name
    # one image as input: its own folder is not the input folder
    single = runner.invoke(
        app,
        [
            "score",
            str(tmp_path / "one.png"),
            "--out",
            str(tmp_path / "r"),
            "--model",
            str(tiny_model),
            "--workers",
            "0",
            "-q",
        ],
    )
    assert single.exit_code == 0, single.output


def test_the_run_record_is_written_once_and_read_back_whole(tmp_path, tiny_model, mura_folder):
    import json

    from mura_cli.config import ScoreConfig
    from mura_cli.results.record import RunRecord, read_run_record
    from mura_cli.scoring.score import score_folder

    out = tmp_path / "out"
    config = ScoreConfig(input=str(mura_folder), out_dir=str(out), model=str(tiny_model), workers=0)
    result = score_folder(config)
    assert read_run_record(out) == result.run  # every field survives the file, typed
    assert result.run.status == "finished" and result.run.counts.images == len(result.images)
    assert RunRecord.from_dict({**json.loads((out / "run.json").read_text()), "from_a_newer_version": 1})

    record = json.loads((out / "run.json").read_text())
    record["model"]["weights_sha256"] = 7
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"run.json is damaged: 'model.weights_sha256' is not a str"):
        score_folder(config, resume=True)


def test_resume_refuses_rows_scored_with_other_settings(tmp_path, tiny_model, mura_folder):
    from mura_cli.config import ScoreConfig
    from mura_cli.scoring.score import score_folder

    def config(**kw):
        return ScoreConfig(
            input=str(mura_folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0, **kw
        )

    score_folder(config())
    with pytest.raises(InputError, match=r"scored with other settings \(group_by, tta\)"):
        score_folder(config(tta="flip", group_by="image"), resume=True)
    assert score_folder(config(tta="none"), resume=True).run.resumed_images > 0  # the model's tta, named


def test_calibrate_leaves_the_shipped_models_alone(tmp_path):
    from mura_cli.config import CalibrateConfig
    from mura_cli.evaluation.calibrate import calibrate_model
    from mura_cli.model.factory import resolve_model_dir

    with pytest.raises(InputError, match="copy the folder and calibrate the copy"):
        calibrate_model(CalibrateConfig(model=str(resolve_model_dir(None)), data=str(tmp_path)))
