"""What train reads and writes on disk: the model folder, its checkpoint, log, curves and card."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from mura_cli.config import ModelConfig, TrainConfig
from mura_cli.errors import ModelError, MuraError
from mura_cli.modeling import CARD_FILE, CONFIG_FILE, create_model, save_model
from mura_cli.report.tables import atomic_write_bytes, write_csv, write_json

CHECKPOINT_FILE = "checkpoint.pt"


def prepare_model_dir(out_dir: Path, resume: bool) -> None:
    if resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise MuraError(f"{out_dir}: no {CHECKPOINT_FILE} to resume from")
        return
    if (out_dir / CHECKPOINT_FILE).exists() or (out_dir / CONFIG_FILE).exists():
        raise MuraError(f"{out_dir}: holds a model or an unfinished run; pass --resume to continue it "
                        "or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def save_checkpoint(state: dict, out_dir: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(out_dir / CHECKPOINT_FILE, buffer.getvalue())


def load_checkpoint(out_dir: Path) -> dict:
    """Resume state, loaded with weights_only=True: tensors and plain containers, no code."""
    try:
        return torch.load(out_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MuraError(f"{out_dir / CHECKPOINT_FILE}: cannot be resumed from ({type(exc).__name__}: {exc})") from None


def load_init_weights(model: nn.Module, path: Path) -> tuple[int, int]:
    """Load a local safetensors file into ``model``: the first conv is summed over RGB when the model
    takes one channel; classifier tensors of another shape are left at their initial values.
    Returns (tensors loaded, tensors skipped)."""
    from timm.models import adapt_input_conv

    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: --init-weights takes a .safetensors file")
    source = load_file(str(path))
    target = model.state_dict()
    loaded, skipped = {}, 0
    for key, value in source.items():
        if key not in target:
            skipped += 1
            continue
        want = target[key]
        if value.ndim == 4 and want.ndim == 4 and value.shape[1] != want.shape[1] and value.shape[0] == want.shape[0]:
            value = adapt_input_conv(want.shape[1], value)
        if value.shape != want.shape:
            skipped += 1
            continue
        loaded[key] = value
    missing = [k for k in target if k not in loaded and not k.startswith(_classifier_prefix(model))]
    if missing:
        raise ModelError(f"{path}: does not fit this architecture ({len(missing)} tensors missing, e.g. {missing[0]})")
    model.load_state_dict(loaded, strict=False)
    return len(loaded), skipped


def _classifier_prefix(model: nn.Module) -> str:
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name + "."
    return "\0"


def initial_model(config: TrainConfig, model_cfg: ModelConfig) -> nn.Module:
    if config.init_weights:
        from mura_cli import weights

        model = create_model(model_cfg)
        weights.load_initial_weights(model, model_cfg, config.init_weights)
        return model
    try:
        return create_model(model_cfg, pretrained=config.pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        if not config.pretrained:
            raise
        raise MuraError(f"--pretrained: ImageNet weights for {config.arch} could not be fetched ({exc}); "
                        "offline, pass --init-weights FILE") from None


def write_model_dir(model, model_cfg: ModelConfig, config: TrainConfig, log: pd.DataFrame, pool: pd.DataFrame,
                    val_metrics: dict, out_dir: Path) -> None:
    save_model(model, model_cfg, out_dir)
    write_csv(log, out_dir / "training_log.csv")
    write_csv(pool[["rel_path", "study_id", "patient_id", "body_part", "label", "side"]], out_dir / "split.csv")
    write_json(config.to_dict(), out_dir / "train_config.json")
    from mura_cli.report.plots import training_curves
    from mura_cli.report.pdf import create_environment

    training_curves(log, out_dir / "curves.png")
    card = create_environment().get_template("model_card.md.j2").render(
        cfg=model_cfg, train=config, log=log.to_dict("records"), val=val_metrics, pool=pool,
        counts=pool.groupby(["side", "body_part", "label"]).size().rename("n").reset_index().to_dict("records"),
        config_json=json.dumps(config.to_dict(), indent=2))
    atomic_write_bytes(out_dir / CARD_FILE, card.encode("utf-8"))
