"""Lesion boxes: the boxes CSV (read by `evaluate --boxes` and `train --boxes`) and boxes on the canvas.

A boxes CSV has one row per box: ``image_id`` (a file name) or ``path`` (relative to the data folder),
then ``x0, y0, x1, y1`` in the image's original pixels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mura_cli.errors import InputError
from mura_cli.inputs.geometry import Geometry

Box = tuple[float, float, float, float]


def read_boxes(path: str) -> dict[str, list[Box]]:
    """Boxes per image key (image_id / file name, or relative path): x0, y0, x1, y1 in pixels."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot be read as a boxes CSV ({exc})") from None
    key = "image_id" if "image_id" in table.columns else "path" if "path" in table.columns else None
    if key is None or not {"x0", "y0", "x1", "y1"} <= set(table.columns):
        raise InputError(f"{path}: boxes need columns image_id (or path), x0, y0, x1, y1")
    coords = table[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce")
    bad = (
        ~np.isfinite(coords.to_numpy(float)).all(axis=1)
        | (coords["x1"] < coords["x0"]).to_numpy()
        | (coords["y1"] < coords["y0"]).to_numpy()
    )
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise InputError(f"{path}: line {line}: a box needs numbers with x0 <= x1 and y0 <= y1")
    boxes: dict[str, list[Box]] = {}
    for name, row in zip(table[key].astype(str), coords.itertuples(index=False)):
        boxes.setdefault(name.replace("\\", "/"), []).append(tuple(float(v) for v in row))
    return boxes


def boxes_for(rel_path: str, boxes: dict[str, list[Box]]) -> list[Box]:
    """The boxes of one image, found by its relative path or its file name."""
    return boxes.get(rel_path) or boxes.get(rel_path.rsplit("/", 1)[-1]) or []


def grow_box(box: Box, fraction: float, slack: float = 0.0) -> Box:
    """The box grown on every side by ``fraction`` of its width and height, or by ``slack`` pixels
    where that is more."""
    x0, y0, x1, y1 = box
    dx, dy = max((x1 - x0) * fraction, slack), max((y1 - y0) * fraction, slack)
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def to_canvas(box: Box, geometry: Geometry) -> Box:
    """Original pixel coordinates -> model canvas coordinates (edges, not pixel centres)."""
    sx, sy = geometry.new_w / geometry.orig_w, geometry.new_h / geometry.orig_h
    x0, y0, x1, y1 = box
    return (geometry.left + x0 * sx, geometry.top + y0 * sy, geometry.left + x1 * sx, geometry.top + y1 * sy)


def box_mask(
    boxes: list[Box], shape: tuple[int, int], geometry: Geometry | None = None, grow: float = 0.0
) -> np.ndarray:
    """A uint8 mask of ``shape`` (height, width), 1 inside any of the boxes (grown by ``grow``; mapped
    onto the canvas when a geometry is given), 0 elsewhere. A box always covers at least one pixel."""
    height, width = shape
    mask = np.zeros((height, width), np.uint8)
    for box in boxes:
        box = grow_box(box, grow)
        if geometry is not None:
            box = to_canvas(box, geometry)
        x0, y0, x1, y1 = box
        c0, r0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
        c1, r1 = int(np.clip(np.ceil(x1), c0 + 1, width)), int(np.clip(np.ceil(y1), r0 + 1, height))
        mask[r0:r1, c0:c1] = 1
    return mask
