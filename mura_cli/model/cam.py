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


def to_canvas(
    cams: torch.Tensor, geometries: torch.Tensor, canvas_hw: tuple[int, int], maps_too: bool = True
):
    """Upsample (B, h, w) maps onto the input canvas, zero the padding, normalise each to [0, 1] over
    the image's region, and find each peak (the first maximum in reading order; -1, -1 for a flat
    map, which points nowhere). Returns (maps (B, H, W), peaks (B, 2) as canvas y, x); without
    ``maps_too`` only the peaks (maps None), for runs that keep no pictures."""
    height, width = canvas_hw
    maps = F.interpolate(cams[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[
        :, 0
    ]
    ys = torch.arange(height, device=maps.device)[None, :, None]
    xs = torch.arange(width, device=maps.device)[None, None, :]
    geo = geometries.to(maps.device)
    new_h, new_w, top, left = (geo[:, i, None, None] for i in (2, 3, 4, 5))
    outside = (ys < top) | (ys >= top + new_h) | (xs < left) | (xs >= left + new_w)
    masked = maps.masked_fill(outside, float("-inf")).flatten(1)
    flat_peak = masked.argmax(dim=1)
    peaks = torch.stack((flat_peak // width, flat_peak % width), dim=1)
    high = masked.gather(1, flat_peak[:, None])[:, :, None]  # the peak's value is the region's maximum
    low = maps.masked_fill(outside, float("inf")).flatten(1).min(dim=1).values[:, None, None]
    peaks[(high - low).flatten() <= 1e-12] = -1  # a flat map (e.g. all zero: no cell raised the score)
    if not maps_too:
        return None, peaks
    normalised = maps.sub_(low).div_((high - low).clamp_min(1e-12)).clamp_(0, 1)
    return normalised.masked_fill_(outside, 0.0), peaks
