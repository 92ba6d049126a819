"""Does the model use the lesion? The deletion test of `evaluate --boxes`.

Each positive image with boxes is scored again twice: once with its boxes (grown by 25%) filled with
the image's mean grey, once with regions of the same sizes elsewhere in the image filled the same way.
A model that relies on the lesion loses much more probability in the first case than in the second.
Regions are filled on the model's canvas, so the test sees exactly what the model sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mura_cli.inputs import boxes as box_geometry
from mura_cli.inputs.geometry import Geometry

DELETION_GROW = 0.25
PLACEMENT_TRIES = 200


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def elsewhere(regions: list, geometry: Geometry, rng: np.random.Generator) -> list | None:
    """For each canvas region, one of the same size inside the image's part of the canvas that overlaps
    no lesion region and no other chosen region; None where the image has no such room."""
    top, left, bottom, right = (
        geometry.top,
        geometry.left,
        geometry.top + geometry.new_h,
        geometry.left + geometry.new_w,
    )
    chosen: list = []
    for x0, y0, x1, y1 in regions:
        w, h = min(x1, right) - max(x0, left), min(y1, bottom) - max(y0, top)
        if w <= 0 or h <= 0 or w >= right - left or h >= bottom - top:
            return None
        for _ in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(left, right - w), rng.uniform(top, bottom - h)
            candidate = (cx, cy, cx + w, cy + h)
            if not any(_overlaps(candidate, other) for other in [*regions, *chosen]):
                chosen.append(candidate)
                break
        else:
            return None
    return chosen


def fill(canvas: torch.Tensor, geometry: Geometry, regions: list) -> torch.Tensor:
    """A copy of the (1, H, W) uint8 canvas with each region filled with the image's mean grey."""
    out = canvas.clone()
    image = out[
        :, geometry.top : geometry.top + geometry.new_h, geometry.left : geometry.left + geometry.new_w
    ]
    grey = int(round(float(image.float().mean())))
    height, width = out.shape[-2:]
    for x0, y0, x1, y1 in regions:
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        out[:, r0:r1, c0:c1] = grey
    return out


class FilledDataset(Dataset):
    """The items of ``source`` with lesion regions (``mode='boxes'``) or same-size regions elsewhere
    (``mode='elsewhere'``) filled; an item where that is impossible is returned as an error."""

    def __init__(self, source: Dataset, image_boxes: list[list], mode: str, seed: int = 0):
        self.source, self.image_boxes, self.mode, self.seed = source, image_boxes, mode, seed

    def __len__(self) -> int:
        return len(self.image_boxes)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.source[index])
        if item["error"]:
            return item
        geometry = Geometry(*item["geometry"].tolist())
        regions = [
            box_geometry.to_canvas(box_geometry.grow_box(b, DELETION_GROW), geometry)
            for b in self.image_boxes[index]
        ]
        if self.mode == "elsewhere":
            regions = elsewhere(regions, geometry, np.random.default_rng([self.seed, index]))
            if regions is None:
                return {**item, "error": "no room for a same-size region elsewhere"}
        item["image"] = fill(item["image"], geometry, regions)
        return item


def deletion_scores(
    predictor,
    records,
    image_boxes: list[list],
    batch_size: int,
    workers: int,
    seed: int = 0,
    source: Dataset | None = None,
) -> pd.DataFrame:
    """Probabilities with the boxes filled and with same-size regions elsewhere filled, one row per record
    (each image decoded once for both, or taken from ``source``: the records' decoded items, in order,
    e.g. training's decoded cache)."""
    from mura_cli.inference.batches import ImageDataset, InMemory
    from mura_cli.inference.predictor import predict_records

    decoded = InMemory(source if source is not None else ImageDataset(records, predictor.config))
    out = {}
    for mode in ("boxes", "elsewhere"):
        dataset = FilledDataset(decoded, image_boxes, mode, seed)
        probs = np.full(len(records), np.nan)
        for result in predict_records(predictor, records, batch_size, workers, dataset=dataset):
            probs[result.indices] = result.probabilities
        out[f"probability_{mode}_filled"] = probs
    return pd.DataFrame({"path": [r.rel_path for r in records], **out})


def boxed_positives(records, boxes: dict) -> list[int]:
    """Indices of the records that are positive, decodable and have at least one box."""
    return [
        i
        for i, r in enumerate(records)
        if r.label == 1 and not r.error and box_geometry.boxes_for(r.rel_path, boxes)
    ]


def mean_drops(
    predictor,
    records,
    probabilities,
    boxes: dict,
    batch_size: int,
    workers: int,
    seed: int = 0,
    source: Dataset | None = None,
) -> dict:
    """The deletion test's mean probability drops ('deletion', 'elsewhere') over the records' positives
    with boxes, given their unfilled ``probabilities``; None where no image took part. ``source``: the
    records' decoded items (training's cache), so that nothing is decoded again."""
    from mura_cli.inference.batches import Reindexed

    chosen = boxed_positives(records, boxes)
    if not chosen:
        return {"deletion": None, "elsewhere": None, "n": 0}
    picked = [records[i] for i in chosen]
    filled = deletion_scores(
        predictor,
        picked,
        [box_geometry.boxes_for(r.rel_path, boxes) for r in picked],
        batch_size,
        workers,
        seed,
        Reindexed(source, chosen) if source is not None else None,
    )
    base = np.asarray(probabilities, float)[chosen]
    out = {"n": len(chosen)}
    for name, column in (
        ("deletion", "probability_boxes_filled"),
        ("elsewhere", "probability_elsewhere_filled"),
    ):
        drops = base - filled[column].to_numpy(float)
        drops = drops[np.isfinite(drops)]
        out[name] = float(drops.mean()) if len(drops) else None
    return out


def mean_drop_ci(drops: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean of the drops with a 95% percentile-bootstrap interval over images."""
    drops = np.asarray(drops, float)
    drops = drops[np.isfinite(drops)]
    if len(drops) == 0:
        return {"n": 0, "mean": None, "ci": None}
    rng = np.random.default_rng(seed)
    means = drops[rng.integers(0, len(drops), size=(resamples, len(drops)))].mean(axis=1)
    return {
        "n": int(len(drops)),
        "mean": float(drops.mean()),
        "ci": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
    }
