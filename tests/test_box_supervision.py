"""Box-supervised heatmaps (train --boxes), the boxes CSV, the pointing game with tolerance and the
deletion test of evaluate --boxes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mura_cli.config import ModelConfig, TrainConfig
from mura_cli.errors import InputError
from mura_cli.evaluation import faithfulness, metrics
from mura_cli.inference.device import Runtime
from mura_cli.inputs import boxes as box_geometry
from mura_cli.inputs.geometry import Geometry, fit_geometry
from mura_cli.model import cam
from mura_cli.model.factory import create_model
from mura_cli.training import losses
from mura_cli.training.train import Trainer, first_lesion_epoch

SIZE = 64


def _toy_batch(rng: np.random.Generator, n: int = 16):
    """Positives with a bright square inside the box and an equally bright decoy outside it."""
    images = rng.normal(60, 8, (n, 1, SIZE, SIZE)).clip(0, 255)
    masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for k in range(n):
        images[k, 0, 8:20, 8:20] = 230  # the lesion, top left
        images[k, 0, 44:56, 44:56] = 230  # the decoy, bottom right
        masks[k, 0, 4:24, 4:24] = 1
    return {
        "image": torch.from_numpy(images.astype(np.uint8)),
        "label": torch.ones(n, dtype=torch.long),
        "weight_pos": torch.ones(n),
        "weight_neg": torch.ones(n),
        "error": [""] * n,
        "box_mask": torch.from_numpy(masks),
        "has_boxes": torch.ones(n, dtype=torch.bool),
    }


def _energy_outside(trainer: Trainer, batch: dict) -> float:
    trainer.model.eval()
    with torch.no_grad():
        features = trainer.model.forward_features(trainer.prepare(batch["image"]))
        maps = cam.class_activation_map(features, trainer.model.get_classifier())
        covered = losses.cells_covered(batch["box_mask"], tuple(maps.shape[-2:]))
    trainer.model.train()
    return float((maps * ~covered).sum() / maps.sum().clamp_min(1e-12))


def _trainer(
    box_weight: float, tmp_path, pooling: str = "avg", deletion_weight: float = 0.0, deletion_from: int = 0
) -> Trainer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture="test_efficientnet", input_size=(1, SIZE, SIZE), mean=(0.5,), std=(0.5,), pooling=pooling
    )
    config = TrainConfig(
        data="-",
        out_dir=str(tmp_path),
        arch="test_efficientnet",
        img_size=SIZE,
        lr=3e-3,
        freeze_epochs=0,
        boxes="boxes.csv",
        box_loss_weight=box_weight,
        deletion_loss_weight=deletion_weight,
        deletion_loss_from=deletion_from,
        epochs=3,
    )
    trainer = Trainer(config, create_model(cfg), cfg, Runtime(torch.device("cpu"), "fp32", "test"))
    trainer.set_phase(0)
    return trainer


@pytest.mark.parametrize("pooling", ["avg", "lse"])
def test_box_loss_pulls_the_heatmap_into_the_box(tmp_path, pooling):
    batch = _toy_batch(np.random.default_rng(0))
    supervised, plain = _trainer(1.0, tmp_path, pooling), _trainer(0.0, tmp_path, pooling)
    before = _energy_outside(supervised, batch)
    box_losses = []
    for _ in range(12):
        _, box_loss, used = supervised.step(batch)
        plain.step(batch)
        box_losses.append(box_loss)
    assert used == 16
    assert box_losses[-1] < box_losses[0]
    after, without = _energy_outside(supervised, batch), _energy_outside(plain, batch)
    assert after < before - 0.1, (before, after)
    assert after < without


def test_deletion_loss_pairs_each_boxed_positive_with_its_erased_copy(tmp_path, monkeypatch):
    """The boxed positives (not the negatives, not a positive whose boxes left the canvas) go through
    the same forward pass a second time with their boxes erased; the paired loss sees their logits
    and falls as the steps go on, and the step still counts the batch's own images only."""
    rng = np.random.default_rng(1)
    batch = _toy_batch(rng)
    for k in range(8, 16):  # negatives: the decoy without the lesion, no boxes
        batch["image"][k, 0, 8:20, 8:20] = batch["image"][k, 0, 30:42, 30:42]
        batch["label"][k], batch["has_boxes"][k] = 0, False
        batch["box_mask"][k] = 0
    batch["box_mask"][7] = 0  # a positive whose boxes the augmentation moved off the canvas
    trainer = _trainer(0.0, tmp_path, "lse", deletion_weight=1.0)
    sizes, pair_losses = [], []
    forward = trainer.forward_module
    trainer.forward_module = lambda x: sizes.append(len(x)) or forward(x)
    real = losses.deletion_pair_loss

    def recorded(kept, erased):
        assert kept.shape == erased.shape == (7,)
        out = real(kept, erased)
        pair_losses.append(float(out.detach().mean()))
        return out

    monkeypatch.setattr(losses, "deletion_pair_loss", recorded)
    for _ in range(15):
        _, _, used = trainer.step(batch)
    assert used == 16 and set(sizes) == {16 + 7}
    assert np.mean(pair_losses[-3:]) < pair_losses[0] - 0.3, pair_losses
    plain = _trainer(0.0, tmp_path, "lse")
    forward_plain = plain.forward_module
    plain.forward_module = lambda x: sizes.append(len(x)) or forward_plain(x)
    plain.step(batch)
    assert sizes[-1] == 16  # off by default: no copies


def test_deletion_loss_waits_for_its_first_epoch(tmp_path):
    """--deletion-loss-from 1: no erased copies in the first epoch (the classifier is still random),
    the pairs from the second on; the kept weights are chosen from the later of the two lesion losses."""
    batch = _toy_batch(np.random.default_rng(2))
    trainer = _trainer(0.5, tmp_path, "lse", deletion_weight=1.0, deletion_from=1)
    sizes = []
    forward = trainer.forward_module
    trainer.forward_module = lambda x: sizes.append(len(x)) or forward(x)
    trainer.step(batch)
    assert sizes == [16] and trainer.last_deletion_loss == 0.0
    trainer.epoch = 1
    trainer.step(batch)
    assert sizes[-1] == 32 and trainer.last_deletion_loss > 0
    assert first_lesion_epoch(trainer.config) == 1
    assert first_lesion_epoch(dataclasses.replace(trainer.config, box_loss_from=2)) == 2
    resumed = _trainer(0.5, tmp_path, "lse", deletion_weight=1.0, deletion_from=1)
    resumed.load_state_dict(trainer.state_dict())  # what --resume restores after the first epoch
    forward_resumed = resumed.forward_module
    resumed.forward_module = lambda x: sizes.append(len(x)) or forward_resumed(x)
    resumed.step(batch)
    assert resumed.epoch == 1 and sizes[-1] == 32


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"deletion_loss_from": 1}, "deletion_loss_from needs deletion_loss_weight"),
        ({"deletion_loss_from": 3, "deletion_loss_weight": 1.0}, "deletion_loss_from must be an epoch"),
    ],
)
def test_deletion_loss_from_is_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="-", out_dir="-", boxes="boxes.csv", epochs=3, **changes)


def test_deletion_pair_loss_is_small_past_the_margin():
    kept = torch.tensor([5.0, 0.0])
    loss = losses.deletion_pair_loss(kept, torch.tensor([0.0, 0.0]))
    assert float(loss[0]) < 0.06 and float(loss[1]) == pytest.approx(float(F.softplus(torch.tensor(2.0))))


def test_box_loss_ignores_negatives_and_images_without_boxes():
    cells = torch.randn(3, 4, 4)
    covered = torch.zeros(3, 4, 4, dtype=torch.bool)
    covered[0, :2, :2] = True
    loss = losses.box_attention_loss(cells, covered)
    assert loss[1] == 0 and loss[2] == 0
    inside = torch.softmax(cells[0].flatten(), 0)[covered[0].flatten()].sum()
    assert float(loss[0]) == pytest.approx(-float(torch.log(inside)), rel=1e-5)


def test_cells_covered_on_the_feature_grid():
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    mask[0, 0, 0:3, 17:19] = 1  # touches cell (0, 2) of a 4x4 grid of 8-pixel cells
    covered = losses.cells_covered(mask, (4, 4))
    assert covered.sum() == 1 and covered[0, 0, 2]


def test_box_masks_follow_the_letterbox_and_the_flip():
    from torchvision.transforms import v2

    from mura_cli.training.augment import _augment_with_mask

    geometry = fit_geometry(100, 50, 64, 64, "letterbox")  # 64 x 32 on the canvas, 16 px padding left
    mask = box_geometry.box_mask([(0, 0, 25, 50)], (64, 64), geometry)  # the left half of the top half
    assert mask.sum() == 16 * 32 and mask[0:32, 16:32].all()
    image = torch.arange(64 * 64, dtype=torch.int64).remainder(256).to(torch.uint8).view(1, 64, 64)
    flipped_image, flipped_mask = _augment_with_mask(
        v2.RandomHorizontalFlip(p=1.0), image, torch.from_numpy(mask)[None]
    )
    assert torch.equal(flipped_image, torch.flip(image, dims=[2]))
    assert flipped_mask[0, 0:32, 32:48].all() and flipped_mask.sum() == 16 * 32


def test_read_boxes_names_the_bad_line(tmp_path):
    good = tmp_path / "boxes.csv"
    pd.DataFrame(
        {"image_id": ["a.png", "a.png"], "x0": [1, 5], "y0": [2, 6], "x1": [3, 7], "y1": [4, 8]}
    ).to_csv(good, index=False)
    assert box_geometry.read_boxes(str(good)) == {"a.png": [(1, 2, 3, 4), (5, 6, 7, 8)]}
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,x0,y0,x1,y1\na.png,1,2,3,4\nb.png,9,2,3,4\n")
    with pytest.raises(InputError, match="line 3"):
        box_geometry.read_boxes(str(bad))


def test_tolerant_pointing_matches_a_hand_worked_example():
    # a 20 x 10 box in a 1000 x 500 image; tolerance 0.04 of the long side = 40 px of slack on each side
    box = (100, 100, 120, 110)
    assert metrics.pointing_hit((122, 105), [box])  # strict: grown by 10%: x up to 122, y 99..111
    assert not metrics.pointing_hit((123, 105), [box])
    assert not metrics.pointing_hit((110, 112), [box])
    assert metrics.pointing_hit((160, 150), [box], slack=40)  # tolerant: x 60..160, y 60..150
    assert not metrics.pointing_hit((161, 150), [box], slack=40)
    assert not metrics.pointing_hit((110, 151), [box], slack=40)
    big = (0, 0, 1000, 1000)  # 10% of a large box is more than the slack
    assert metrics.pointing_hit((1090, 500), [big], slack=40)


def test_deletion_fills_the_grown_boxes_and_a_same_size_region_elsewhere():
    geometry = Geometry(64, 64, 64, 64, 0, 0)
    canvas = torch.full((1, 64, 64), 100, dtype=torch.uint8)
    canvas[0, 10:18, 10:18] = 250
    grey = int(round(float(canvas.float().mean())))
    region = box_geometry.to_canvas(box_geometry.grow_box((10, 10, 18, 18), 0.25), geometry)  # 8..20
    filled = faithfulness.fill(canvas, geometry, [region])
    assert (filled[0, 8:20, 8:20] == grey).all() and (filled[0, 20:, 20:] == 100).all()
    other = faithfulness.elsewhere([region], geometry, np.random.default_rng(0))
    assert other is not None
    ((x0, y0, x1, y1),) = other
    assert (x1 - x0, y1 - y0) == pytest.approx((12, 12))
    assert not faithfulness._overlaps(other[0], region)
    assert 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64
    assert faithfulness.elsewhere([(0, 0, 64, 40)], geometry, np.random.default_rng(0)) is None  # no room


def test_mean_drop_interval_contains_the_mean():
    found = faithfulness.mean_drop_ci(np.array([0.1, 0.3, 0.2, np.nan, 0.4]), resamples=200)
    assert found["n"] == 4 and found["mean"] == pytest.approx(0.25)
    assert found["ci"][0] <= 0.25 <= found["ci"][1]
