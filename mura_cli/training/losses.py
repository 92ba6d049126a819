"""Training losses: the class-weighted BCE (hard or soft targets), box supervision of the class
activation map, and the paired deletion loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, weight_pos: torch.Tensor, weight_neg: torch.Tensor
) -> torch.Tensor:
    """Per image: -(w1 t log p + w0 (1 - t) log(1 - p)), p = sigmoid(logit), for a target t in [0, 1].

    With t 0 or 1 it is the class-weighted BCE of the labels; with a soft target (distillation) each
    class keeps its weight, so the logit's optimum, log(w1 t / (w0 (1 - t))), is shifted by the class
    weights exactly as with hard labels. Returns (B,) losses."""
    return weight_pos * target * F.softplus(-logits) + weight_neg * (1 - target) * F.softplus(logits)


def cells_covered(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) box masks on the canvas -> (B, h, w) bool: feature cells that a box touches."""
    return F.adaptive_max_pool2d(masks.float(), grid)[:, 0] > 0


def box_attention_loss(
    cell_logits: torch.Tensor, covered: torch.Tensor, sharpness: float = 1.0
) -> torch.Tensor:
    """Per image: -log(share of the softmax over cells that falls on covered cells).

    A multiple-instance form of attention supervision: the map is pulled into the boxes, but the peak
    may sit on any covered cell, and the mean (the classification logit) stays free. With the cell
    pooling's ``sharpness`` r the softmax is that of r x the cell logits: the pooling's own weights
    (its gradient on the cell logits grows with r, while the pooled logit's does not).
    Images without a covered cell give 0. Returns (B,) losses."""
    flat = cell_logits.flatten(1) * sharpness
    inside = flat.masked_fill(~covered.flatten(1), float("-inf"))
    loss = torch.logsumexp(flat, dim=1) - torch.logsumexp(inside, dim=1)
    return torch.where(covered.flatten(1).any(dim=1), loss, torch.zeros_like(loss))


# logits by which an image's logit should exceed that of its copy with the lesion erased: about the
# deletion target of issue 17 (a probability drop of 0.25 near p 0.45 is a logit drop of about 1.1),
# with room to spare
DELETION_MARGIN = 2.0


def deletion_pair_loss(
    kept: torch.Tensor, erased: torch.Tensor, margin: float = DELETION_MARGIN
) -> torch.Tensor:
    """Per pair: softplus(erased - kept + margin), small once the image's logit exceeds its erased
    copy's by the margin. Both logits get gradients: the lesion's evidence up, what is left without it
    down, while the classification loss keeps the unerased image's label. Returns (B,) losses."""
    return F.softplus(erased - kept + margin)
