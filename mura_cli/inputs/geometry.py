"""How an original image is placed on the model's input canvas, and the way back.

Letterbox keeps the aspect ratio and pads (centred, black); stretch fills the canvas. The same
Geometry maps a heatmap from the canvas back onto the original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Geometry:
    orig_h: int
    orig_w: int
    new_h: int  # size of the image's region on the canvas
    new_w: int
    top: int  # offset of that region on the canvas
    left: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.orig_h, self.orig_w, self.new_h, self.new_w, self.top, self.left)

    def canvas_to_original(self, y: float, x: float) -> tuple[float, float]:
        """A canvas pixel centre -> the matching point in original pixel coordinates."""
        oy = (y - self.top + 0.5) * self.orig_h / self.new_h - 0.5
        ox = (x - self.left + 0.5) * self.orig_w / self.new_w - 0.5
        return float(np.clip(oy, 0, self.orig_h - 1)), float(np.clip(ox, 0, self.orig_w - 1))


def fit_geometry(orig_h: int, orig_w: int, canvas_h: int, canvas_w: int, policy: str) -> Geometry:
    if policy == "stretch":
        return Geometry(orig_h, orig_w, canvas_h, canvas_w, 0, 0)
    scale = min(canvas_h / orig_h, canvas_w / orig_w)
    new_h = min(canvas_h, max(1, round(orig_h * scale)))
    new_w = min(canvas_w, max(1, round(orig_w * scale)))
    return Geometry(orig_h, orig_w, new_h, new_w, (canvas_h - new_h) // 2, (canvas_w - new_w) // 2)


def place_on_canvas(gray: np.ndarray, geometry: Geometry, canvas_h: int, canvas_w: int) -> np.ndarray:
    """uint8 image, or float [0, 1] image -> uint8 canvas. Antialiased bilinear resize: of 8 bits in
    8 bits (Pillow's fixed point), of float in float, rounded once at the end."""
    size = (geometry.new_w, geometry.new_h)
    if gray.dtype == np.uint8:
        region = np.asarray(
            Image.fromarray(np.ascontiguousarray(gray), mode="L").resize(size, Image.BILINEAR)
        )
    else:
        region = _float_region(gray, size)
    canvas = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
    canvas[geometry.top : geometry.top + geometry.new_h, geometry.left : geometry.left + geometry.new_w] = (
        region
    )
    return canvas


def _float_region(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F").resize(
        size, Image.BILINEAR
    )
    region = np.array(resized, dtype=np.float32)  # its own buffer, rounded in place (no temporaries)
    region *= np.float32(255.0)
    np.rint(region, out=region)
    np.clip(region, 0, 255, out=region)
    return region.astype(np.uint8)


def crop_region(canvas_like: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The part of a canvas-sized array that shows the image (padding removed)."""
    return canvas_like[
        geometry.top : geometry.top + geometry.new_h, geometry.left : geometry.left + geometry.new_w
    ]
