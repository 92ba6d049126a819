"""score_folder(config): discover -> decode and batch -> model (probabilities + heatmaps, one pass)
-> study aggregation -> images.csv, studies.csv, run.json, report.pdf."""

from __future__ import annotations

import csv
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from mura_cli import __version__
from mura_cli.aggregate import aggregate_studies
from mura_cli.choices import ExitCode
from mura_cli.config import ScoreConfig
from mura_cli.data import default_workers
from mura_cli.device import create_runtime
from mura_cli.errors import InputError, ReportError
from mura_cli.io.discover import ImageRecord, discover
from mura_cli.modeling import load_model, resolve_model_dir
from mura_cli.predict import IMAGE_COLUMNS, BatchResult, Predictor, predict_records
from mura_cli.report.images import Thumbnails, make_thumbnails
from mura_cli.report.tables import write_csv, write_json

RESULT_FILES = ("images.csv", "studies.csv", "run.json", "report.pdf")
PARTIAL_IMAGES = "images.partial.csv"


@dataclass(frozen=True)
class ProgressEvent:
    """What the library tells a caller while it works (the CLI draws it; the library prints nothing)."""

    stage: str  # 'start' | 'images' | 'report'
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class ScoreResult:
    out_dir: Path
    images: pd.DataFrame
    studies: pd.DataFrame
    run: dict
    files: dict[str, Path]
    exit_code: ExitCode
    report_error: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Refuse to replace earlier results unless asked to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    existing = [name for name in (*RESULT_FILES, PARTIAL_IMAGES) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out_dir}: holds results of an earlier run ({', '.join(existing)}); "
                         "pass --overwrite to replace them or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out_dir / name).unlink()
    return out_dir


def _thumbnails(result: BatchResult, k: int) -> Thumbnails | None:
    if result.errors[k]:
        return None
    heat = result.heatmaps[k] if result.heatmaps is not None else None
    return make_thumbnails(result.canvases[k, 0].numpy(), result.geometry(k), heat)


class _PartialWriter:
    """images.partial.csv grows batch by batch, so a killed run keeps what it finished."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=IMAGE_COLUMNS, lineterminator="\n")
        self.writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows({k: ("" if pd.isna(v) else v) for k, v in row.items()} for row in rows)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _run_model(config, discovery, loaded, runtime, workers, out_dir, notify):
    """The one pass over the images: rows for images.csv and, with --pdf, thumbnails."""
    records = discovery.images
    predictor = Predictor(loaded, runtime, heatmaps=config.heatmaps, keep_maps=config.pdf)
    rows, visuals, done = [], {}, 0
    partial = _PartialWriter(out_dir / PARTIAL_IMAGES)
    try:
        for result in predict_records(predictor, records, config.batch_size, workers):
            batch_rows = [result.image_row(records[i], k) for k, i in enumerate(result.indices)]
            if config.pdf:
                visuals.update({i: _thumbnails(result, k) for k, i in enumerate(result.indices)})
            partial.write(batch_rows)
            rows.extend(batch_rows)
            done += len(batch_rows)
            notify(ProgressEvent("images", done, len(records)))
    finally:
        partial.close()
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS), visuals, predictor.heatmap_method


def _studies(images: pd.DataFrame, records: tuple[ImageRecord, ...], method: str, threshold: float):
    extra = pd.DataFrame({"patient_id": [r.patient_id for r in records],
                          "label": pd.array([r.label for r in records], dtype="Int64")})
    return aggregate_studies(pd.concat([images, extra], axis=1), method, threshold)


def _run_record(config, loaded, runtime, workers, heatmap_method, discovery, images, studies, method,
                threshold, started, seconds_model) -> dict:
    """What run.json holds: versions, configuration, model identity, runtime choices, counts, timings."""
    failed = int((images["error"] != "").sum())
    return {
        "tool": {"name": "mura-cli", "version": __version__, "python": platform.python_version(),
                 "torch": torch.__version__},
        "started": started,
        "config": config.to_dict(),
        "model": {"name": loaded.config.name, "path": str(loaded.path.resolve()),
                  "weights_sha256": loaded.weights_sha256, "config": loaded.config.to_dict()},
        "runtime": {"device": str(runtime.device), "precision": runtime.precision, "reason": runtime.reason,
                    "workers": workers, "batch_size": config.batch_size, "heatmap_method": heatmap_method},
        "aggregation": method,
        "threshold": threshold,
        "counts": {"images": len(images), "scored": len(images) - failed, "failed": failed,
                   "studies": len(studies), "skipped_files": discovery.skipped,
                   "positive_studies": int((studies["prediction"] == 1).sum()),
                   "negative_studies": int((studies["prediction"] == 0).sum())},
        "seconds": {"model": round(seconds_model, 3),
                    "images_per_second": round(len(images) / max(seconds_model, 1e-9), 2)},
    }


def score_folder(config: ScoreConfig, notify: Callable[[ProgressEvent], None] | None = None,
                 overwrite: bool = False) -> ScoreResult:
    """Score every image below ``config.input``; write the results under ``config.out_dir``."""
    notify = notify or (lambda event: None)
    started, clock = _now(), time.perf_counter()
    loaded = load_model(resolve_model_dir(config.model))
    runtime = create_runtime(config.device, config.precision)
    discovery = discover(config.input)
    if not discovery.images:
        raise InputError(f"{discovery.root}: no PNG, JPEG or DICOM images found "
                         f"({discovery.skipped} other files skipped)")
    out_dir = prepare_out_dir(Path(config.out_dir).expanduser(), overwrite)
    workers = config.workers if config.workers is not None else default_workers(runtime.device)
    notify(ProgressEvent("start", 0, len(discovery.images),
                         f"Scoring {len(discovery.images)} images with {loaded.config.name} on {runtime.reason}"))
    t_model = time.perf_counter()
    images, visuals, heatmap_method = _run_model(config, discovery, loaded, runtime, workers, out_dir, notify)
    seconds_model = time.perf_counter() - t_model
    threshold = config.threshold if config.threshold is not None else loaded.config.threshold
    method = config.aggregate or loaded.config.aggregation
    studies = _studies(images, discovery.images, method, threshold)
    files = {"images.csv": write_csv(images, out_dir / "images.csv"),
             "studies.csv": write_csv(studies, out_dir / "studies.csv")}
    (out_dir / PARTIAL_IMAGES).unlink(missing_ok=True)
    failures = [(p, e) for p, e in zip(images["path"], images["error"]) if e]
    run = _run_record(config, loaded, runtime, workers, heatmap_method, discovery, images, studies, method,
                      threshold, started, seconds_model)
    report_error = ""
    if config.pdf and run["counts"]["scored"]:
        notify(ProgressEvent("report", 0, len(studies), f"Writing the PDF report ({len(studies)} studies)"))
        t_report = time.perf_counter()
        try:
            from mura_cli.report.pdf import render_score_report

            files["report.pdf"] = render_score_report(run, images, studies, visuals, out_dir / "report.pdf")
        except ReportError as exc:
            report_error = str(exc)
        run["seconds"]["report"] = round(time.perf_counter() - t_report, 3)
    run["finished"] = _now()
    run["seconds"]["total"] = round(time.perf_counter() - clock, 3)
    run["report_error"] = report_error
    files["run.json"] = write_json(run, out_dir / "run.json")
    scored = len(images) - len(failures)
    code = ExitCode.FATAL if scored == 0 else ExitCode.PARTIAL if failures or report_error else ExitCode.OK
    return ScoreResult(out_dir, images, studies, run, files, code, report_error, failures)
