"""Heatmaps: the closed form equals autograd Grad-CAM; maps land on the right original pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from mura_cli.inputs.geometry import Geometry, crop_region, fit_geometry, place_on_canvas
from mura_cli.model import cam


def autograd_gradcam(model, x):
    """Textbook Grad-CAM with hooks on the whole model: gradients of the logit w.r.t. the last
    feature map, averaged per channel, weight the map, ReLU."""
    store = {}
    feats = model.forward_features(x)
    feats.retain_grad()
    logits = model.forward_head(feats)
    logits[:, 0].sum().backward()
    store["alpha"] = feats.grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((store["alpha"] * feats).sum(dim=1)).detach()


@pytest.mark.parametrize("arch", ["test_efficientnet", "resnet10t"])
def test_closed_form_cam_equals_autograd_gradcam(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=1).eval()
    x = torch.randn(3, 3, 96, 96)
    expected = cam.minmax(autograd_gradcam(model, x))
    with torch.no_grad():
        feats = model.forward_features(x)
        classifier = cam.linear_pooled_head(model, feats.shape[1])
        assert classifier is not None
        closed = cam.minmax(cam.class_activation_map(feats, classifier))
    assert float((closed - expected).abs().max()) < 1e-4


def test_other_heads_fall_back_to_autograd_gradcam():
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", num_classes=1).eval()  # norm after pooling
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert cam.linear_pooled_head(model, feats.shape[1]) is None
    logits, maps = cam.gradcam_from_features(model, feats)
    torch.testing.assert_close(logits, model(x).detach(), atol=1e-5, rtol=1e-5)
    assert float((cam.minmax(maps) - cam.minmax(autograd_gradcam(model, x))).abs().max()) < 1e-4


def test_letterbox_geometry_round_trip():
    geometry = fit_geometry(300, 120, 224, 224, "letterbox")
    assert (geometry.new_h, geometry.new_w) == (224, 90)
    assert geometry.left == (224 - 90) // 2 and geometry.top == 0
    # canvas pixel centres at the corners of the image region map to the original's corners
    assert geometry.canvas_to_original(0, geometry.left) == pytest.approx((0, 0), abs=1.0)
    assert geometry.canvas_to_original(223, geometry.left + 89) == pytest.approx((299, 119), abs=1.0)


def test_heatmap_peak_maps_back_onto_the_original_spot():
    """A hot spot drawn in the original must be found at the same original pixel after the trip to
    the canvas and back, for a non-square image under letterboxing."""
    original = np.zeros((300, 120), np.float32)
    original[200:220, 30:50] = 1.0  # centre near (209.5, 39.5)
    geometry = fit_geometry(300, 120, 112, 112, "letterbox")
    canvas = place_on_canvas(original, geometry, 112, 112).astype(np.float32) / 255
    # a 56x56 "feature map" of the canvas (stride 2, as a network's early stage would give)
    coarse = torch.nn.functional.avg_pool2d(torch.from_numpy(canvas)[None, None], 2)[0]
    maps, peaks = cam.to_canvas(coarse, torch.tensor([geometry.as_tuple()]), (112, 112))
    y, x = geometry.canvas_to_original(*peaks[0].tolist())
    scale = 300 / geometry.new_h  # original pixels per canvas pixel
    assert abs(y - 209.5) <= 10 / 2 * scale and abs(x - 39.5) <= 10 / 2 * scale
    assert float(maps[0].max()) == pytest.approx(1.0)
    outside = np.ones((112, 112), bool)
    crop_region(outside, geometry)[:] = False
    assert float(maps[0].numpy()[outside].max()) == 0.0  # padding carries no heat


def test_a_flat_heatmap_has_no_peak_and_misses_the_pointing_game():
    """An all-zero CAM (no cell raised the score) points nowhere: no peak in images.csv, and a miss in
    the pointing game rather than a hit or a dropped image."""
    from types import SimpleNamespace

    from mura_cli.evaluation.evaluate import _localise

    geometry = fit_geometry(64, 64, 32, 32, "letterbox")
    geometries = torch.tensor([geometry.as_tuple()] * 2)
    cams = torch.zeros(2, 4, 4)
    cams[1, 0, 0] = 1.0  # a real peak in the first cell, which the flat map's argmax would also give
    maps, peaks = cam.to_canvas(cams, geometries, (32, 32))
    assert peaks[0].tolist() == [-1, -1] and peaks[1].tolist() == [0, 0]
    assert float(maps[0].abs().max()) == 0.0
    _, bare = cam.to_canvas(cams, geometries, (32, 32), maps_too=False)
    assert torch.equal(bare, peaks)
    from pathlib import Path

    from mura_cli.inference.predictor import BatchResult
    from mura_cli.inputs.discover import ImageRecord

    batch = BatchResult(
        [0, 1], ["", ""], np.array([0.4, 0.6]), torch.zeros(2, 1, 32, 32), geometries, peaks.numpy(), None
    )
    record = ImageRecord(Path("/x/a.png"), "a.png", "raster", "s")
    row = batch.image_row(record, 0)  # images.csv: no peak for the flat map
    assert row["heatmap_peak_x"] is pd.NA and row["heatmap_peak_y"] is pd.NA and row["probability"] == 0.4
    assert not pd.isna(batch.image_row(record, 1)["heatmap_peak_x"])
    result = SimpleNamespace(errors=[""], heatmaps=maps[:1].numpy(), geometry=lambda k: geometry)
    hit = _localise(result, 0, row, [(0.0, 0.0, 64.0, 64.0)], 0.04)  # a box over the whole image
    assert hit["pointing_hit"] == 0 and hit["pointing_hit_tolerant"] == 0
    assert hit["centre_hit"] == 1  # the baseline is still scored


def test_stretch_geometry_fills_canvas():
    g = fit_geometry(300, 120, 64, 64, "stretch")
    assert g == Geometry(300, 120, 64, 64, 0, 0)


def test_a_model_without_a_feature_map_keeps_no_maps_and_scores_no_pointing(tmp_path):
    """A ViT gives tokens, not a map: evaluate --boxes must report no localisation, not 0% pointing."""
    from mura_cli.evaluation.evaluate import _localise
    from mura_cli.inference.device import create_runtime
    from mura_cli.inference.predictor import Predictor
    from mura_cli.model.factory import load_model

    from conftest import make_model_dir

    folder = make_model_dir(tmp_path / "vit", "test_vit", size=160)
    predictor = Predictor(load_model(folder), create_runtime("cpu", "fp32"), keep_maps=True, engine="torch")
    assert predictor.heatmap_method == "none" and not predictor.keep_maps
    batch = {
        "image": torch.full((1, 1, 160, 160), 90, dtype=torch.uint8),
        "geometry": torch.tensor([[160, 160, 160, 160, 0, 0]]),
        "error": [""],
        "index": torch.tensor([0]),
    }
    result = predictor(batch)
    assert result.heatmaps is None
    row = {"heatmap_peak_x": pd.NA, "heatmap_peak_y": pd.NA}
    assert pd.isna(_localise(result, 0, row, [(0.0, 0.0, 160.0, 160.0)], 0.04)["pointing_hit"])


def test_canvas_peaks_match_a_search_of_the_whole_upsampled_map():
    """The candidate-grid peak (canvas_peaks) is the first maximum in reading order of the whole
    upsampled map within the image's region, for smooth maps, ReLU maps with zero plateaus and maps
    of few levels (ties); odd canvas and grid sizes, letterboxed regions of every shape. The whole map
    is evaluated with the same formula (upsampled_at at every pixel), so values are bit-equal and the
    reading order of ties is checked exactly; that formula is torch's bilinear upsample to 1e-12."""
    generator = torch.Generator().manual_seed(0)
    draw = lambda low, high: int(torch.randint(low, high, (1,), generator=generator))  # noqa: E731
    peaked = 0
    for trial in range(120):
        height, width, cells_h, cells_w = draw(16, 300), draw(16, 300), draw(1, 16), draw(1, 16)
        geometries = torch.tensor(
            [
                fit_geometry(draw(10, 2000), draw(10, 2000), height, width, "letterbox").as_tuple()
                for _ in range(3)
            ]
        )
        cams = torch.rand(3, cells_h, cells_w, generator=generator, dtype=torch.float64)
        cams = [cams, torch.relu(cams - 0.7), (cams * 4).floor()][trial % 3]
        peaks = cam.canvas_peaks(cams, geometries, (height, width))
        every_row = torch.arange(height).expand(3, -1)
        every_col = torch.arange(width).expand(3, -1)
        full = cam.upsampled_at(cams, every_row, every_col, (height, width))
        torch_full = torch.nn.functional.interpolate(cams[:, None], size=(height, width), mode="bilinear")[
            :, 0
        ]
        assert float((full - torch_full).abs().max()) < 1e-12
        for k in range(3):
            _, _, new_h, new_w, top, left = geometries[k].tolist()
            region = full[k, top : top + new_h, left : left + new_w]
            if float(region.max() - region.min()) <= 1e-12:
                assert peaks[k].tolist() == [-1, -1]
                continue
            y, x = divmod(int(region.argmax()), new_w)  # torch's argmax: the first maximum
            assert peaks[k].tolist() == [y + top, x + left], (trial, k)
            peaked += 1
    assert peaked > 300


@pytest.mark.parametrize("channels", [1, 3])
def test_input_normaliser_gives_the_models_normalised_input_and_leaves_the_canvas_alone(channels):
    """(canvas - 255 mean) / (255 std) per channel, the gray canvas copied to every channel; the
    loader's uint8 batch is not touched (the normalisation works in place on its own float copy)."""
    from mura_cli.config import ModelConfig
    from mura_cli.inference.predictor import InputNormaliser

    mean, std = (0.2, 0.4, 0.6)[:channels], (0.5, 0.25, 0.1)[:channels]
    cfg = ModelConfig(architecture="resnet10t", input_size=(channels, 16, 16), mean=mean, std=std)
    canvas = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    before = canvas.clone()
    x = InputNormaliser(cfg, torch.device("cpu"))(canvas)
    assert x.shape == (2, channels, 16, 16) and x.dtype == torch.float32
    for c in range(channels):
        expected = (canvas[:, 0].double() / 255 - mean[c]) / std[c]
        torch.testing.assert_close(x[:, c].double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(canvas, before)
    as_float = canvas.float()  # a float32 batch already on the device: still not normalised in place
    torch.testing.assert_close(InputNormaliser(cfg, torch.device("cpu"))(as_float), x)
    assert torch.equal(as_float, before.float())
