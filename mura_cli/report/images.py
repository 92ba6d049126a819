"""Thumbnails and heatmap overlays for the report, cut from the model's own input canvas (no second
decode), mapped back to the original aspect ratio, as small JPEGs."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mura_cli.geometry import Geometry, crop_region

THUMB_LONG_SIDE = 200
JPEG_QUALITY = 85

# a "jet"-like colour ramp: (position, (r, g, b)); low = dark blue, high = dark red
_RAMP = [(0.0, (0, 0, 128)), (0.15, (0, 0, 255)), (0.4, (0, 255, 255)), (0.6, (255, 255, 0)),
         (0.85, (255, 0, 0)), (1.0, (128, 0, 0))]


def _colour_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    stops = np.array([p for p, _ in _RAMP])
    colours = np.array([c for _, c in _RAMP], dtype=np.float64)
    return np.stack([np.interp(x, stops, colours[:, k]) for k in range(3)], axis=1)


_COLOURS = _colour_table()


@dataclass(frozen=True)
class Thumbnails:
    image: bytes  # JPEG
    overlay: bytes | None  # JPEG, None without a heatmap


def thumbnail_size(geometry: Geometry, long_side: int = THUMB_LONG_SIDE) -> tuple[int, int]:
    """(width, height) with the original's aspect ratio."""
    scale = long_side / max(geometry.orig_h, geometry.orig_w)
    return max(1, round(geometry.orig_w * scale)), max(1, round(geometry.orig_h * scale))


def overlay(gray: np.ndarray, heat: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """Blend a [0, 1] heatmap over a uint8 grayscale image; weak heat leaves the anatomy visible."""
    colour = _COLOURS[np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)]
    alpha = (strength * heat)[..., None]
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=2)
    return np.clip(base * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def make_thumbnails(canvas: np.ndarray, geometry: Geometry, heatmap: np.ndarray | None) -> Thumbnails:
    size = thumbnail_size(geometry)
    gray = np.asarray(Image.fromarray(crop_region(canvas, geometry)).resize(size, Image.BILINEAR))
    if heatmap is None:
        return Thumbnails(_jpeg(gray), None)
    heat_region = np.ascontiguousarray(crop_region(heatmap, geometry), dtype=np.float32)
    heat = np.clip(np.asarray(Image.fromarray(heat_region, mode="F").resize(size, Image.BILINEAR)), 0, 1)
    return Thumbnails(_jpeg(gray), _jpeg(overlay(gray, heat)))

