"""What train reads and writes on disk: the model folder, its checkpoint, log, curves and card."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from mura_cli.config import ModelConfig, TrainConfig
from mura_cli.errors import MuraError
from mura_cli.files import atomic_write_bytes
from mura_cli.model.factory import CARD_FILE, CONFIG_FILE, create_model, save_model
from mura_cli.results.folder import check_out_dir
from mura_cli.results.writers import write_csv, write_json

CHECKPOINT_FILE = "checkpoint.pt"


def prepare_model_dir(out_dir: Path, resume: bool, data: str | None = None) -> None:
    """A fresh model folder, or (``resume``) one with a checkpoint to continue from."""
    check_model_dir(out_dir, resume, data)
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)


def check_model_dir(out_dir: Path, resume: bool, data: str | None = None) -> None:
    """Refuses a model folder that cannot be used (inside the data, earlier results, nothing to resume
    from) without making it."""
    check_out_dir(
        out_dir,
        (CHECKPOINT_FILE, CONFIG_FILE),
        inputs=(Path(data),) if data else (),
        resume=resume,
        can_overwrite=False,
    )
    if resume and not (out_dir / CHECKPOINT_FILE).is_file():
        raise MuraError(f"{out_dir}: no {CHECKPOINT_FILE} to resume from")


def save_checkpoint(state: dict, out_dir: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(out_dir / CHECKPOINT_FILE, buffer.getvalue())


def load_checkpoint(out_dir: Path) -> dict:
    """Resume state, loaded with weights_only=True: tensors and plain containers, no code."""
    try:
        return torch.load(out_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MuraError(
            f"{out_dir / CHECKPOINT_FILE}: cannot be resumed from ({type(exc).__name__}: {exc})"
        ) from None


def initial_model(config: TrainConfig, model_cfg: ModelConfig) -> nn.Module:
    if config.init_weights:
        from mura_cli.model import weights

        model = create_model(model_cfg)
        weights.load_initial_weights(model, model_cfg, config.init_weights)
        return model
    try:
        return create_model(model_cfg, pretrained=config.pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        if not config.pretrained:
            raise
        raise MuraError(
            f"--pretrained: ImageNet weights for {config.arch} could not be fetched ({exc}); "
            "offline, pass --init-weights FILE"
        ) from None


def write_model_dir(
    model,
    model_cfg: ModelConfig,
    config: TrainConfig,
    log: pd.DataFrame,
    pool: pd.DataFrame,
    val_metrics: dict,
    out_dir: Path,
) -> None:
    save_model(model, model_cfg, out_dir)
    write_csv(log, out_dir / "training_log.csv")
    write_csv(
        pool[["rel_path", "study_id", "patient_id", "body_part", "label", "side"]], out_dir / "split.csv"
    )
    write_json(config.to_dict(), out_dir / "train_config.json")
    from mura_cli.report.plots import training_curves
    from mura_cli.report.render import create_environment

    training_curves(log, out_dir / "curves.png")
    card = (
        create_environment()
        .get_template("model_card.md.j2")
        .render(
            cfg=model_cfg,
            train=config,
            log=log.to_dict("records"),
            val=val_metrics,
            pool=pool,
            counts=pool.groupby(["side", "body_part", "label"])
            .size()
            .rename("n")
            .reset_index()
            .to_dict("records"),
            config_json=json.dumps(config.to_dict(), indent=2),
        )
    )
    atomic_write_bytes(out_dir / CARD_FILE, card.encode("utf-8"))


# what may differ between a run and its --resume: where and how it runs, not what it learns
RESUME_FREE_FIELDS = frozenset({"resume", "workers", "device", "cache", "out_dir", "deterministic"})
# what may differ only when asked for (--resume-changes): making a run longer or more patient
RESUME_CHANGEABLE_FIELDS = frozenset({"epochs", "patience"})


def _same(then, now) -> bool:
    """Recipe values equal as plain data: a list and a tuple of the same items are the same, and so
    are None and an empty list (a single option that became a repeatable one)."""
    if isinstance(then, (list, tuple)) or isinstance(now, (list, tuple)):
        return _as_list(then) == _as_list(now)
    return then == now


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check_same_recipe(recipe: dict | None, config, out_dir: Path) -> None:
    """MuraError naming each recipe field in which ``config`` differs from the checkpoint's run (a
    checkpoint from before recipes were stored is not checked)."""
    if not recipe:
        return
    now = config.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    # a field added since the checkpoint was written is no difference while it keeps its default
    recipe = {**{k: v for k, v in now.items() if k not in recipe and v == defaults.get(k)}, **recipe}
    allowed = (
        RESUME_FREE_FIELDS | (RESUME_CHANGEABLE_FIELDS & set(config.resume_changes)) | {"resume_changes"}
    )
    if now.get("split_file") and _same(recipe.get("split_file"), now.get("split_file")):
        allowed |= {"val_fraction"}  # the split comes from the file: the fraction took no part
    differ = [
        key
        for key in sorted(set(recipe) | set(now))
        if key not in allowed and not _same(recipe.get(key), now.get(key))
    ]
    if differ:
        listed = ", ".join(f"{key} ({recipe.get(key)!r} -> {now.get(key)!r})" for key in differ)
        hint = [k for k in differ if k in RESUME_CHANGEABLE_FIELDS]
        extra = (
            f"; --resume-changes {','.join(hint)} allows {'that' if len(hint) == 1 else 'those'}"
            if hint
            else ""
        )
        raise MuraError(
            f"{out_dir}: the checkpoint was trained with another recipe: {listed}; resume with the "
            f"same options{extra}"
        )
