"""evaluate(config): judge a model on labelled data at image and study level, overall and per body
part, with bootstrap confidence intervals, operating points, calibration and heatmap localisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mura_cli import __version__
from mura_cli.config import EvalConfig
from mura_cli.errors import writes_into
from mura_cli.evaluation import metrics
from mura_cli.evaluation.gallery import gallery_entries, pick_errors
from mura_cli.inference.aggregate import aggregate_studies
from mura_cli.inference.batches import default_workers
from mura_cli.inference.device import create_runtime
from mura_cli.inference.predictor import IMAGE_COLUMNS, Predictor, predict_records
from mura_cli.inputs import boxes as box_geometry
from mura_cli.inputs.datasets import read_dataset, select_split
from mura_cli.inputs.discover import records_from_table, screen_modalities
from mura_cli.model.factory import load_model, resolve_model_dir
from mura_cli.report.images import make_thumbnails
from mura_cli.results.folder import check_out_dir
from mura_cli.results.record import Counts, ModelIdentity, RunRecord, Tool
from mura_cli.results.writers import write_csv, write_json
from mura_cli.wording import counted

RESULT_FILES = ("metrics.json", "studies.csv", "images.csv", "per_body_part.csv", "report.pdf", "report.html")


@dataclass(frozen=True)
class EvalEvent:
    stage: str  # 'start' | 'images' | 'metrics' | 'report'
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    images: pd.DataFrame
    studies: pd.DataFrame
    files: dict


def default_split(table: pd.DataFrame) -> str:
    """'valid' or else 'test' where the data declares them (MURA's CSVs, a manifest's split column);
    every image where the parts are only mura-cli's own seeded ones (FracAtlas): say --split test."""
    if table.attrs.get("seeded_split"):
        return "all"
    present = set(table["split"])
    return "valid" if "valid" in present else "test" if "test" in present else "all"


def _localise(result, k: int, row: dict, boxes: list, tolerance: float) -> dict:
    """Pointing game, strict (peak inside a box grown by 10%) and tolerant (grown by max(10%,
    ``tolerance`` x the image's long side)), the same two for a baseline that always points at the
    image centre, and the share of heatmap energy inside the boxes."""
    empty = {
        "pointing_hit": pd.NA,
        "pointing_hit_tolerant": pd.NA,
        "centre_hit": pd.NA,
        "centre_hit_tolerant": pd.NA,
        "energy_inside": np.nan,
    }
    if not boxes or result.errors[k] or result.heatmaps is None:
        return empty
    g = result.geometry(k)
    slack = tolerance * max(g.orig_w, g.orig_h)
    peak, centre = (row["heatmap_peak_x"], row["heatmap_peak_y"]), ((g.orig_w - 1) / 2, (g.orig_h - 1) / 2)
    pointed = not pd.isna(peak[0])  # a flat heatmap has no peak: it points nowhere, a miss
    canvas_boxes = [box_geometry.to_canvas(b, g) for b in boxes]
    return {
        "pointing_hit": int(pointed and metrics.pointing_hit(peak, boxes)),
        "pointing_hit_tolerant": int(pointed and metrics.pointing_hit(peak, boxes, slack=slack)),
        "centre_hit": int(metrics.pointing_hit(centre, boxes)),
        "centre_hit_tolerant": int(metrics.pointing_hit(centre, boxes, slack=slack)),
        "energy_inside": metrics.energy_inside(result.heatmaps[k], canvas_boxes),
    }


LOCALISATION_COLUMNS = [
    "pointing_hit",
    "pointing_hit_tolerant",
    "centre_hit",
    "centre_hit_tolerant",
    "energy_inside",
]


def predict_table(
    records: list, predictor: Predictor, config: EvalConfig, boxes: dict, notify, pictures: dict | None = None
) -> pd.DataFrame:
    """One row per image (probability, heatmap peak, localisation); with ``pictures``, each image's
    thumbnail and heatmap overlay (boxes drawn) go into it, by path, for the reports."""
    runtime = predictor.runtime
    workers = config.workers if config.workers is not None else default_workers(runtime.device)
    out, done = [], 0
    for result in predict_records(predictor, records, config.batch_size, workers):
        for k, i in enumerate(result.indices):
            row = result.image_row(records[i], k)
            shown = box_geometry.boxes_for(records[i].rel_path, boxes)
            row.update(
                label=records[i].label,
                patient_id=records[i].patient_id,
                **_localise(result, k, row, shown, config.pointing_tolerance),
            )
            if pictures is not None and not result.errors[k]:
                heat = result.heatmaps[k] if result.heatmaps is not None else None
                pictures[row["path"]] = make_thumbnails(
                    result.canvases[k, 0].numpy(), result.geometry(k), heat, shown
                )
            out.append(row)
        done += len(result.indices)
        notify(EvalEvent("images", done, len(records)))
    return pd.DataFrame(out, columns=[*IMAGE_COLUMNS, "label", "patient_id", *LOCALISATION_COLUMNS])


def add_deletion_test(
    images: pd.DataFrame, records: list, predictor: Predictor, config: EvalConfig, boxes: dict, notify
) -> pd.DataFrame:
    """Probabilities of the positive images with boxes after filling the boxes, and after filling
    same-size regions elsewhere, with the drops from the original probability (faithfulness.py)."""
    from mura_cli.evaluation import faithfulness

    chosen = faithfulness.boxed_positives(records, boxes)
    columns = ["probability_boxes_filled", "probability_elsewhere_filled", "deletion_drop", "elsewhere_drop"]
    out = images.assign(**{c: np.nan for c in columns})
    if not chosen:
        return out
    notify(
        EvalEvent(
            "metrics", message=f"Deletion test: {len(chosen)} positive images with boxes, scored twice more"
        )
    )
    predictor = predictor.probabilities_only()  # the scoring pass's engine, already started
    workers = config.workers if config.workers is not None else default_workers(predictor.runtime.device)
    picked = [records[i] for i in chosen]
    filled = faithfulness.deletion_scores(
        predictor,
        picked,
        [box_geometry.boxes_for(r.rel_path, boxes) for r in picked],
        config.batch_size,
        workers,
        config.seed,
    )
    for column in ("probability_boxes_filled", "probability_elsewhere_filled"):
        out.loc[out.index[chosen], column] = filled[column].to_numpy()
    out["deletion_drop"] = out["probability"] - out["probability_boxes_filled"]
    out["elsewhere_drop"] = out["probability"] - out["probability_elsewhere_filled"]
    return out


def gallery_pictures(picked: dict, images: pd.DataFrame, records: list, predictor, config, boxes) -> dict:
    """Thumbnails and heatmap overlays of the gallery's images only: they are scored once more (the
    same predictor, keeping their maps), instead of making pictures of every image in the main pass."""
    studies = {study for ids in picked.values() for study in ids}
    if not studies:
        return {}
    wanted = set(images.loc[images["study_id"].isin(studies), "path"])
    chosen = [r for r in records if r.rel_path in wanted]
    pictures: dict = {}
    predict_table(chosen, predictor.with_maps(), config, boxes, lambda event: None, pictures)
    return pictures


def level_metrics(y, p, threshold: float, config: EvalConfig, groups=None) -> dict:
    """Point values with 95% CIs, confusion matrix, operating points and calibration for one level."""
    point = metrics.threshold_metrics(y, p, threshold)
    ci = metrics.bootstrap_ci(y, p, threshold, resamples=config.bootstrap, seed=config.seed, groups=groups)
    out = {name: {"value": point[name], "ci": ci[name]} for name in metrics.CI_METRICS}
    out.update(
        n=point["n"],
        n_positive=point["n_positive"],
        confusion=point["confusion"],
        operating_points=metrics.operating_points(y, p, threshold, config.target_sensitivity),
        calibration=metrics.calibration(y, p),
    )
    return out


def _groups(table: pd.DataFrame):
    yield "overall", table
    for part, group in table.groupby("body_part", sort=True):
        if part:
            yield part, group


def compute_metrics(
    images: pd.DataFrame, studies: pd.DataFrame, threshold: float, config: EvalConfig
) -> dict:
    scored_images = images.dropna(subset=["probability"])
    scored_studies = studies.dropna(subset=["probability"])
    result: dict = {}
    for level, table in (("study", scored_studies), ("image", scored_images)):
        entry: dict = {"per_body_part": {}}
        for name, group in _groups(table):
            groups = group["study_id"].to_numpy() if level == "image" else None
            values = level_metrics(
                group["label"].astype(int).to_numpy(),
                group["probability"].to_numpy(float),
                threshold,
                config,
                groups,
            )
            if name == "overall":
                entry["overall"] = values
            else:
                entry["per_body_part"][name] = values
        result[level] = entry
    result["localisation"] = _localisation_summary(images, config)
    return result


def _pointing(group: pd.DataFrame) -> dict:
    share = lambda column: float(group[column].astype(float).mean())  # noqa: E731
    return {
        "n": int(len(group)),
        "pointing_game": share("pointing_hit"),
        "pointing_game_tolerant": share("pointing_hit_tolerant"),
        "centre_baseline": share("centre_hit"),
        "centre_baseline_tolerant": share("centre_hit_tolerant"),
        "energy_inside": float(group["energy_inside"].mean()),
    }


def _localisation_summary(images: pd.DataFrame, config: EvalConfig) -> dict | None:
    rated = images.dropna(subset=["pointing_hit"])
    rated = rated[rated["label"] == 1]
    if rated.empty:
        return None
    summary = {
        "overall": {**_pointing(rated), "margin": 0.1, "tolerance": config.pointing_tolerance},
        "per_body_part": {part: _pointing(group) for part, group in rated.groupby("body_part")},
    }
    if "deletion_drop" in images:
        from mura_cli.evaluation.faithfulness import DELETION_GROW, mean_drop_ci

        summary["deletion"] = {
            "boxes_filled": mean_drop_ci(
                images["deletion_drop"].to_numpy(float), config.bootstrap, config.seed
            ),
            "elsewhere_filled": mean_drop_ci(
                images["elsewhere_drop"].to_numpy(float), config.bootstrap, config.seed
            ),
            "grow": DELETION_GROW,
        }
    return summary


def _uncalibrated(images: pd.DataFrame, method: str, threshold: float, cfg) -> dict | None:
    """Study-level calibration of the probabilities the model gives without its calibration."""
    if cfg.temperature == 1.0 and cfg.logit_bias == 0.0:
        return None
    from mura_cli.model.calibration import uncalibrate

    raw = images.assign(
        probability=uncalibrate(images["probability"].to_numpy(float), cfg.temperature, cfg.logit_bias)
    )
    studies = aggregate_studies(raw, method, threshold).dropna(subset=["probability"])
    return metrics.calibration(
        studies["label"].astype(int).to_numpy(), studies["probability"].to_numpy(float)
    )


def per_body_part_table(result: dict) -> pd.DataFrame:
    rows = []
    for name, values in [("overall", result["study"]["overall"]), *result["study"]["per_body_part"].items()]:
        row = {"body_part": name, "n_studies": values["n"], "n_positive": values["n_positive"]}
        for metric in metrics.CI_METRICS:
            ci = values[metric]["ci"] or [np.nan, np.nan]
            row.update(
                {metric: values[metric]["value"], f"{metric}_ci_low": ci[0], f"{metric}_ci_high": ci[1]}
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _prepare(out_dir: Path, overwrite: bool, data: str) -> Path:
    check_out_dir(out_dir, RESULT_FILES, inputs=(Path(data),), overwrite=overwrite, can_resume=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def evaluate(
    config: EvalConfig, notify: Callable[[EvalEvent], None] | None = None, overwrite: bool = False
) -> EvalResult:
    """Score a labelled split and judge the model; a full or read-only --out is one OutputError line."""
    with writes_into(
        Path(config.out_dir).expanduser(),
        "nothing is lost but this evaluation: make room (or fix "
        "the permission) and run it again with --overwrite",
    ):
        return _evaluate(config, notify or (lambda event: None), overwrite)


def _evaluate(config: EvalConfig, notify: Callable[[EvalEvent], None], overwrite: bool) -> EvalResult:
    started, clock = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    table = read_dataset(config.data)
    split = config.split or default_split(table)
    rows = select_split(table, split)
    loaded = load_model(resolve_model_dir(config.model))
    runtime = create_runtime(config.device, config.precision, loaded.config.precision_checks)
    boxes = box_geometry.read_boxes(config.boxes) if config.boxes else {}
    out_dir = _prepare(Path(config.out_dir).expanduser(), overwrite, config.data)
    notify(
        EvalEvent(
            "start",
            0,
            len(rows),
            f"Evaluating {loaded.config.name} on split '{split}' ({counted(len(rows), 'image')}), {runtime.reason}",
        )
    )
    records = screen_modalities(records_from_table(rows), config.allow_modality)
    pictures = {} if config.html else None  # the review page shows every image; the PDF its gallery
    predictor = Predictor(
        loaded,
        runtime,
        heatmaps=True,
        keep_maps=bool(boxes) or pictures is not None,
        tta=config.tta,
        engine=config.engine,
    )
    images = predict_table(records, predictor, config, boxes, notify, pictures)
    if boxes and config.deletion:
        images = add_deletion_test(images, records, predictor, config, boxes, notify)
    threshold, method = loaded.config.threshold, loaded.config.aggregation
    studies = aggregate_studies(images, method, threshold)
    notify(EvalEvent("metrics", message=f"Metrics with {config.bootstrap} bootstrap resamples"))
    result = compute_metrics(images, studies, threshold, config)
    result["calibration_before_temperature"] = _uncalibrated(images, method, threshold, loaded.config)
    result["run"] = {
        "tool": f"mura-cli {__version__}",
        "started": started,
        "data": config.data,
        "split": split,
        "model": loaded.config.name,
        "weights_sha256": loaded.weights_sha256,
        "threshold": threshold,
        "aggregation": method,
        "device": str(runtime.device),
        "precision": runtime.precision,
        "precision_reason": runtime.reason,
        "engine": predictor.engine.to_dict(),
        "temperature": loaded.config.temperature,
        "logit_bias": loaded.config.logit_bias,
        "tta": predictor.tta,
        "failed_images": int(images["probability"].isna().sum()),
        "config": config.to_dict(),
        "bootstrap": {"resamples": config.bootstrap, "seed": config.seed, "unit": "study"},
    }
    files = _write(out_dir, images, studies, result)
    picked = pick_errors(studies, config.gallery) if config.pdf or config.html else {}
    result["gallery"] = picked
    if config.pdf and pictures is None:
        pictures = gallery_pictures(picked, images, records, predictor, config, boxes)
    files["metrics.json"] = write_json(result, out_dir / "metrics.json")  # kept should a report fail
    if config.pdf:
        notify(EvalEvent("report", message="Writing the PDF report"))
        from mura_cli.report.pdf import render_eval_report

        entries = gallery_entries(picked, images, studies, pictures)
        files["report.pdf"] = render_eval_report(result, out_dir, out_dir / "report.pdf", entries)
    if config.html:
        from mura_cli.report.html import write_review_page

        record = _review_record(config, loaded, started, images, studies, threshold, method)
        files["report.html"] = write_review_page(record, images, studies, pictures, out_dir, picked)
    result["run"]["seconds"] = round(time.perf_counter() - clock, 2)
    files["metrics.json"] = write_json(result, out_dir / "metrics.json")
    return EvalResult(out_dir, result, images, studies, files)


def _review_record(config: EvalConfig, loaded, started: str, images, studies, threshold, method) -> RunRecord:
    """What the review page shows of this evaluation (the page is shared with `score --html`)."""
    data = Path(config.data).expanduser().resolve()
    return RunRecord(
        status="finished",
        started=started,
        tool=Tool(version=__version__),
        config=config.to_dict(),
        model=ModelIdentity(
            loaded.config.name, loaded.weights_sha256, str(loaded.path), loaded.config.to_dict()
        ),
        input_root=str(data if data.is_dir() else data.parent),
        aggregation=method,
        threshold=threshold,
        counts=Counts.of(images, studies),
    )


def _write(out_dir: Path, images: pd.DataFrame, studies: pd.DataFrame, result: dict) -> dict:
    from mura_cli.report import plots

    files = {
        "images.csv": write_csv(images, out_dir / "images.csv"),
        "studies.csv": write_csv(studies, out_dir / "studies.csv"),
        "per_body_part.csv": write_csv(per_body_part_table(result), out_dir / "per_body_part.csv"),
    }
    scored = studies.dropna(subset=["probability"])
    study = result["study"]

    def auroc(name: str):
        return (study["overall"] if name == "overall" else study["per_body_part"][name])["auroc"]["value"]

    curves = {
        name: (g["label"].astype(int).to_numpy(), g["probability"].to_numpy(float), auroc(name))
        for name, g in _groups(scored)
    }
    files["roc_study.png"] = plots.roc_curves(curves, out_dir / "roc_study.png")
    cal = result["study"]["overall"]["calibration"]["curve"]
    files["reliability_study.png"] = plots.reliability_diagram(
        cal["predicted"], cal["observed"], out_dir / "reliability_study.png"
    )
    return files
