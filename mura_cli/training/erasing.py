"""Lesion erasing: counterfactual training images that teach the model the lesion is the finding.

A fractured image with boxes is, with probability ``p``, shown with its (grown) boxes erased and
labelled negative; with another ``p`` it is shown with a region of the same shape erased elsewhere and
keeps its label. The elsewhere region is drawn among the places on anatomy much like the lesion's (not
on the dark background, where erasing would change nothing that the model sees), so an erased patch
comes with either label equally often and looks alike in both: only what it covers decides. Images
without boxes are left as they are.

Erasing here fills a region with its own mean grey or with a coarse blur of itself, never with the
image's mean grey that `evaluate`'s deletion test uses, so that test stays a check on unseen edits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANATOMY_SHARE = 0.8  # an elsewhere region covers at least this share of the lesion's anatomy share


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of the mask's non-zero pixels (half-open)."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def anatomy(image: torch.Tensor, region: tuple[int, int, int, int]) -> torch.Tensor:
    """(H, W) bool: pixels brighter than the mean of the image's part of the canvas (bone and soft
    tissue on a radiograph, not the dark background or the padding)."""
    top, left, height, width = region
    gray = image.float().mean(dim=0)
    inside = torch.zeros_like(gray, dtype=torch.bool)
    inside[top : top + height, left : left + width] = True
    return inside & (gray > gray[inside].mean())


def _box_shares(foreground: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Share of foreground pixels in every h x w window, indexed by its top-left corner."""
    padded = F.pad(foreground.float().cumsum(0).cumsum(1), (1, 0, 1, 0))
    sums = padded[h:, w:] - padded[:-h, w:] - padded[h:, :-w] + padded[:-h, :-w]
    return sums / (h * w)


def shifted_elsewhere(
    mask: torch.Tensor,
    region: tuple[int, int, int, int] | None = None,
    generator: torch.Generator | None = None,
    foreground: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The (H, W) mask's shape moved to a place drawn uniformly among all those inside ``region`` (top,
    left, height, width: the image's part of the canvas; default the whole canvas) where its bounding
    box misses the original's and, given ``foreground`` (see ``anatomy``), covers at least
    ANATOMY_SHARE of the share of foreground that the original's box covers; None when there is none."""
    height, width = mask.shape
    top0, left0, room_h, room_w = region or (0, 0, height, width)
    r0, r1, c0, c1 = _bounds(mask)
    h, w = r1 - r0, c1 - c0
    if h > room_h or w > room_w:
        return None
    tops = torch.arange(top0, top0 + room_h - h + 1)[:, None]
    lefts = torch.arange(left0, left0 + room_w - w + 1)[None, :]
    valid = ~((tops < r1) & (r0 < tops + h) & (lefts < c1) & (c0 < lefts + w))
    if foreground is not None:
        shares = _box_shares(foreground, h, w)
        wanted = ANATOMY_SHARE * float(shares[r0, c0])
        valid &= shares[top0 : top0 + room_h - h + 1, left0 : left0 + room_w - w + 1] >= wanted
    places = torch.nonzero(valid)
    if len(places) == 0:
        return None
    row, col = places[int(torch.randint(0, len(places), (1,), generator=generator))].tolist()
    top, left = top0 + row, left0 + col
    out = torch.zeros_like(mask)
    out[top : top + h, left : left + w] = mask[r0:r1, c0:c1]
    return out


def erase(image: torch.Tensor, mask: torch.Tensor, blur: bool) -> torch.Tensor:
    """A copy of the (C, H, W) uint8 image with the (H, W) mask's pixels replaced by their own mean
    grey, or (``blur``) by a coarse blur of the region's bounding box (fine lines gone, density kept)."""
    out = image.clone()
    inside = mask.bool()
    if not inside.any():
        return out
    if not blur:
        grey = image[:, inside].float().mean(dim=1).round().to(image.dtype)
        out[:, inside] = grey[:, None]
        return out
    r0, r1, c0, c1 = _bounds(mask)
    crop = image[:, r0:r1, c0:c1].float()[None]
    step = max(4, min(r1 - r0, c1 - c0) // 4)
    small = F.avg_pool2d(crop, step, ceil_mode=True, count_include_pad=False)
    coarse = F.interpolate(small, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]
    region = out[:, r0:r1, c0:c1]
    keep = inside[r0:r1, c0:c1]
    region[:, keep] = coarse[:, keep].round().clamp(0, 255).to(image.dtype)
    return out


def lesion_erasing(item: dict, probability: float, generator: torch.Generator | None = None) -> dict:
    """The training item (``image``, ``box_mask``, ``has_boxes``, ``label``, ``geometry``) after lesion
    erasing with ``probability`` (at most 0.5): lesion erased and label (and target) 0, or erased elsewhere, or
    unchanged. An image with no room for the same shape elsewhere in its own part of the canvas is
    left unchanged either way, so that an erased patch never tells the label. ``item['erased']`` says
    which: 'lesion', 'elsewhere' or ''."""
    item = {**item, "erased": ""}
    if probability <= 0 or item.get("error") or not item.get("has_boxes") or int(item["label"]) != 1:
        return item
    draw = float(torch.rand((), generator=generator))
    blur = bool(torch.rand((), generator=generator) < 0.5)
    mask = item["box_mask"][0]
    if draw >= 2 * probability or not mask.any():  # unchanged, or every box moved off the canvas
        return item
    region = _image_region(item, mask.shape)
    moved = shifted_elsewhere(mask, region, generator, anatomy(item["image"], region))
    if moved is None:
        return item
    if draw < probability:
        item.update(
            image=erase(item["image"], mask, blur), label=0, target=0.0, has_boxes=False, erased="lesion"
        )
        item["box_mask"] = torch.zeros_like(item["box_mask"])
    else:
        item.update(image=erase(item["image"], moved, blur), erased="elsewhere")
    return item


def _image_region(item: dict, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image on the canvas (the letterbox padding left out; before
    the augmentation's small shifts), from the item's geometry when it has one."""
    geometry = item.get("geometry")
    if geometry is None:
        return (0, 0, *shape)
    _, _, new_h, new_w, top, left = (int(v) for v in geometry.tolist())
    return (top, left, new_h, new_w)
