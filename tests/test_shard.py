"""Sharded scoring: shares by stable study hash, merged back into exactly one run's files."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from mura_cli.cli import app
from mura_cli.errors import InputError
from mura_cli.shard import parse_shard, shard_of, walk_order_key

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
        part = runner.invoke(app, ["score", str(data), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3", *common])
        assert part.exit_code in (0, 3), part.output
    merged = runner.invoke(app, ["merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--out", str(tmp_path / "m"),
                                 "--pdf"])
    assert merged.exit_code == 3, merged.output
    for name in ("images.csv", "studies.csv"):
        assert (tmp_path / "m" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    assert (tmp_path / "m" / "report.pdf").stat().st_size > 10_000


def test_a_study_never_straddles_shards(tmp_path, tiny_model, rg3_files):
    data = archive(tmp_path / "data", rg3_files)
    seen = {}
    for i in range(2):
        runner.invoke(app, ["score", str(data), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2",
                            "--model", str(tiny_model), "--workers", "0", "-q"])
        for study in pd.read_csv(tmp_path / f"s{i}" / "images.csv")["study_id"]:
            assert seen.setdefault(study, i) == i


def test_merge_refuses_missing_or_mismatched_shards(tmp_path, tiny_model, resnet_model, rg3_files):
    data = archive(tmp_path / "data", rg3_files)
    for i, model in ((0, tiny_model), (1, resnet_model)):
        runner.invoke(app, ["score", str(data), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3",
                            "--model", str(model), "--workers", "0", "-q"])
    missing = runner.invoke(app, ["merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 1 and "shards 1/3, 2/3 missing" in missing.output
    mixed = runner.invoke(app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
    assert mixed.exit_code == 1 and "another model" in mixed.output


def test_shard_parsing_and_stability():
    assert parse_shard("2/4").index == 2 and parse_shard(" 0 / 1 ").count == 1
    for bad in ("4/4", "-1/3", "a/b", "3"):
        with pytest.raises(InputError):
            parse_shard(bad)
    assert shard_of("XR_WRIST/patient00001/study1_positive", 8) == shard_of("XR_WRIST/patient00001/study1_positive", 8)
    counts = [0] * 4
    for k in range(400):
        counts[shard_of(f"study{k}", 4)] += 1
    assert min(counts) > 70  # roughly even
    paths = ["b/z.png", "a.png", "b/c/d.png", "b/a.png", "c.png", "a/x.png"]
    assert sorted(paths, key=walk_order_key) == ["a.png", "c.png", "a/x.png", "b/a.png", "b/z.png", "b/c/d.png"]
