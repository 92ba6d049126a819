"""Models: create (timm), save and load (config.json + model.safetensors, never pickle)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mura_cli import choices, environment
from mura_cli.config import ModelConfig
from mura_cli.errors import ModelError
from mura_cli.model.pooling import use_cell_pooling
from mura_cli.resources import data_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    path: Path
    weights_sha256: str


def create_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """A timm model with one output logit (P(positive class) after a sigmoid)."""
    extra = {"output_stride": cfg.output_stride} if cfg.output_stride != 32 else {}
    try:
        model = timm.create_model(
            cfg.architecture, pretrained=pretrained, num_classes=1, in_chans=cfg.input_size[0], **extra
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"unknown architecture '{cfg.architecture}' (not a timm model name)") from None
        raise
    if cfg.pooling != "lse":
        return model
    return use_cell_pooling(model, cfg.architecture, cfg.pooling_sharpness)


def save_model(model: nn.Module, cfg: ModelConfig, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "architecture": cfg.architecture}
    )
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory / WEIGHTS_FILE, 0o666 & ~mask)  # an ordinary, readable file (a wheel keeps its mode)
    text = json.dumps(cfg.to_dict(), indent=2) + "\n"
    (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
    return directory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_problems(expected: dict, found: dict) -> list[str]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} of other shape (e.g. {k}: {tuple(found[k].shape)}, "
            f"expected {tuple(expected[k].shape)})"
        )
    return problems


def _value_problems(expected: dict, found: dict) -> list[str]:
    """Tensors of another dtype than the architecture's (a relabelled I32 tensor, say) or with NaN/Inf."""
    for key, tensor in found.items():
        if tensor.dtype != expected[key].dtype:
            return [
                f"tensor {key} is {str(tensor.dtype).replace('torch.', '')}, expected "
                f"{str(expected[key].dtype).replace('torch.', '')}"
            ]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return [f"tensor {key} holds NaN or infinite values"]
    return []


def load_model(directory: str | Path) -> LoadedModel:
    """Load a model folder; every inconsistency is a ModelError saying what is wrong."""
    directory = Path(directory)
    cfg = ModelConfig.load(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file not found (a model folder needs {WEIGHTS_FILE})")
    model = create_model(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    problems = _state_problems(model.state_dict(), state) or _value_problems(model.state_dict(), state)
    if problems:
        raise ModelError(f"{weights}: weights do not match '{cfg.architecture}': " + ", ".join(problems))
    model.load_state_dict(state, strict=True)
    model.eval()
    name = cfg.name or directory.name
    return LoadedModel(model, cfg.replace(name=name), directory, file_sha256(weights))


def model_search_dirs() -> list[Path]:
    """User models (``$MURA_CLI_MODELS``) first, then the models shipped with mura-cli."""
    user = environment.current().models_dir
    dirs = [user] if user else []
    try:
        dirs.append(data_dir("models"))
    except FileNotFoundError:
        pass
    return dirs


def resolve_model_dir(name_or_path: str | None) -> Path:
    """A model folder from a path or a model name; None means the default model."""
    if name_or_path:
        candidate = Path(name_or_path).expanduser()
        if candidate.is_dir():
            return candidate
    name = name_or_path or choices.DEFAULT_MODEL_NAME
    for folder in model_search_dirs():
        if (folder / name / CONFIG_FILE).is_file():
            return folder / name
    if name_or_path:
        raise ModelError(
            f"model '{name_or_path}' not found: give a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, "
            f"or the name of a model in {', '.join(str(d) for d in model_search_dirs())}"
        )
    raise ModelError(
        f"no default model '{name}' is installed yet: pass --model DIR, a folder with {CONFIG_FILE} and "
        f"{WEIGHTS_FILE} (for example one written by `mura-cli train`), or put such a folder under "
        f"${environment.MODELS_DIR_ENV}/{name}"
    )
