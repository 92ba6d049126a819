"""The in-memory API: arrays and paths in, the same numbers as `score` out, no files written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mura_cli
from mura_cli.config import ModelConfig, ScoreConfig
from mura_cli.model.factory import create_model

from conftest import radiograph, save_png8


def test_arrays_and_paths_score_as_score_folder_does(tmp_path, tiny_model):
    arrays = [radiograph(k, height=90 + 10 * k, width=70) for k in range(3)]
    paths = [save_png8(a, tmp_path / "in" / "s" / f"img{k}.png") for k, a in enumerate(arrays)]
    expected = mura_cli.score_folder(
        ScoreConfig(
            input=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0
        )
    ).images
    model = mura_cli.load_model(tiny_model)
    as_uint8 = [np.rint(a * 255).astype(np.uint8) for a in arrays]  # what the PNGs hold
    result = mura_cli.score_images([as_uint8[0], paths[1], as_uint8[2]], model, study_ids=["s", "s", "s"])
    np.testing.assert_allclose(result.images["probability"], expected["probability"], atol=1e-6)
    assert result.images["heatmap_peak_x"].tolist() == expected["heatmap_peak_x"].tolist()
    assert len(result.studies) == 1
    assert result.studies["probability"].iloc[0] == pytest.approx(result.images["probability"].mean())
    for heatmap, array in zip(result.heatmaps, arrays):
        assert heatmap.shape == array.shape and 0 <= heatmap.min() and heatmap.max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # nothing else written


def test_unusable_arrays_become_reason_rows(tiny_model):
    good = radiograph(1)
    result = mura_cli.score_images(
        [good, np.zeros((10, 10)), good[..., None].repeat(3, 2), good * 3, good], tiny_model
    )
    errors = result.images["error"].tolist()
    assert errors[0] == errors[4] == ""
    assert (
        "under 32 on the short side" in errors[1] and "2-D gray image" in errors[2] and "[0, 1]" in errors[3]
    )
    assert result.images["probability"].isna().tolist() == [False, True, True, True, False]
    assert result.heatmaps[1] is None and result.heatmaps[0] is not None
    assert len(result.studies) == 5  # one study per image when no study_ids are given
    uint16 = mura_cli.score_images([np.rint(good * 65535).astype(np.uint16)], tiny_model).images
    assert uint16["probability"].iloc[0] == pytest.approx(result.images["probability"].iloc[0], abs=1e-3)
    grouped = mura_cli.score_images([good, good], tiny_model, study_ids=np.array(["a", "a"]), heatmaps=False)
    assert grouped.studies["study_id"].tolist() == ["a"]  # an array (or Series) is read by position
    with pytest.raises(ValueError, match="study_ids: 1 values for 2 images"):
        mura_cli.score_images([good, good], tiny_model, study_ids=["a"])


def test_a_module_the_caller_built_scores_like_the_same_weights_from_a_folder(tiny_model):
    folder = mura_cli.load_model(tiny_model)
    cfg = ModelConfig(architecture="test_efficientnet", input_size=(3, 64, 64), name="mine")
    module = create_model(cfg)
    module.load_state_dict(folder.model.state_dict())
    images = [radiograph(k) for k in range(4)]
    mine = mura_cli.score_images(images, mura_cli.wrap_module(module, cfg), heatmaps=False)
    theirs = mura_cli.score_images(images, folder, heatmaps=False)
    pd.testing.assert_series_equal(mine.images["probability"], theirs.images["probability"])
    assert mine.images["heatmap_peak_x"].isna().all() and all(h is None for h in mine.heatmaps)
    predictor = mura_cli.Predictor(mura_cli.wrap_module(module, cfg), folder_runtime(), heatmaps=True)
    assert predictor.heatmap_method == "cam"


def folder_runtime():
    from mura_cli.inference.device import create_runtime

    return create_runtime("cpu", "fp32")


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mura_cli; print('torch' in sys.modules, mura_cli.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False" and torch.__version__  # the CLI's fast validation depends on it
