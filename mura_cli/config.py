"""Frozen configurations: the model's own (travels with its weights) and the run's."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mura_cli import choices
from mura_cli.errors import ModelError

MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to run a model; stored as ``config.json`` beside ``model.safetensors``."""

    architecture: str  # a timm model name
    input_size: tuple[int, int, int] = (3, 224, 224)  # channels, height, width
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    threshold: float = 0.5
    resize: str = "letterbox"  # keep aspect ratio and pad, or stretch to the input size
    aggregation: str = "mean"  # image probabilities -> study probability
    output_stride: int = 32  # input pixels per heatmap cell (16: timm's dilated last stages, finer maps)
    pooling: str = "avg"  # avg (timm's head) or lse (cell logits pooled by log-mean-exp, mura_cli.pooling)
    temperature: float = 1.0  # probability = sigmoid(logit / temperature + logit_bias), fitted on validation
    logit_bias: float = 0.0
    # device kind -> precision -> measured deviation from fp32 (see precision_check.py); `auto` uses a
    # reduced precision only where its check passed
    precision_checks: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    # what the single output logit means: P(positive_class)
    positive_class: str = "abnormal"
    negative_class: str = "normal"
    task: str = "Musculoskeletal radiograph: abnormal (1) or normal (0)"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT_VERSION

    def __post_init__(self) -> None:
        problems = list(_model_config_problems(self))
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"invalid model config: unknown keys {unknown}")
        if "architecture" not in data:
            raise ModelError("invalid model config: 'architecture' (a timm model name) is missing")
        problems = list(_type_problems(data))
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))
        values = dict(data)
        for key in ("input_size", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        from mura_cli.inputs.sniff import regular_file_problem

        try:
            problem = regular_file_problem(Path(path))
            if problem:
                raise ModelError(f"{path}: {problem}")
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{path}: config.json not found") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_NUMBER = (int, float)
_CONFIG_TYPES = {
    "architecture": str,
    "threshold": _NUMBER,
    "resize": str,
    "aggregation": str,
    "output_stride": int,
    "pooling": str,
    "temperature": _NUMBER,
    "logit_bias": _NUMBER,
    "precision_checks": dict,
    "name": str,
    "positive_class": str,
    "negative_class": str,
    "task": str,
    "provenance": dict,
    "format_version": int,
}
MAX_INPUT_SIDE = 1024  # a 1024 x 1024 canvas is 4 MiB per image in uint8; larger is an error, not a model


def _type_problems(data: dict):
    """JSON values of the wrong type, named one by one (before any arithmetic on them)."""
    for key, kind in _CONFIG_TYPES.items():
        value = data.get(key)
        if key in data and (not isinstance(value, kind) or isinstance(value, bool)):
            yield f"'{key}' has the wrong type ({type(value).__name__})"
    for key in ("input_size", "mean", "std"):
        value = data.get(key)
        if key not in data:
            continue
        element = int if key == "input_size" else _NUMBER
        if not isinstance(value, list) or not all(
            isinstance(v, element) and not isinstance(v, bool) for v in value
        ):
            kind = "integers" if key == "input_size" else "numbers"
            yield f"'{key}' must be a list of {kind}"


def _model_config_problems(cfg: ModelConfig):
    if not isinstance(cfg.architecture, str) or not cfg.architecture:
        yield "'architecture' must be a timm model name"
    elif ":" in cfg.architecture or "/" in cfg.architecture:
        yield (
            f"'architecture' {cfg.architecture!r} names a hub or URL model; a model folder is loaded offline "
            "from its own weights, so only plain timm architecture names are accepted"
        )
    size = cfg.input_size
    if len(size) != 3 or size[0] not in (1, 3) or min(size[1:]) < 16 or max(size[1:]) > MAX_INPUT_SIDE:
        yield f"'input_size' must be [1 or 3, height, width] with sides in 16..{MAX_INPUT_SIDE}, got {list(size)}"
    channels = size[0] if len(size) == 3 else 3
    if len(cfg.mean) != channels or len(cfg.std) != channels:
        yield f"'mean' and 'std' need {channels} values each"
    if any(not math.isfinite(s) or s <= 0 for s in cfg.std):
        yield "'std' values must be positive"
    if any(not math.isfinite(m) for m in cfg.mean):
        yield "'mean' values must be finite"
    if not (isinstance(cfg.threshold, (int, float)) and 0.0 <= cfg.threshold <= 1.0):
        yield f"'threshold' must be within [0, 1], got {cfg.threshold}"
    if cfg.resize not in choices.RESIZE_POLICIES:
        yield f"'resize' must be one of {list(choices.RESIZE_POLICIES)}"
    if cfg.aggregation not in choices.AGGREGATIONS:
        yield f"'aggregation' must be one of {list(choices.AGGREGATIONS)}"
    if cfg.pooling not in choices.POOLINGS:
        yield f"'pooling' must be one of {list(choices.POOLINGS)}"
    if cfg.output_stride not in (8, 16, 32):
        yield f"'output_stride' must be 8, 16 or 32, got {cfg.output_stride}"
    if not (
        isinstance(cfg.temperature, (int, float)) and math.isfinite(cfg.temperature) and cfg.temperature > 0
    ):
        yield f"'temperature' must be a positive number, got {cfg.temperature}"
    if not (isinstance(cfg.logit_bias, (int, float)) and math.isfinite(cfg.logit_bias)):
        yield f"'logit_bias' must be a finite number, got {cfg.logit_bias}"
    if cfg.format_version > MODEL_FORMAT_VERSION:
        yield f"format_version {cfg.format_version} is newer than this mura-cli understands"


def _check_modalities(codes) -> None:
    bad = [m for m in codes if not m.strip().isalnum()]
    if bad:
        raise ValueError(f"allow_modality: {bad[0]!r} is not a DICOM modality code (e.g. RF, XA, MG, OT)")


@dataclass(frozen=True)
class ScoreConfig:
    """One `score` run. Written to ``run.json`` next to the results."""

    input: str
    out_dir: str = choices.DEFAULT_OUT_DIR
    model: str | None = None  # folder or shipped/user model name; None: the default model
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int | None = None  # None: chosen for the device
    aggregate: str | None = None  # None: the model's
    threshold: float | None = None  # None: the model's
    heatmaps: bool = True
    pdf: bool = False
    include_phi: bool = False  # add DICOM PatientID to the patient_id column (off: no demographics anywhere)
    shard: str | None = None  # "I/N": score only the studies whose stable hash falls in share I of N
    tta: str = "none"  # test-time augmentation: none | flip (average with the left-right mirror)
    allow_modality: tuple[str, ...] = ()  # DICOM modalities scored besides CR and DX (e.g. RF, OT)

    def __post_init__(self) -> None:
        if self.tta not in choices.TTA_MODES:
            raise ValueError(f"tta must be one of {list(choices.TTA_MODES)}")
        _check_modalities(self.allow_modality)
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be 0 or more")
        if self.aggregate is not None and self.aggregate not in choices.AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {list(choices.AGGREGATIONS)}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        if self.precision not in choices.PRECISIONS:
            raise ValueError(f"precision must be one of {list(choices.PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One `train` run. Written to ``train_config.json`` in the model folder."""

    data: str
    out_dir: str
    arch: str = "efficientnet_lite0"
    img_size: int = 320
    in_chans: int = 1  # grayscale radiographs: one input channel, pretrained first conv summed over RGB
    resize: str = "letterbox"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 5e-4  # all layers
    head_lr: float = 1e-3  # the classifier alone, during --freeze-epochs
    weight_decay: float = 1e-4
    freeze_epochs: int = 0
    scheduler: str = "cosine"  # cosine | plateau
    patience: int = 5  # epochs without improvement before stopping
    monitor: str = "auroc"  # auroc | kappa (study level, validation)
    class_weights: str = "per-part"  # none | global | per-part
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    pretrained: bool = False  # ImageNet weights through timm's hub (needs network)
    init_weights: str | None = None  # a local weights file (safetensors) or a known offline source
    output_stride: int = 32  # 16: finer heatmaps (timm's output_stride), more compute in the last stages
    pooling: str = "avg"  # lse: the image logit is a smooth maximum of the heatmap's cell logits
    boxes: str | None = None  # lesion boxes CSV (as `evaluate --boxes`): supervise the heatmap of positives
    box_loss_weight: float = 1.0
    box_grow: float = 0.25  # boxes grown by this share of their size on every side for the box loss
    box_loss_from: int = (
        0  # first epoch (0-based) with the box loss; the best checkpoint is chosen from then on
    )
    flip: bool = True
    rotate: float = 10.0  # degrees (the MURA paper used 30; 10 validated better, benchmarks/RECIPE.md)
    brightness: float = 0.2
    contrast: float = 0.2
    scale: float = 0.1
    resume: bool = False
    resume_changes: tuple[str, ...] = ()  # recipe fields --resume may change (epochs, patience)
    deterministic: bool | None = None  # None: on for the CPU, off on GPUs (cuDNN autotuning is faster)
    cache: bool = True  # decode each image once into a memory-mapped uint8 cache (see mura_cli.cache)
    name: str = ""
    positive_class: str = "abnormal"  # what the model's probability is the probability of
    negative_class: str = "normal"
    task: str = "Musculoskeletal radiograph: abnormal (1) or normal (0)"

    def __post_init__(self) -> None:
        if self.scheduler not in ("cosine", "plateau"):
            raise ValueError("scheduler must be cosine or plateau")
        if self.monitor not in ("auroc", "kappa"):
            raise ValueError("monitor must be auroc or kappa")
        if self.class_weights not in ("none", "global", "per-part"):
            raise ValueError("class_weights must be none, global or per-part")
        if self.in_chans not in (1, 3):
            raise ValueError("in_chans must be 1 or 3")
        if not 0 <= self.freeze_epochs <= self.epochs or self.epochs < 1:
            raise ValueError("need epochs >= 1 and 0 <= freeze_epochs <= epochs")
        if self.precision not in choices.PRECISIONS:
            raise ValueError(f"precision must be one of {list(choices.PRECISIONS)}")
        if self.output_stride not in (16, 32):
            raise ValueError("output_stride must be 16 or 32")
        if self.pooling not in choices.POOLINGS:
            raise ValueError(f"pooling must be one of {list(choices.POOLINGS)}")
        if self.box_loss_weight < 0 or self.box_grow < 0:
            raise ValueError("box_loss_weight and box_grow must be 0 or more")
        bad = sorted(set(self.resume_changes) - {"epochs", "patience"})
        if bad:
            raise ValueError(f"resume_changes may name epochs and patience, not {', '.join(bad)}")
        if not 0 <= self.box_loss_from < self.epochs:
            raise ValueError("box_loss_from must be an epoch of the run (0 to epochs - 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    """One `evaluate` run. Written to ``eval_config.json`` next to the metrics."""

    data: str
    out_dir: str
    model: str | None = None
    split: str | None = None  # None: 'valid' if present, else 'test', else every row
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    boxes: str | None = None  # CSV: image_id or path, x0, y0, x1, y1
    bootstrap: int = 1000
    seed: int = 0
    target_sensitivity: float = 0.9
    pdf: bool = False
    tta: str = "none"  # none | flip
    pointing_tolerance: float = 0.04  # tolerant pointing: boxes grown by this share of the image's long side
    deletion: bool = True  # with boxes: the deletion test (boxes filled vs elsewhere filled)
    allow_modality: tuple[str, ...] = ()  # DICOM modalities evaluated besides CR and DX (e.g. RF, OT)

    def __post_init__(self) -> None:
        if self.tta not in choices.TTA_MODES:
            raise ValueError(f"tta must be one of {list(choices.TTA_MODES)}")
        _check_modalities(self.allow_modality)
        if not 0.0 <= self.pointing_tolerance < 1.0:
            raise ValueError("pointing_tolerance must be within [0, 1)")
        if self.bootstrap < 1:
            raise ValueError("bootstrap must be at least 1")
        if not 0.0 < self.target_sensitivity < 1.0:
            raise ValueError("target_sensitivity must be between 0 and 1")
        if self.precision not in choices.PRECISIONS:
            raise ValueError(f"precision must be one of {list(choices.PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
