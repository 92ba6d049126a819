"""score_folder(config): discover -> decode and batch -> model (probabilities + heatmaps, one pass)
-> study aggregation -> images.csv, studies.csv, run.json, report.pdf."""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mura_cli import __version__, environment
from mura_cli.choices import ExitCode
from mura_cli.config import ScoreConfig
from mura_cli.errors import InputError, OutputError, ReportError, is_write_failure, write_failure_message
from mura_cli.inference.aggregate import aggregate_studies
from mura_cli.inference.batches import default_workers
from mura_cli.inference.device import create_runtime
from mura_cli.inference.predictor import IMAGE_COLUMNS, BatchResult, Predictor, predict_records
from mura_cli.inputs.discover import ImageRecord, discover
from mura_cli.inputs.names import printable_name
from mura_cli.model.factory import load_model, resolve_model_dir
from mura_cli.report.images import Thumbnails, make_thumbnails
from mura_cli.report.thumbnailer import Thumbnailer, thumbnail_threads
from mura_cli.report.thumbstore import ThumbStore
from mura_cli.results import lock as folder_lock
from mura_cli.results.folder import RESULT_FILES, check_out_dir, check_out_location, read_images_csv
from mura_cli.results.record import (
    Counts,
    ModelIdentity,
    RunRecord,
    Runtime,
    Tool,
    read_run_record,
    write_run_record,
)
from mura_cli.results.shard import parse_shard
from mura_cli.results.writers import write_csv
from mura_cli.wording import counted


@dataclass(frozen=True)
class ProgressEvent:
    """What the library tells a caller while it works (the CLI draws it; the library prints nothing)."""

    stage: str  # 'notice' | 'start' | 'images' | 'report'
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class ScoreResult:
    out_dir: Path
    images: pd.DataFrame
    studies: pd.DataFrame
    run: RunRecord
    files: dict[str, Path]
    exit_code: ExitCode
    report_error: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_out_dir(
    out_dir: Path,
    overwrite: bool,
    resume: bool,
    weights_sha256: str,
    input_root: Path | None = None,
    inputs: tuple[Path, ...] = (),
    scoring: dict | None = None,
) -> pd.DataFrame:
    """Refuse to replace earlier results unless asked to; with ``resume``, return the rows an
    interrupted run scored (checked to come from the same model and input folder; failed rows are
    left out, so that they are tried again)."""
    existing = check_out_dir(out_dir, RESULT_FILES, inputs=inputs, overwrite=overwrite, resume=resume)
    if resume:
        return _finished_rows(out_dir, weights_sha256, input_root, scoring or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    if existing:  # --overwrite: set aside, deleted only once the new run has finished (score_folder)
        previous = out_dir / PREVIOUS_FOLDER
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        for name in existing:
            os.replace(out_dir / name, previous / name)
    ThumbStore(out_dir).clear()
    return pd.DataFrame(columns=IMAGE_COLUMNS)


def scoring_settings(config: ScoreConfig, loaded) -> dict:
    """What makes an image's row besides the weights: calibration, test-time augmentation, the input
    canvas, heatmap cells and how studies are grouped."""
    cfg = loaded.config
    return {
        "temperature": cfg.temperature,
        "logit_bias": cfg.logit_bias,
        "tta": config.tta or cfg.tta,
        "input_size": list(cfg.input_size),
        "resize": cfg.resize,
        "output_stride": cfg.output_stride,
        "pooling": cfg.pooling,
        "pooling_sharpness": cfg.pooling_sharpness,
        "heatmaps": config.heatmaps,
        "group_by": config.group_by,
    }


def _finished_rows(
    out_dir: Path, weights_sha256: str, input_root: Path | None, scoring: dict
) -> pd.DataFrame:
    if not (out_dir / "images.csv").is_file():
        raise InputError(f"{out_dir}: nothing to resume (no images.csv)")
    try:
        record = read_run_record(out_dir)
    except InputError as exc:
        raise InputError(f"{exc}; cannot check what made images.csv") from None
    earlier = record.model.weights_sha256
    if earlier != weights_sha256:
        raise InputError(
            f"{out_dir}: its results come from another model (weights sha256 {earlier[:12]}...); "
            "resume with the same --model, or use --overwrite"
        )
    differ = sorted(k for k in record.scoring if k in scoring and record.scoring[k] != scoring[k])
    if differ:
        raise InputError(
            f"{out_dir}: its results were scored with other settings ({', '.join(differ)}); resume with "
            "the same model configuration and options, or use --overwrite"
        )
    earlier_root = record.input_root
    # run.json holds names as written (mura_cli.inputs.names): compare like with like
    if input_root is not None and earlier_root and earlier_root != printable_name(str(input_root)):
        raise InputError(
            f"{out_dir}: its results come from another input ({earlier_root}); resume with the same "
            "input, or use --overwrite"
        )
    rows = read_images_csv(out_dir / "images.csv").drop_duplicates("path", keep="last")
    return rows[rows["error"].fillna("") == ""].reset_index(drop=True)


def unchanged_rows(done: pd.DataFrame, records: tuple[ImageRecord, ...]) -> tuple[pd.DataFrame, int]:
    """The resumed rows whose file has the size and modification time it had when scored, and how many
    were dropped because their file changed (or its row predates fingerprints): those are scored again."""
    if done.empty:
        return done, 0
    now = {r.rel_path: (r.file_bytes, r.file_mtime_ns) for r in records}
    was = [
        None if pd.isna(size) or pd.isna(mtime) else (int(size), int(mtime))
        for size, mtime in zip(done["file_bytes"], done["file_mtime_ns"])
    ]
    changed = [path in now and stat != now[path] for path, stat in zip(done["path"], was)]
    # rows of files no longer found are kept here and dropped with the other absent paths in _run_model
    return done[[not c for c in changed]].reset_index(drop=True), sum(changed)


def _thumbnails(result: BatchResult, k: int) -> Thumbnails | None:
    if result.errors[k]:
        return None
    heat = result.heatmaps[k] if result.heatmaps is not None else None
    return make_thumbnails(result.canvases[k, 0].numpy(), result.geometry(k), heat)


class _RowWriter:
    """images.csv grows batch by batch (flushed to disk), so a killed run keeps what it finished."""

    def __init__(self, path: Path, done: pd.DataFrame):
        self.handle = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=IMAGE_COLUMNS, lineterminator="\n")
        self.writer.writeheader()
        self.write(done.to_dict("records"))

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _cell(value):
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def _run_model(config, records, predictor, runtime, workers, out_dir, done, notify):
    """The one pass over the images not yet done: rows for images.csv and, with --pdf, thumbnails."""
    finished = set(done["path"])
    todo = [r for r in records if r.rel_path not in finished]
    thumbnailer = Thumbnailer(
        ThumbStore(out_dir) if _keeps_thumbnails(config) else None, thumbnail_threads(runtime.device.type)
    )
    rows = done.to_dict("records")
    writer = _RowWriter(out_dir / "images.csv", done)

    def keep(batch_rows: list[dict]) -> None:
        writer.write(batch_rows)
        rows.extend(batch_rows)
        notify(ProgressEvent("images", len(rows), len(records)))

    try:
        for result in predict_records(predictor, todo, config.batch_size, workers):
            batch_rows = [result.image_row(todo[i], k) for k, i in enumerate(result.indices)]
            for row in batch_rows:
                row["probability"] = round(row["probability"], 6)  # what images.csv holds is what counts
            makers = [
                (todo[i].rel_path, functools.partial(_thumbnails, result, k))
                for k, i in enumerate(result.indices)
            ]
            for ready in thumbnailer.add(batch_rows, makers):
                keep(ready)
        for ready in thumbnailer.drain():
            keep(ready)
    finally:
        thumbnailer.close()
        writer.close()
    order = {r.rel_path: n for n, r in enumerate(records)}
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    table = table[table["path"].isin(order)].sort_values("path", key=lambda p: p.map(order), kind="stable")
    return table.reset_index(drop=True)


def _studies(images: pd.DataFrame, records: tuple[ImageRecord, ...], method: str, threshold: float):
    by_path = {r.rel_path: r for r in records}
    extra = pd.DataFrame(
        {
            "patient_id": [by_path[p].patient_id for p in images["path"]],
            "label": pd.array([by_path[p].label for p in images["path"]], dtype="Int64"),
        }
    )
    return aggregate_studies(pd.concat([images, extra], axis=1), method, threshold)


def _run_record(
    config,
    loaded,
    runtime,
    workers,
    predictor,
    discovery,
    images,
    studies,
    method,
    threshold,
    started,
    seconds_model,
) -> RunRecord:
    """What run.json holds: versions, configuration, model identity, runtime choices, counts, timings."""
    return replace(
        _start_record(config, loaded, started, discovery.root, discovery.notices),
        tool=Tool(version=__version__, python=platform.python_version(), torch=torch.__version__),
        input_fingerprint=discovery.fingerprint,
        model=ModelIdentity(
            loaded.config.name, loaded.weights_sha256, str(loaded.path.resolve()), loaded.config.to_dict()
        ),
        runtime=Runtime(
            device=str(runtime.device),
            precision=runtime.precision,
            reason=runtime.reason,
            workers=workers,
            batch_size=config.batch_size,
            heatmap_method=predictor.heatmap_method,
            engine=predictor.engine.to_dict(),
            glibc_tunables=environment.current().glibc_tunables,
            tta=predictor.tta,
        ),
        aggregation=method,
        threshold=threshold,
        counts=Counts.of(images, studies, discovery.skipped),
        seconds={
            "model": round(seconds_model, 3),
            "images_per_second": round(len(images) / max(seconds_model, 1e-9), 2),
        },
    )


def _start_record(
    config: ScoreConfig, loaded, started: str, input_root: Path, notices: tuple[str, ...] = ()
) -> RunRecord:
    """Written before the first image, so that a later --resume can check which model made the rows."""
    return RunRecord(
        status="running",
        started=started,
        tool=Tool(version=__version__),
        config=config.to_dict(),
        model=ModelIdentity(loaded.config.name, loaded.weights_sha256),
        input_root=str(input_root),
        notices=notices,
        scoring=scoring_settings(config, loaded),
    )


def score_folder(
    config: ScoreConfig,
    notify: Callable[[ProgressEvent], None] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> ScoreResult:
    """Score every image below ``config.input``; write the results under ``config.out_dir``.

    With ``resume``, images already in the folder's images.csv (from an interrupted run of the same
    model) are kept and only the rest are scored; the outcome equals an uninterrupted run."""
    notify = notify or (lambda event: None)
    started, clock = _now(), time.perf_counter()
    loaded = load_model(resolve_model_dir(config.model))
    runtime = create_runtime(config.device, config.precision, loaded.config.precision_checks)
    discovery = discover(
        config.input,
        include_phi=config.include_phi,
        allow_modalities=config.allow_modality,
        group_by=config.group_by,
    )
    for notice in discovery.notices:
        notify(ProgressEvent("notice", message=notice))
    shard = parse_shard(config.shard) if config.shard else None
    if shard is not None:
        discovery = replace(discovery, images=tuple(r for r in discovery.images if shard.holds(r.study_id)))
    if not discovery.images and shard is not None:
        raise InputError(f"shard {shard} of {config.input} holds no studies (fewer studies than shards?)")
    if not discovery.images:
        raise InputError(
            f"{discovery.root}: no PNG, JPEG or DICOM images found ({discovery.skipped} other files skipped)"
        )
    out_dir = Path(config.out_dir).expanduser()
    check_out_location(out_dir, inputs=(Path(config.input),))
    try:
        with folder_lock.hold(out_dir):
            result = _score_into(
                config, out_dir, loaded, runtime, discovery, shard, overwrite, resume, notify, started, clock
            )
    except OSError as exc:
        if not is_write_failure(exc, out_dir):
            raise
        raise _output_failed(out_dir, exc, restore=overwrite) from None
    shutil.rmtree(out_dir / PREVIOUS_FOLDER, ignore_errors=True)  # replaced results go once the run succeeded
    return result


PREVIOUS_FOLDER = ".previous-results"  # what --overwrite replaces, kept until the new run has finished


def _output_failed(out_dir: Path, exc: OSError, restore: bool) -> OutputError:
    """Mark run.json failed (where the disk still allows it), put back the results that --overwrite was
    replacing, and say in one line what could not be written and why."""
    message = write_failure_message(exc, out_dir)
    with contextlib.suppress(OSError, InputError):
        record = read_run_record(out_dir)
        write_run_record(replace(record, status="failed", error=message, finished=_now()), out_dir)
    previous = out_dir / PREVIOUS_FOLDER
    if restore and previous.is_dir():
        ThumbStore(out_dir).clear()
        with contextlib.suppress(OSError):
            for name in RESULT_FILES:  # what the failed run wrote goes, what it replaced comes back
                if not (previous / name).exists():
                    (out_dir / name).unlink(missing_ok=True)
            for old in previous.iterdir():
                os.replace(old, out_dir / old.name)
            previous.rmdir()
        return OutputError(f"{message}; the earlier results are back in place")
    if not (out_dir / "images.csv").is_file():  # failed before the first row: nothing to resume
        return OutputError(
            f"{message}; nothing was scored: make room (or fix the permission) and run it again"
        )
    return OutputError(
        f"{message}; the images finished so far are kept in images.csv: make room (or fix the "
        "permission) and run the same command with --resume"
    )


def _score_into(
    config, out_dir, loaded, runtime, discovery, shard, overwrite, resume, notify, started, clock
):
    """The part of score_folder that writes into the (locked) results folder."""
    done, changed = unchanged_rows(
        prepare_out_dir(
            out_dir,
            overwrite,
            resume,
            loaded.weights_sha256,
            discovery.root,
            inputs=(Path(config.input),),
            scoring=scoring_settings(config, loaded),
        ),
        discovery.images,
    )
    if _keeps_thumbnails(config) and len(done):  # rows scored without --pdf/--html have no thumbnails: again
        store = ThumbStore(out_dir)
        done = done[[store.has(path) for path in done["path"]]].reset_index(drop=True)
    write_run_record(_start_record(config, loaded, started, discovery.root, discovery.notices), out_dir)
    workers = config.workers if config.workers is not None else default_workers(runtime.device)
    predictor = Predictor(
        loaded,
        runtime,
        heatmaps=config.heatmaps,
        keep_maps=_keeps_thumbnails(config),
        tta=config.tta,
        engine=config.engine,
    )
    notify(
        ProgressEvent(
            "start",
            len(done),
            len(discovery.images),
            f"Scoring {counted(len(discovery.images), 'image')} with {loaded.config.name} on {runtime.reason}; "
            f"engine: {predictor.engine.reason}"
            + (f" ({len(done)} already done, resuming)" if len(done) else "")
            + (f"; {changed} changed since they were scored, scored again" if changed else ""),
        )
    )
    t_model = time.perf_counter()
    images = _run_model(config, discovery.images, predictor, runtime, workers, out_dir, done, notify)
    seconds_model = time.perf_counter() - t_model
    threshold = config.threshold if config.threshold is not None else loaded.config.threshold
    method = config.aggregate or loaded.config.aggregation
    studies = _studies(images, discovery.images, method, threshold)
    files = {
        "images.csv": write_csv(images, out_dir / "images.csv"),
        "studies.csv": write_csv(studies, out_dir / "studies.csv"),
    }
    failures = [(p, e) for p, e in zip(images["path"], images["error"]) if e]
    run = _run_record(
        config,
        loaded,
        runtime,
        workers,
        predictor,
        discovery,
        images,
        studies,
        method,
        threshold,
        started,
        seconds_model,
    )
    run = replace(
        run,
        resumed_images=len(done),
        resumed_changed_images=changed,
        shard=shard,
    )
    report_error, report_seconds = _report(
        config, run, images, studies, out_dir, files, notify, keep_thumbnails=shard is not None
    )
    seconds = {**run.seconds, **report_seconds, "total": round(time.perf_counter() - clock, 3)}
    run = replace(run, status="finished", finished=_now(), report_error=report_error, seconds=seconds)
    files["run.json"] = write_run_record(run, out_dir)
    scored = len(images) - len(failures)
    code = ExitCode.FATAL if scored == 0 else ExitCode.PARTIAL if failures or report_error else ExitCode.OK
    return ScoreResult(out_dir, images, studies, run, files, code, report_error, failures)


def _keeps_thumbnails(config) -> bool:
    return config.pdf or config.html


def _report(
    config, run: RunRecord, images, studies, out_dir: Path, files: dict, notify, keep_thumbnails: bool = False
) -> tuple[str, dict]:
    """Write report.html and report.pdf from the thumbnails kept on disk; returns the errors, if any
    (the CSVs stay whatever happens here), and the seconds the PDF took."""
    if not _keeps_thumbnails(config) or not run.counts.scored:
        return "", {}
    store, errors, seconds = ThumbStore(out_dir), [], {}
    if config.html:
        from mura_cli.report.html import write_review_page

        try:
            files["report.html"] = write_review_page(run, images, studies, store, out_dir)
        except ReportError as exc:
            errors.append(str(exc))
    if config.pdf:
        notify(
            ProgressEvent(
                "report", 0, len(studies), f"Writing the PDF report ({counted(len(studies), 'study')})"
            )
        )
        t_report = time.perf_counter()
        try:
            from mura_cli.report.pdf import render_score_report

            files["report.pdf"] = render_score_report(run, images, studies, store, out_dir / "report.pdf")
        except ReportError as exc:
            errors.append(str(exc))
        finally:
            seconds["report"] = round(time.perf_counter() - t_report, 3)
    if not keep_thumbnails and not errors:  # a shard keeps them for `mura-cli merge --pdf`
        store.clear()
    return "; ".join(errors), seconds
