"""Lesion erasing (train --lesion-erase): counterfactual training images."""

from __future__ import annotations

import pytest
import torch

from mura_cli.config import TrainConfig
from mura_cli.training import erasing


def _item(label: int = 1, has_boxes: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    if has_boxes:
        mask[0, 10:26, 12:30] = 1
    return {"image": image, "box_mask": mask, "has_boxes": has_boxes, "label": label, "error": ""}


@pytest.mark.parametrize("blur", [False, True])
def test_erase_changes_only_the_region(blur):
    item = _item()
    inside = item["box_mask"][0].bool()
    out = erasing.erase(item["image"], item["box_mask"][0], blur)
    assert torch.equal(out[:, ~inside], item["image"][:, ~inside])
    region = out[:, inside].float()
    assert region.std() < item["image"][:, inside].float().std() / 3  # the fine detail is gone
    assert abs(region.mean() - item["image"][:, inside].float().mean()) < 8  # its density is kept


def test_a_lesion_erased_positive_becomes_negative_without_box_loss():
    out = erasing.lesion_erasing(_item(), 0.5, torch.Generator().manual_seed(0))
    seen = {out["erased"]}
    for seed in range(1, 40):
        out = erasing.lesion_erasing(_item(), 0.5, torch.Generator().manual_seed(seed))
        seen.add(out["erased"])
        if out["erased"] == "lesion":
            assert out["label"] == 0 and not out["has_boxes"] and not out["box_mask"].any()
        else:  # at 0.5 the other half is erased elsewhere, label and boxes kept
            assert out["erased"] == "elsewhere" and out["label"] == 1 and out["has_boxes"]
            changed = (out["image"] != _item()["image"])[0]
            assert changed.any() and not (changed & _item()["box_mask"][0].bool()).any()
    assert seen == {"lesion", "elsewhere"}


def test_negatives_and_images_without_boxes_are_left_alone():
    for item in (_item(label=0), _item(has_boxes=False)):
        out = erasing.lesion_erasing(item, 0.5, torch.Generator().manual_seed(0))
        assert out["erased"] == "" and out["label"] == item["label"]
        assert torch.equal(out["image"], item["image"])


def test_elsewhere_keeps_the_shape_and_misses_the_box():
    mask = _item()["box_mask"][0]
    moved = erasing.shifted_elsewhere(mask, None, torch.Generator().manual_seed(3))
    assert moved.sum() == mask.sum()
    assert not (moved.bool() & mask.bool()).any()
    full = torch.ones(64, 64, dtype=torch.uint8)
    assert erasing.shifted_elsewhere(full) is None
    for seed in range(20):  # inside the image's part of the canvas (rows 8-55), never in the padding
        inside = erasing.shifted_elsewhere(mask, (8, 0, 48, 64), torch.Generator().manual_seed(seed))
        rows = torch.nonzero(inside.any(dim=1)).flatten()
        assert int(rows[0]) >= 8 and int(rows[-1]) < 56


def test_an_image_without_room_elsewhere_is_never_erased():
    """A lesion that leaves no room for its shape elsewhere is not erased either: otherwise erased
    patches would come with label 0 more often than with label 1."""
    item = _item()
    item["box_mask"][0, 4:60, 4:60] = 1  # one lesion over most of the image
    for seed in range(30):
        out = erasing.lesion_erasing(item, 0.5, torch.Generator().manual_seed(seed))
        assert out["erased"] == "" and out["label"] == 1 and torch.equal(out["image"], item["image"])


def test_lesion_erase_needs_boxes():
    with pytest.raises(ValueError, match="needs boxes"):
        TrainConfig(data="-", out_dir="x", lesion_erase=0.2)
    with pytest.raises(ValueError):
        TrainConfig(data="-", out_dir="x", boxes="b.csv", lesion_erase=0.6)


def test_the_training_loader_labels_erased_lesions_negative():
    from pathlib import Path

    from mura_cli.inputs.discover import ImageRecord
    from mura_cli.training.augment import create_train_loader

    class Canvases(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, index):
            image = torch.full((1, 64, 64), 40, dtype=torch.uint8)
            image[0, 8:56, 8:56] = torch.randint(120, 180, (48, 48), dtype=torch.uint8)  # the bone
            image[0, 16:32, 16:32] = 220  # the lesion
            return {"image": image, "geometry": torch.tensor([64, 64, 64, 64, 0, 0]), "error": ""}

    records = [ImageRecord(Path(f"/x/{k}.png"), f"{k}.png", "raster", f"s{k}", label=1) for k in range(32)]
    boxes = {f"{k}.png": [(16.0, 16.0, 32.0, 32.0)] for k in range(32)}
    torch.manual_seed(0)
    loader = create_train_loader(
        records, None, None, 32, 0, torch.device("cpu"), torch.Generator().manual_seed(0),
        source=Canvases(), boxes=boxes, erase=0.5,
    )  # fmt: skip
    batch = next(iter(loader))
    lesion = torch.tensor([e == "lesion" for e in batch["erased"]])
    assert lesion.any() and (~lesion).any()
    assert (batch["label"][lesion] == 0).all() and (batch["label"][~lesion] == 1).all()
    lesion_area = batch["image"][:, 0, 16:32, 16:32].float().mean(dim=(1, 2))
    assert (lesion_area[lesion] < 200).all()  # the bright lesion is mostly gone
    assert (batch["image"][~lesion][:, 0, 16:32, 16:32] == 220).all()


def test_in_line_augmentation_runs_on_one_thread_and_restores_the_count():
    from pathlib import Path

    from mura_cli.inputs.discover import ImageRecord
    from mura_cli.training.augment import AugmentedDataset, one_thread

    threads = torch.get_num_threads()
    seen = []

    class Source(torch.utils.data.Dataset):
        def __getitem__(self, index):
            seen.append(torch.get_num_threads())  # what the item's work runs on
            return {"image": torch.zeros(1, 8, 8, dtype=torch.uint8), "error": ""}

    records = [ImageRecord(Path("/x/0.png"), "0.png", "raster", "s0", label=0)]
    item = AugmentedDataset(Source(), records, augment=None)[0]
    assert seen == [1] and item["label"] == 0 and torch.get_num_threads() == threads
    with pytest.raises(ValueError):
        with one_thread():
            assert torch.get_num_threads() == 1
            raise ValueError("a broken image")
    assert torch.get_num_threads() == threads


def _half_anatomy_item() -> dict:
    """Bright textured 'bone' in the left half, flat black background in the right, a lesion on bone."""
    g = torch.Generator().manual_seed(2)
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    image[:, :, :32] = torch.randint(120, 250, (1, 64, 32), generator=g, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 6:18, 4:16] = 1
    return {"image": image, "box_mask": mask, "has_boxes": True, "label": 1, "error": ""}


def test_elsewhere_lands_on_anatomy_and_visibly_changes_the_image():
    """On the background, filling a region with its own mean changes nothing: such an 'erased'
    positive would look unerased, and a visible patch would mostly mean label 0."""
    moved = 0
    for seed in range(40):
        item = _half_anatomy_item()
        out = erasing.lesion_erasing(item, 0.5, torch.Generator().manual_seed(seed))
        if out["erased"] != "elsewhere":
            continue
        moved += 1
        changed = (out["image"] != item["image"])[0]
        assert changed.sum() > 50  # a visible patch, as on the lesion
        assert changed[:, :32].sum() >= erasing.ANATOMY_SHARE * changed.sum()  # on the bone, not the black
        assert not (changed & item["box_mask"][0].bool()).any()
    assert moved > 10


def test_elsewhere_is_drawn_among_all_places_that_fit():
    """Every valid place can be drawn (no give-up after a few random tries): a lesion that leaves
    only two places free elsewhere (of 22 it could try) is still moved there, every time."""
    mask = torch.zeros(20, 20, dtype=torch.uint8)
    mask[0:10, 0:19] = 1  # room for its 10 x 19 box only at rows 10, column 0 or 1
    places = set()
    for seed in range(30):
        moved = erasing.shifted_elsewhere(mask, None, torch.Generator().manual_seed(seed))
        r0, _, c0, _ = erasing._bounds(moved)
        places.add((r0, c0))
    assert places == {(10, 0), (10, 1)}
