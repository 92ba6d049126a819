"""Cell-level pooling: the classifier scores every feature cell, and the image logit pools those scores.

With timm's default head (mean-pool, then linear) a fracture that covers 3 of 100 cells moves the image
logit by about 3% of its cell scores: removing it barely changes the answer, and the heatmap is a side
view of a decision taken on the whole image. ``pooling="lse"`` applies the same linear layer to each
cell first and pools the cell logits with a log-mean-exp (a smooth maximum):

    logit = log(mean_cells exp(s_cell)),  s_cell = w . F_cell + b

so the cells with the highest scores decide, the heatmap (the cell scores) is the decision itself, and
the softmax of the cell scores is exactly the pooling's weight on each cell, which the box loss
(losses.py) pulls into the lesion boxes. The weights keep timm's names and shapes (``classifier.weight``
and ``classifier.bias``), so initial weights, checkpoints and safetensors files are unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CellPooledLinear(nn.Linear):
    """A linear classifier applied per cell of a (B, C, h, w) map, pooled by log-mean-exp -> (B, out).

    ``sharpness`` r pools (1/r) log mean exp(r s): r = 1 is the plain log-mean-exp, larger r comes
    nearer the highest cell score (so fewer cells decide), smaller nearer the mean."""

    sharpness: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"cell pooling needs a (B, C, h, w) feature map, got shape {tuple(x.shape)}")
        cells = torch.einsum("bchw,oc->bohw", x, self.weight).flatten(2)
        cells = (cells + self.bias[None, :, None]).float()  # r x cells must not overflow in fp16
        r = self.sharpness
        return (torch.logsumexp(r * cells, dim=2) - math.log(cells.shape[2])) / r


def use_cell_pooling(model: nn.Module, architecture: str, sharpness: float = 1.0) -> nn.Module:
    """Swap a timm model's pool + linear head for CellPooledLinear (same parameters); returns the model.

    Works for timm models whose head is ``global_pool`` then the classifier named in their pretrained
    config (EfficientNet, ResNet, ConvNeXt's differ and are refused)."""
    from mura_cli.errors import ModelError

    name = getattr(model, "pretrained_cfg", {}).get("classifier") or ""
    classifier = getattr(model, name, None) if name and "." not in name else None
    pool = getattr(model, "global_pool", None)
    if not isinstance(classifier, nn.Linear) or not isinstance(pool, nn.Module):
        raise ModelError(
            f"pooling 'lse' is not available for '{architecture}' (its head is not a global pool "
            "followed by one linear layer)"
        )
    pooled = CellPooledLinear(classifier.in_features, classifier.out_features)
    pooled.sharpness = float(sharpness)
    pooled.load_state_dict(classifier.state_dict())
    setattr(model, name, pooled)
    model.global_pool = nn.Identity()
    if not _head_is_cell_pooled(
        model, pooled
    ):  # e.g. MobileNetV3: pool, then a conv head, then the classifier
        raise ModelError(
            f"pooling 'lse' is not available for '{architecture}' (its head does more than pool and classify)"
        )
    return model


def _head_is_cell_pooled(model: nn.Module, pooled: CellPooledLinear) -> bool:
    """forward_head on a random map equals the classifier's log-mean-exp over its cells (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = torch.randn(2, pooled.in_features, 2, 3, generator=torch.Generator().manual_seed(0))
            try:
                found = model.forward_head(features)
            except (RuntimeError, ValueError):
                return False
            return found.shape == (2, pooled.out_features) and torch.allclose(
                found, pooled(features), atol=1e-5
            )
    finally:
        model.train(was_training)
