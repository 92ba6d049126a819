"""Heatmaps from the last feature map of the forward pass.

For a head that is global average pooling followed by a linear layer, Grad-CAM's channel weights are
the classifier weights divided by the map's area (d logit / d F[c,i,j] = w_c / (h*w)), so Grad-CAM
equals the class activation map ReLU(sum_c w_c F_c) up to scale: computed from the forward pass, no
backward pass. With ``pooling="lse"`` (mura_cli.pooling) the same map is the decision itself: the image
logit is the log-mean-exp of the cell logits. Any other head gets autograd Grad-CAM through the head only, from the same features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mura_cli.model.pooling import CellPooledLinear


def linear_pooled_head(model: nn.Module, channels: int) -> nn.Linear | None:
    """The classifier when ``forward_head`` is exactly mean-pool + linear, else None.

    Checked numerically on random feature maps (eval mode, fp32) rather than by module names, so any
    timm architecture whose head reduces to that form qualifies and nothing else does."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, CellPooledLinear):  # the cell logits are the decision (mura_cli.pooling)
        return classifier
    if not isinstance(classifier, nn.Linear) or classifier.in_features != channels:
        return None
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in ((2, 3), (5, 4)):
            feats = torch.randn((2, channels, *size), generator=generator).to(param.device, param.dtype)
            expected = F.linear(feats.mean(dim=(2, 3)), classifier.weight, classifier.bias)
            try:
                actual = model.forward_head(feats)
            except Exception:  # a head that cannot take this map size is not a plain pooled head
                return None
            if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=1e-4, rtol=1e-4):
                return None
    return classifier


def cell_logits(features: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """(B, C, h, w) features -> (B, h, w) per-cell logits sum_c w_c F_c in fp32 for output 0. Their
    mean plus the bias is the logit of a mean-pool + linear head; the box loss (losses.py) uses them."""
    return torch.einsum("bchw,c->bhw", features.float(), classifier.weight[0].float())


def class_activation_map(features: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """(B, C, h, w) features -> (B, h, w) ReLU(sum_c w_c F_c) in fp32 for output 0."""
    return torch.relu(cell_logits(features, classifier))


def gradcam_from_features(model: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd Grad-CAM through ``model.forward_head``; returns (logits, cams (B, h, w))."""
    with torch.enable_grad():
        feats = features.detach().float().requires_grad_(True)
        logits = model.forward_head(feats)
        (grads,) = torch.autograd.grad(logits[:, 0].sum(), feats)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return logits.detach(), torch.relu((alpha * feats.detach()).sum(dim=1))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of (B, ...) to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    return ((flat - low) / span.clamp_min(1e-12)).view_as(maps)


def _axis_candidates(cells: int, pixels: int, start: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(B, 2 * cells + 2) sorted pixel positions along one axis of the canvas, inside each image's span
    [start, start + size): the two pixels either side of every cell centre, and the span's ends. A
    bilinear upsample (align_corners=False) is linear between consecutive cell centres and constant
    beyond the outer ones, so along this axis its maximum and minimum over the span, and the first
    pixel that reaches them, are always among these positions."""
    centres = (torch.arange(cells, dtype=torch.float64) + 0.5) * (pixels / cells) - 0.5
    knots = torch.cat((centres.floor(), centres.ceil())).to(torch.int64)
    ends = torch.stack((start, start + size - 1), dim=1)
    candidates = torch.cat((knots[None].expand(len(start), -1), ends), dim=1)
    low, high = start[:, None], (start + size - 1)[:, None]
    return torch.minimum(torch.maximum(candidates, low), high).sort(dim=1).values


def _bilinear_weights(positions: torch.Tensor, cells: int, pixels: int):
    """For canvas pixel ``positions``: the two source cells and the second one's weight, as
    torch's bilinear interpolation with align_corners=False computes them (edges clamped)."""
    source = ((positions.double() + 0.5) * (cells / pixels) - 0.5).clamp_min(0.0)
    first = source.floor().to(torch.int64).clamp_max(cells - 1)
    second = (first + 1).clamp_max(cells - 1)
    return first, second, (source - first.double()).clamp(0.0, 1.0)


def upsampled_at(
    maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, canvas_hw: tuple[int, int]
) -> torch.Tensor:
    """(B, Ky, Kx) float64 values of the (B, h, w) ``maps`` upsampled bilinearly onto the canvas
    (align_corners=False), at canvas ``rows`` (B, Ky) x ``cols`` (B, Kx) only. Each blend is written
    a + (b - a) * t, so a map constant along an axis stays exactly constant (ties stay ties and the
    first in reading order wins)."""
    height, width = canvas_hw
    maps = maps.double()
    cells_h, cells_w = maps.shape[1:]
    y0, y1, wy = _bilinear_weights(rows, cells_h, height)
    x0, x1, wx = _bilinear_weights(cols, cells_w, width)
    pick = lambda index: maps.gather(1, index[:, :, None].expand(-1, -1, cells_w))  # noqa: E731
    first = pick(y0)
    along = first + (pick(y1) - first) * wy[:, :, None]  # (B, Ky, w)
    grab = lambda index: along.gather(2, index[:, None, :].expand(-1, along.shape[1], -1))  # noqa: E731
    left = grab(x0)
    return left + (grab(x1) - left) * wx[:, None, :]


def canvas_peaks(cams: torch.Tensor, geometries: torch.Tensor, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 2) canvas y, x of the first maximum in reading order of each (B, h, w) map upsampled
    bilinearly onto the canvas, within the image's region; -1, -1 for a map flat there. The same
    answer as searching the whole upsampled map, found on a grid of (2h + 2) x (2w + 2) candidate
    pixels (see _axis_candidates): about a hundredth of the work for a 12 x 12 map on a 384 px canvas."""
    height, width = canvas_hw
    maps = cams.double().cpu()
    cells_h, cells_w = maps.shape[1:]
    geo = geometries.cpu().to(torch.int64)
    rows = _axis_candidates(cells_h, height, geo[:, 4], geo[:, 2])  # (B, Ky)
    cols = _axis_candidates(cells_w, width, geo[:, 5], geo[:, 3])  # (B, Kx)
    values = upsampled_at(maps, rows, cols, canvas_hw).flatten(1)  # (B, Ky * Kx)
    best = values.argmax(dim=1)
    peaks = torch.stack(
        (
            rows.gather(1, (best // cols.shape[1])[:, None])[:, 0],
            cols.gather(1, (best % cols.shape[1])[:, None])[:, 0],
        ),
        dim=1,
    )
    flat = (values.amax(dim=1) - values.amin(dim=1)) <= 1e-12  # a flat map (e.g. all zero) points nowhere
    peaks[flat] = -1
    return peaks.to(cams.device)


def to_canvas(
    cams: torch.Tensor, geometries: torch.Tensor, canvas_hw: tuple[int, int], maps_too: bool = True
):
    """Upsample (B, h, w) maps onto the input canvas, zero the padding, normalise each to [0, 1] over
    the image's region, and find each peak (canvas_peaks: the first maximum in reading order; -1, -1
    for a flat map, which points nowhere). Returns (maps (B, H, W), peaks (B, 2) as canvas y, x);
    without ``maps_too`` only the peaks (maps None), for runs that keep no pictures."""
    peaks = canvas_peaks(cams, geometries, canvas_hw)
    if not maps_too:
        return None, peaks
    height, width = canvas_hw
    maps = F.interpolate(cams[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[
        :, 0
    ]
    ys = torch.arange(height, device=maps.device)[None, :, None]
    xs = torch.arange(width, device=maps.device)[None, None, :]
    geo = geometries.to(maps.device)
    new_h, new_w, top, left = (geo[:, i, None, None] for i in (2, 3, 4, 5))
    outside = (ys < top) | (ys >= top + new_h) | (xs < left) | (xs >= left + new_w)
    flat = maps.flatten(1)
    high = flat.masked_fill(outside.flatten(1), float("-inf")).amax(dim=1)[:, None, None]
    low = flat.masked_fill(outside.flatten(1), float("inf")).amin(dim=1)[:, None, None]
    normalised = maps.sub_(low).div_((high - low).clamp_min(1e-12)).clamp_(0, 1)
    return normalised.masked_fill_(outside, 0.0), peaks
