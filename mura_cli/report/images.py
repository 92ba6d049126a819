"""Thumbnails and heatmap overlays for the report, cut from the model's own input canvas (no second
decode), mapped back to the original aspect ratio, as small JPEGs."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mura_cli.inputs.geometry import Geometry, crop_region

THUMB_LONG_SIDE = 200
JPEG_QUALITY = 85

# a "jet"-like colour ramp: (position, (r, g, b)); low = dark blue, high = dark red
_RAMP = [
    (0.0, (0, 0, 128)),
    (0.15, (0, 0, 255)),
    (0.4, (0, 255, 255)),
    (0.6, (255, 255, 0)),
    (0.85, (255, 0, 0)),
    (1.0, (128, 0, 0)),
]


def _colour_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    stops = np.array([p for p, _ in _RAMP])
    colours = np.array([c for _, c in _RAMP], dtype=np.float64)
    return np.stack([np.interp(x, stops, colours[:, k]) for k in range(3)], axis=1)


_PALETTE = np.rint(_colour_table()).astype(np.uint8).flatten().tolist()


@dataclass(frozen=True)
class Thumbnails:
    image: bytes  # JPEG
    overlay: bytes | None  # JPEG, None without a heatmap


def thumbnail_size(geometry: Geometry, long_side: int = THUMB_LONG_SIDE) -> tuple[int, int]:
    """(width, height) with the original's aspect ratio."""
    scale = long_side / max(geometry.orig_h, geometry.orig_w)
    return max(1, round(geometry.orig_w * scale)), max(1, round(geometry.orig_h * scale))


def overlay(gray: Image.Image, heat: np.ndarray, strength: float = 0.6) -> Image.Image:
    """Blend a [0, 1] heatmap over a grayscale image; weak heat leaves the anatomy visible:
    pixel = colour * a + gray * (1 - a) with a = strength * heat. In PIL's C code (a palette for the
    colour ramp, a composite for the blend): 0.3 ms for a 200 px thumbnail, 2.3 ms in float64 numpy."""
    level = Image.fromarray(np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8), mode="L")
    colour = level.copy()
    colour.putpalette(_PALETTE)
    alpha = level.point([round(v * strength) for v in range(256)])
    return Image.composite(colour.convert("RGB"), gray.convert("RGB"), alpha)


def _jpeg(image: Image.Image, optimize: bool = True) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=optimize)
    return buffer.getvalue()


def make_thumbnails(
    canvas: np.ndarray, geometry: Geometry, heatmap: np.ndarray | None, boxes=()
) -> Thumbnails:
    """The image and its heatmap overlay, with ``boxes`` (original pixel coordinates) outlined on both."""
    size = thumbnail_size(geometry)
    gray = Image.fromarray(crop_region(canvas, geometry)).resize(size, Image.BILINEAR)
    heat = None
    if heatmap is not None:
        heat_region = np.ascontiguousarray(crop_region(heatmap, geometry), dtype=np.float32)
        heat = np.clip(np.asarray(Image.fromarray(heat_region, mode="F").resize(size, Image.BILINEAR)), 0, 1)
    shown = _outlined(gray, boxes, geometry) if boxes else gray
    if heat is None:
        return Thumbnails(_jpeg(shown), None)
    # colour overlays skip the optimising Huffman pass: 5% larger, 2.5x faster to encode
    return Thumbnails(_jpeg(shown), _jpeg(_outlined(overlay(gray, heat), boxes, geometry), optimize=False))


BOX_COLOUR = (0, 230, 0)  # green: apart from the heatmap's blue-to-red ramp


def _outlined(image: Image.Image, boxes, geometry: Geometry) -> Image.Image:
    if not boxes:
        return image
    from PIL import ImageDraw

    shown = image.convert("RGB")
    draw = ImageDraw.Draw(shown)
    sx, sy = shown.width / geometry.orig_w, shown.height / geometry.orig_h
    for x0, y0, x1, y1 in boxes:
        draw.rectangle(
            [x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)],
            outline=BOX_COLOUR,
            width=2,
        )
    return shown
