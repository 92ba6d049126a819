"""Temperature scaling and flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_cli.evaluation import metrics
from mura_cli.inference.device import Runtime
from mura_cli.inference.predictor import Predictor
from mura_cli.model import calibration
from mura_cli.model.factory import LoadedModel, load_model

CPU_FP32 = Runtime(torch.device("cpu"), "fp32", "test")


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 4000)
    y = (rng.uniform(size=4000) < calibration.sigmoid(true_logit)).astype(int)
    overconfident = calibration.sigmoid(true_logit * 3.0)  # logits three times too large
    temperature = calibration.fit_temperature(overconfident[:2000], y[:2000])
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = metrics.calibration(y[2000:], overconfident[2000:])["ece"]
    after = metrics.calibration(y[2000:], calibration.rescale(overconfident[2000:], temperature))["ece"]
    assert after < before / 2 and after < 0.05


def test_rescaling_keeps_the_ranking_and_round_trips():
    p = np.array([0.01, 0.3, 0.5, 0.9, np.nan])
    q = calibration.rescale(p, 2.0)
    assert np.isnan(q[-1]) and (np.diff(q[:-1]) > 0).all() and q[2] == pytest.approx(0.5)
    assert calibration.rescale(q, 0.5)[:-1] == pytest.approx(p[:-1])


def test_temperature_from_the_config_divides_the_logit(tiny_model):
    loaded = load_model(tiny_model)
    x = {
        "image": torch.randint(0, 255, (4, 1, 64, 64), dtype=torch.uint8),
        "error": [""] * 4,
        "index": torch.arange(4),
        "geometry": torch.tensor([[64, 64, 64, 64, 0, 0]] * 4),
    }
    plain = Predictor(loaded, CPU_FP32, heatmaps=False)(x).probabilities
    warmer = LoadedModel(loaded.model, loaded.config.replace(temperature=2.0), loaded.path, "")
    hot = Predictor(warmer, CPU_FP32, heatmaps=False)(x).probabilities
    assert hot == pytest.approx(calibration.rescale(plain, 2.0), abs=1e-6)


def _batch(images: torch.Tensor) -> dict:
    n = len(images)
    return {
        "image": images,
        "error": [""] * n,
        "index": torch.arange(n),
        "geometry": torch.tensor([[64, 64, 64, 64, 0, 0]] * n),
    }


def test_flip_tta_heatmap_is_flipped_back(tiny_model):
    """With the mirrored map flipped back, scoring a mirrored image gives the mirror of the heatmap
    (and the same probability); a map left unflipped would not."""
    loaded = load_model(tiny_model)
    predictor = Predictor(loaded, CPU_FP32, heatmaps=True, keep_maps=True, tta="flip")
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 60, (1, 1, 64, 64)).astype(np.uint8))
    image[..., 8:20, 4:16] = 240  # a bright patch on the left only
    mirrored = torch.flip(image, dims=[3])
    a, b = predictor(_batch(image)), predictor(_batch(mirrored))
    assert a.probabilities[0] == pytest.approx(b.probabilities[0], abs=1e-5)
    assert np.allclose(a.heatmaps[0], b.heatmaps[0][:, ::-1], atol=1e-4)
    single = Predictor(loaded, CPU_FP32, heatmaps=True, keep_maps=True)(_batch(image))
    flipped_alone = Predictor(loaded, CPU_FP32, heatmaps=True, keep_maps=True)(_batch(mirrored))
    expected = (single.probabilities[0] + flipped_alone.probabilities[0]) / 2
    assert a.probabilities[0] == pytest.approx(expected, abs=1e-6)
    assert not np.allclose(single.heatmaps[0], flipped_alone.heatmaps[0][:, ::-1], atol=1e-3)


def test_temperature_and_bias_undo_a_shifted_overconfident_logit():
    """Class weighting shifts logits: a temperature alone cannot undo that, temperature + bias can."""
    rng = np.random.default_rng(2)
    true_logit = rng.normal(-1.5, 1.5, 6000)
    y = (rng.uniform(size=6000) < calibration.sigmoid(true_logit)).astype(int)
    shifted = calibration.sigmoid(true_logit * 2.0 + 1.5)
    temperature, bias = calibration.fit_platt(shifted[:3000], y[:3000])
    assert (temperature, bias) == (pytest.approx(2.0, rel=0.1), pytest.approx(-0.75, abs=0.15))
    held_out = y[3000:], shifted[3000:]
    temperature_alone = calibration.fit_temperature(shifted[:3000], y[:3000])
    alone = metrics.calibration(held_out[0], calibration.rescale(held_out[1], temperature_alone))["ece"]
    both = metrics.calibration(held_out[0], calibration.rescale(held_out[1], temperature, bias))["ece"]
    assert both < 0.03 < alone
    assert calibration.uncalibrate(
        calibration.rescale(held_out[1], temperature, bias), temperature, bias
    ) == pytest.approx(held_out[1], abs=1e-6)


def test_the_models_tta_is_the_default_and_calibrates_the_mean_of_both_views(tiny_model):
    loaded = load_model(tiny_model)
    image = torch.randint(0, 255, (3, 1, 64, 64), dtype=torch.uint8)
    single = Predictor(loaded, CPU_FP32, heatmaps=False)(_batch(image)).probabilities
    mirror = Predictor(loaded, CPU_FP32, heatmaps=False)(_batch(torch.flip(image, dims=[3]))).probabilities
    flipping = LoadedModel(
        loaded.model, loaded.config.replace(tta="flip", temperature=2.0, logit_bias=0.3), loaded.path, ""
    )
    predictor = Predictor(flipping, CPU_FP32, heatmaps=False)  # tta=None: the model's
    assert predictor.tta == "flip"
    got = predictor(_batch(image)).probabilities
    expected = calibration.rescale((single + mirror) / 2, 2.0, 0.3)  # the views' mean, then calibrated
    assert got == pytest.approx(expected, abs=1e-6)
    assert Predictor(flipping, CPU_FP32, heatmaps=False, tta="none").tta == "none"  # a caller may say no


def test_calibrate_refits_the_model_for_flip_and_writes_its_config(tiny_model, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from mura_cli.cli import app
    from mura_cli.config import EvalConfig
    from mura_cli.evaluation.evaluate import evaluate

    from conftest import learnable_mura

    data = learnable_mura(tmp_path / "data", patients=14, seed=4)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    done = CliRunner().invoke(app, ["calibrate", str(model), str(data), "--tta", "flip", "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "calibrated" in done.output and "(tta flip)" in done.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["tta"] == "flip" and cfg["provenance"]["calibrated"]["after"]["tta"] == "flip"

    # the fit is Platt scaling of the flip-averaged probabilities at temperature 1, bias 0
    raw = tmp_path / "raw"
    shutil.copytree(model, raw)
    (raw / "config.json").write_text(json.dumps({**cfg, "temperature": 1.0, "logit_bias": 0.0}))
    scored = evaluate(
        EvalConfig(data=str(data), out_dir=str(tmp_path / "ev"), model=str(raw), workers=0, bootstrap=10)
    )
    images = scored.images.dropna(subset=["probability"])
    temperature, bias = calibration.fit_platt(
        images["probability"].to_numpy(float), images["label"].to_numpy(int)
    )
    assert (cfg["temperature"], cfg["logit_bias"]) == pytest.approx((temperature, bias), rel=1e-4, abs=1e-4)
    assert scored.metrics["run"]["tta"] == "flip"  # evaluate followed the model's default
