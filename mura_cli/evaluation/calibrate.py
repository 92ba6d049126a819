"""calibrate_model(config): a model's calibration (temperature and bias), threshold (Youden's J on the
studies) and test-time augmentation fitted again on a labelled split, as `train` fits them on its
validation images, and written into the model's config.json. For a model trained without the
mirror that should be scored with it, or a model moved to another site's data.

Choose the split that is the model's validation data: fitting on a test split makes every later
figure on that split optimistic."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np

from mura_cli import __version__
from mura_cli.config import CalibrateConfig
from mura_cli.errors import InputError
from mura_cli.evaluation.evaluate import default_split
from mura_cli.evaluation.metrics import calibration, operating_points
from mura_cli.files import atomic_write_bytes
from mura_cli.inference.aggregate import aggregate_studies
from mura_cli.inference.batches import default_workers
from mura_cli.inference.device import create_runtime
from mura_cli.inference.predictor import Predictor, predict_records
from mura_cli.inputs.datasets import read_dataset
from mura_cli.inputs.datasets.tables import select_split
from mura_cli.inputs.discover import records_from_table, screen_modalities
from mura_cli.model.calibration import fit_platt, rescale
from mura_cli.model.factory import CONFIG_FILE, LoadedModel, load_model, resolve_model_dir


@dataclass(frozen=True)
class CalibrationResult:
    model_dir: str
    split: str
    images: int
    tta: str
    before: dict  # temperature, logit_bias, threshold, tta, study ece (the old calibration on these images)
    after: dict


def calibrate_model(config: CalibrateConfig) -> CalibrationResult:
    model_dir = resolve_model_dir(config.model)
    if _is_shipped(model_dir):
        raise InputError(
            f"{model_dir}: a model shipped with mura-cli; copy the folder and calibrate the copy "
            "(mura-cli models lists it; --model takes the copy's path)"
        )
    loaded = load_model(model_dir)
    table = read_dataset(config.data)
    split = config.split or default_split(table)
    rows = select_split(table, split).reset_index(drop=True)
    tta = config.tta or loaded.config.tta
    raw = replace(loaded, config=loaded.config.replace(temperature=1.0, logit_bias=0.0, tta=tta))
    probabilities = _raw_probabilities(raw, rows, config)
    labels = rows["label"].to_numpy()
    usable = np.isfinite(probabilities)
    if usable.sum() < 2 or len(set(labels[usable].astype(int))) < 2:
        raise InputError(f"{config.data} ({split}): calibration needs scored images of both classes")
    temperature, bias = fit_platt(probabilities[usable], labels[usable].astype(int))
    old = loaded.config
    before = _summary(rows, rescale(probabilities, old.temperature, old.logit_bias), old.threshold, old)
    threshold = _youden(rows, rescale(probabilities, temperature, bias), old.aggregation)
    new = old.replace(temperature=temperature, logit_bias=bias, threshold=threshold, tta=tta)
    after = _summary(rows, rescale(probabilities, temperature, bias), threshold, new)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"tool": f"mura-cli {__version__}", "at": stamp, "data": config.data, "split": split,
              "images": int(usable.sum()), "probabilities_with_tta": tta, "before": before, "after": after,
              "note": "evaluation.json and precision_checks, where present, predate this calibration"}  # fmt: skip
    new = new.replace(provenance={**old.provenance, "calibrated": record})
    text = json.dumps(new.to_dict(), indent=2) + "\n"
    atomic_write_bytes(model_dir / CONFIG_FILE, text.encode("utf-8"))
    return CalibrationResult(str(model_dir), split, int(usable.sum()), tta, before, after)


def _is_shipped(model_dir) -> bool:
    from mura_cli.resources import data_dir

    try:
        shipped = data_dir("models").resolve()
    except FileNotFoundError:
        return False
    return model_dir.resolve().is_relative_to(shipped)


def _raw_probabilities(raw: LoadedModel, rows, config: CalibrateConfig) -> np.ndarray:
    """Each image's probability at temperature 1 and bias 0 (with the chosen test-time augmentation), in fp32."""
    runtime = create_runtime(config.device, "fp32")
    predictor = Predictor(raw, runtime, heatmaps=False, engine=config.engine)
    records = screen_modalities(records_from_table(rows))
    workers = config.workers if config.workers is not None else default_workers(runtime.device)
    out = np.full(len(records), np.nan)
    for result in predict_records(predictor, records, config.batch_size, workers):
        out[result.indices] = result.probabilities
    return out


def _studies(rows, probabilities: np.ndarray, method: str, threshold: float):
    images = rows.assign(probability=probabilities, error=np.where(np.isfinite(probabilities), "", "failed"))
    studies = aggregate_studies(images, method, threshold).dropna(subset=["probability"])
    return studies["label"].astype(int).to_numpy(), studies["probability"].to_numpy(float)


def _youden(rows, probabilities: np.ndarray, method: str) -> float:
    y, p = _studies(rows, probabilities, method, 0.5)
    points = operating_points(y, p, 0.5)
    return float(points.get("youden", points["model"])["threshold"])


def _summary(rows, probabilities: np.ndarray, threshold: float, cfg) -> dict:
    y, p = _studies(rows, probabilities, cfg.aggregation, threshold)
    return {
        "temperature": float(cfg.temperature),
        "logit_bias": float(cfg.logit_bias),
        "threshold": float(threshold),
        "tta": cfg.tta,
        "study_ece": float(calibration(y, p)["ece"]),
    }
