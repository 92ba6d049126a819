"""Sharded scoring: shares by stable study hash, merged back into exactly one run's files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mura_cli.cli.commands import app
from mura_cli.errors import InputError
from mura_cli.results.shard import parse_shard, shard_of, walk_order_key

from conftest import copy, radiograph, save_png8

runner = CliRunner()


def archive(root, rg3_files):
    for k in range(14):
        save_png8(radiograph(k), root / f"site{k % 2}" / f"study{k // 2:02d}" / f"img{k % 3}.png")
    save_png8(radiograph(99), root / "top.png")  # a file at the top, walked before the sub-folders
    copy(rg3_files[0], root / "dicom_a" / "x.dcm")  # one DICOM study spread over two folders
    copy(rg3_files[1], root / "dicom_b" / "y.dcm")
    (root / "site0" / "broken.png").write_text("not an image")
    return root


def test_shards_merge_into_the_single_run_row_for_row(tmp_path, tiny_model, rg3_files):
    data = archive(tmp_path / "data", rg3_files)
    common = ["--model", str(tiny_model), "--workers", "0", "-q", "--pdf"]
    single = runner.invoke(app, ["score", str(data), "--out", str(tmp_path / "single"), *common])
    assert single.exit_code == 3, single.output  # the broken file
    for i in range(3):
        part = runner.invoke(
            app, ["score", str(data), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3", *common]
        )
        assert part.exit_code in (0, 3), part.output
    merged = runner.invoke(
        app, ["merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--out", str(tmp_path / "m"), "--pdf"]
    )
    assert merged.exit_code == 3, merged.output
    for name in ("images.csv", "studies.csv"):
        # row for row; a probability may differ by one unit of its 6th decimal: the shards' batches
        # hold other images, and floating-point sums may round differently by batch
        merged_rows, single_rows = (pd.read_csv(tmp_path / d / name) for d in ("m", "single"))
        assert list(merged_rows.columns) == list(single_rows.columns), name
        pd.testing.assert_frame_equal(
            merged_rows.drop(columns="probability"), single_rows.drop(columns="probability"), obj=name
        )
        np.testing.assert_allclose(merged_rows["probability"], single_rows["probability"], atol=1.5e-6)
    assert (tmp_path / "m" / "report.pdf").stat().st_size > 10_000


def test_a_study_never_straddles_shards(tmp_path, tiny_model, rg3_files):
    data = archive(tmp_path / "data", rg3_files)
    seen = {}
    for i in range(2):
        runner.invoke(
            app,
            [
                "score",
                str(data),
                "--out",
                str(tmp_path / f"s{i}"),
                "--shard",
                f"{i}/2",
                "--model",
                str(tiny_model),
                "--workers",
                "0",
                "-q",
            ],
        )
        for study in pd.read_csv(tmp_path / f"s{i}" / "images.csv")["study_id"]:
            assert seen.setdefault(study, i) == i


def test_merge_refuses_missing_or_mismatched_shards(tmp_path, tiny_model, resnet_model, rg3_files):
    data = archive(tmp_path / "data", rg3_files)
    for i, model in ((0, tiny_model), (1, resnet_model)):
        runner.invoke(
            app,
            [
                "score",
                str(data),
                "--out",
                str(tmp_path / f"s{i}"),
                "--shard",
                f"{i}/3",
                "--model",
                str(model),
                "--workers",
                "0",
                "-q",
            ],
        )
    missing = runner.invoke(app, ["merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 1 and "shards 1/3, 2/3 missing" in missing.output
    mixed = runner.invoke(
        app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]
    )
    assert (
        mixed.exit_code == 1
        and "scored with other settings" in mixed.output
        and "weights_sha256" in mixed.output
    )


def test_merge_takes_a_shard_from_an_older_release_that_wrote_fewer_fields(tmp_path, tiny_model, rg3_files):
    """A field added since (written with its default by the newer shard) is no difference; a field
    whose value differs still is."""
    import json

    data = archive(tmp_path / "data", rg3_files)
    for i in range(2):
        runner.invoke(
            app,
            ["score", str(data), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"]
            + ["--model", str(tiny_model), "--workers", "0", "-q"],
        )
    run_json = tmp_path / "s0" / "run.json"
    record = json.loads(run_json.read_text())
    del record["model"]["config"]["pooling_sharpness"], record["config"]["engine"]  # not yet written
    run_json.write_text(json.dumps(record))
    merged = _merge(tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m")
    assert merged.exit_code in (0, 3), merged.output
    assert len(pd.read_csv(tmp_path / "m" / "images.csv")) == sum(
        len(pd.read_csv(tmp_path / f"s{i}" / "images.csv")) for i in range(2)
    )
    record["model"]["config"]["pooling_sharpness"] = 3.0  # a real difference
    run_json.write_text(json.dumps(record))
    refused = _merge(tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m2")
    assert refused.exit_code == 1 and "model (pooling_sharpness)" in refused.output
    del record["model"]["config"]["pooling_sharpness"]
    record["config"]["include_phi"] = True  # a score setting that differs
    run_json.write_text(json.dumps(record))
    refused = _merge(tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m3")
    assert refused.exit_code == 1 and "config (include_phi)" in refused.output


def _merge(*args):
    return runner.invoke(app, ["merge", *map(str, args)])


def test_merge_refuses_damaged_overlapping_or_foreign_shards_in_one_line(tmp_path, tiny_model, rg3_files):
    import json
    import shutil

    data = archive(tmp_path / "data", rg3_files)
    other = tmp_path / "elsewhere" / "data"  # another input with the same folder name
    shutil.copytree(data, other)
    save_png8(radiograph(7), other / "extra.png")

    def shard(name, source, index, *extra):
        result = runner.invoke(
            app,
            [
                "score",
                str(source),
                "--out",
                str(tmp_path / name),
                "--shard",
                f"{index}/2",
                "--model",
                str(tiny_model),
                "--workers",
                "0",
                "-q",
                *extra,
            ],
        )
        assert result.exit_code in (0, 3), result.output
        return tmp_path / name

    s0, s1 = shard("s0", data, 0), shard("s1", data, 1)
    assert _merge(s0, s1, "--out", tmp_path / "ok").exit_code == 3  # the broken file; all else fine
    again = _merge(s0, s1, "--out", tmp_path / "ok")
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    assert _merge(s0, s1, "--out", tmp_path / "ok", "--overwrite").exit_code == 3
    assert "is also an input of this run" in _merge(s0, s1, "--out", s0).output
    assert (
        "--pdf" in _merge(s0, s1, "--out", tmp_path / "p", "--pdf").output and not (tmp_path / "p").exists()
    )

    (tmp_path / "model-link").symlink_to(tiny_model, target_is_directory=True)  # same model, another spelling
    linked = runner.invoke(
        app,
        [
            "score",
            str(data),
            "--out",
            str(tmp_path / "s1b"),
            "--shard",
            "1/2",
            "--model",
            str(tmp_path / "model-link"),
            "--workers",
            "0",
            "-q",
            "--pdf",
        ],
    )
    assert linked.exit_code in (0, 3), linked.output
    assert (
        _merge(s0, tmp_path / "s1b", "--out", tmp_path / "spelled").exit_code == 3
    )  # --model and --pdf may differ

    foreign = shard("foreign", other, 1)
    assert "other settings" in _merge(s0, foreign, "--out", tmp_path / "m").output
    plain = shard("plain", data, 1, "--no-heatmaps")
    refused = _merge(s0, plain, "--out", tmp_path / "m")
    assert refused.exit_code == 1 and "config (heatmaps)" in refused.output

    dup = tmp_path / "dup"
    shutil.copytree(s0, dup)
    run = json.loads((dup / "run.json").read_text())
    run["shard"]["index"], run["config"]["shard"] = 1, "1/2"
    (dup / "run.json").write_text(json.dumps(run))
    assert "overlapping shards" in _merge(s0, dup, "--out", tmp_path / "m").output

    cut = tmp_path / "cut"
    shutil.copytree(s1, cut)
    lines = (cut / "images.csv").read_text().splitlines(keepends=True)
    (cut / "images.csv").write_text("".join(lines[:-1]))
    assert "damaged or truncated" in _merge(s0, cut, "--out", tmp_path / "m").output
    (cut / "studies.csv").unlink()
    assert "studies.csv is missing" in _merge(s0, cut, "--out", tmp_path / "m").output
    (cut / "run.json").write_text("[1, 2]")
    odd = _merge(s0, cut, "--out", tmp_path / "m")
    assert odd.exit_code == 1 and "run.json is damaged" in odd.output and "Traceback" not in odd.output
    run = json.loads((s1 / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**run, "counts": {**run["counts"], "images": "12"}}))
    wrong = _merge(s0, cut, "--out", tmp_path / "m").output  # a field of the wrong type is named
    assert "run.json is damaged: 'counts.images' is not an int" in wrong and "Traceback" not in wrong
    (cut / "run.json").write_text(json.dumps({k: v for k, v in run.items() if k != "model"}))
    assert "'model' is missing" in _merge(s0, cut, "--out", tmp_path / "m").output
    assert not (tmp_path / "m").exists()  # nothing written by a refused merge


def test_shard_parsing_and_stability():
    assert parse_shard("2/4").index == 2 and parse_shard(" 0 / 1 ").count == 1
    for bad in ("4/4", "-1/3", "a/b", "3"):
        with pytest.raises(InputError):
            parse_shard(bad)
    assert shard_of("XR_WRIST/patient00001/study1_positive", 8) == shard_of(
        "XR_WRIST/patient00001/study1_positive", 8
    )
    counts = [0] * 4
    for k in range(400):
        counts[shard_of(f"study{k}", 4)] += 1
    assert min(counts) > 70  # roughly even
    paths = ["b/z.png", "a.png", "b/c/d.png", "b/a.png", "c.png", "a/x.png"]
    assert sorted(paths, key=walk_order_key) == [
        "a.png",
        "c.png",
        "a/x.png",
        "b/a.png",
        "b/z.png",
        "b/c/d.png",
    ]
