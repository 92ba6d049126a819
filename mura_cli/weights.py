"""Initial weights for training from local files (no network)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mura_cli.config import ModelConfig
from mura_cli.errors import ModelError


def load_initial_weights(model: nn.Module, model_cfg: ModelConfig, source: str) -> tuple[int, int]:
    """``source``: a .safetensors file of the same architecture."""
    from mura_cli.training_io import load_init_weights

    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"--init-weights {source}: no such file")
    return load_init_weights(model, path)
