"""pooling='lse': the classifier scores each feature cell and the image logit is their log-mean-exp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mura_cli.config import ModelConfig, TrainConfig
from mura_cli.errors import ModelError
from mura_cli.inference.device import Runtime
from mura_cli.inference.predictor import Predictor
from mura_cli.model import cam
from mura_cli.model.factory import create_model, load_model
from mura_cli.model.pooling import CellPooledLinear

from conftest import make_model_dir


def _cfg(arch: str, pooling: str = "lse", size: int = 64) -> ModelConfig:
    return ModelConfig(
        architecture=arch, input_size=(1, size, size), mean=(0.5,), std=(0.25,), pooling=pooling
    )


@pytest.mark.parametrize("arch", ["test_efficientnet", "resnet10t"])
def test_image_logit_is_the_log_mean_exp_of_the_cell_logits(arch):
    torch.manual_seed(0)
    model = create_model(_cfg(arch)).eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        classifier = cam.linear_pooled_head(model, features.shape[1])
        assert isinstance(classifier, CellPooledLinear)
        cells = cam.cell_logits(features, classifier) + classifier.bias[0]
        expected = torch.logsumexp(cells.flatten(1), dim=1) - math.log(cells[0].numel())
        torch.testing.assert_close(model(x)[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_removing_the_strongest_cell_moves_lse_far_more_than_the_mean():
    """Why lse: evidence in one cell of 16 decides the image, so deleting it changes the answer."""
    torch.manual_seed(0)
    head = CellPooledLinear(4, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        head.bias.zero_()
    features = torch.zeros(1, 4, 4, 4)
    features[0, 0, 1, 2] = 8.0  # one cell with strong evidence
    deleted = features.clone()
    deleted[0, 0, 1, 2] = 0.0
    with torch.no_grad():
        lse_drop = float(head(features) - head(deleted))
    mean_drop = 8.0 / 16
    assert lse_drop > 4 * mean_drop


def test_lse_model_folder_round_trips_and_scores_with_its_own_heatmap(tmp_path):
    folder = make_model_dir(tmp_path / "lse", "test_efficientnet", pooling="lse")
    loaded = load_model(folder)
    assert loaded.config.pooling == "lse"
    assert isinstance(loaded.model.get_classifier(), CellPooledLinear)
    predictor = Predictor(loaded, Runtime(torch.device("cpu"), "fp32", "test"), heatmaps=True, keep_maps=True)
    assert predictor.heatmap_method == "cam"  # closed form, no autograd pass
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 3, 64, 64), dtype=np.uint8))
    geometry = torch.tensor([[64, 64, 64, 64, 0, 0]] * 2)
    result = predictor({"image": images, "geometry": geometry, "error": ["", ""], "index": [0, 1]})
    with torch.no_grad():
        logits = loaded.model(predictor.prepare(images))[:, 0]
    np.testing.assert_allclose(result.probabilities, torch.sigmoid(logits).numpy(), atol=1e-6)
    avg = load_model(make_model_dir(tmp_path / "avg", "test_efficientnet"))
    assert not isinstance(avg.model.get_classifier(), CellPooledLinear)


def test_architectures_without_a_pool_and_linear_head_are_refused_in_one_line():
    with pytest.raises(ModelError, match="pooling 'lse' is not available for 'test_convnext'"):
        create_model(_cfg("test_convnext"))


def test_pooling_values_are_checked():
    with pytest.raises(ModelError, match="'pooling' must be one of"):
        _cfg("test_efficientnet", pooling="max")
    with pytest.raises(ValueError, match="pooling must be one of"):
        TrainConfig(data="-", out_dir="-", pooling="max")
    with pytest.raises(ModelError, match="'pooling' has the wrong type"):
        ModelConfig.from_dict({"architecture": "test_efficientnet", "pooling": 1})


def test_heads_that_do_more_than_pool_and_classify_are_refused():
    with pytest.raises(ModelError, match="does more than pool and classify"):
        create_model(_cfg("mobilenetv3_small_050"))  # pool, then a conv head, then the classifier


def test_the_report_names_an_lse_heatmap_for_what_it_is():
    from mura_cli.report.pdf import HEATMAP_NAMES, LSE_HEATMAP_NAME, heatmap_name
    from mura_cli.results.record import ModelIdentity, RunRecord, Runtime, Tool

    def run(pooling):
        return RunRecord(
            status="finished",
            started="now",
            tool=Tool(),
            config={},
            model=ModelIdentity("m", "0" * 64, config={"pooling": pooling}),
            runtime=Runtime("cpu", "fp32", "test", 0, 32, "cam"),
        )

    assert heatmap_name(run("lse")) == LSE_HEATMAP_NAME
    assert heatmap_name(run("avg")) == HEATMAP_NAMES["cam"] and "Grad-CAM" in heatmap_name(run("avg"))


def test_pooling_sharpness_leans_towards_the_strongest_cell_and_travels_with_the_model(tmp_path):
    """(1/r) log mean exp(r s): r = 1 is the plain pooling, a large r nears the maximum cell score, and
    the box loss weighs the cells as the pooling does (softmax of r s)."""
    from mura_cli.training.losses import box_attention_loss

    head = CellPooledLinear(1, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()
    features = torch.zeros(1, 1, 4, 4)
    features[0, 0, 0, 0] = 3.0
    plain = float(head(features).detach())
    head.sharpness = 8.0
    sharp = float(head(features).detach())
    assert plain == pytest.approx(math.log((math.exp(3.0) + 15) / 16), abs=1e-5)
    assert sharp == pytest.approx(3.0 - math.log(16) / 8, abs=1e-3) and plain < sharp < 3.0
    cells, covered = features[:, 0], torch.zeros(1, 4, 4, dtype=torch.bool)
    covered[0, 0, 0] = True
    loose, tight = box_attention_loss(cells, covered), box_attention_loss(cells, covered, sharpness=8.0)
    assert float(tight) < float(loose)  # the strong cell holds more of the sharper pooling's weight
    folder = make_model_dir(tmp_path / "sharp", "test_efficientnet", pooling="lse", pooling_sharpness=4.0)
    loaded = load_model(folder)
    assert loaded.config.pooling_sharpness == 4.0 and loaded.model.get_classifier().sharpness == 4.0
    assert (
        load_model(make_model_dir(tmp_path / "plain", "test_efficientnet", pooling="lse"))
        .model.get_classifier()
        .sharpness
        == 1.0
    )


def test_pooling_sharpness_is_checked():
    with pytest.raises(ModelError, match="'pooling_sharpness' applies to pooling 'lse' only"):
        ModelConfig(architecture="test_efficientnet", pooling_sharpness=2.0)
    with pytest.raises(ModelError, match="'pooling_sharpness' must be within"):
        ModelConfig(architecture="test_efficientnet", pooling="lse", pooling_sharpness=0.0)
    with pytest.raises(ValueError, match="pooling_sharpness applies to pooling 'lse' only"):
        TrainConfig(data="-", out_dir="-", pooling_sharpness=2.0)
