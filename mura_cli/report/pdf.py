"""The score and evaluation reports: their content, laid out by the templates in report_templates/.
A long score report is cut into parts that render in parallel (mura_cli/report/parts.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mura_cli.report.parts import Part, default_workers, render_parts
from mura_cli.report.render import add_picture, render_html, write_pdf
from mura_cli.results.record import RunRecord

HEATMAP_NAMES = {
    "cam": "Grad-CAM (closed form from the forward pass)",
    "gradcam": "Grad-CAM (autograd)",
    "none": "none",
}

LSE_HEATMAP_NAME = "the model's own cell scores, which its probability is pooled from (closed form)"


def heatmap_name(run: RunRecord) -> str:
    """How the report names the heatmaps of this run: a model with ``pooling: lse`` decides from the
    map itself (mura_cli.pooling), which is more than a Grad-CAM explanation beside the decision."""
    method = run.runtime.heatmap_method
    if method == "cam" and run.model.config.get("pooling") == "lse":
        return LSE_HEATMAP_NAME
    return HEATMAP_NAMES.get(method, "none")


# Rough layout cost of each piece of a score report (milliseconds of WeasyPrint on one core), used to
# cut a long report into parts. Up to ONE_DOCUMENT a report is one document (starting workers would
# cost more than they save); beyond it, about two parts per worker (so that building the next parts
# overlaps rendering), each within PART_BUDGET (bounded memory per worker). Measured on 500 studies,
# 2 cores: one document 13.0 s; parts of 1000: 10.1 s, 2500: 9.1 s, 4000: 8.7 s; 2 parts: 10.0 s.
COST_SUMMARY, COST_ROW, COST_STUDY, COST_IMAGE = 40, 2, 6, 5
ONE_DOCUMENT = 3000
PART_BUDGET = (1500, 4000)


def _fmt(value, digits: int = 3) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _image_entries(images: pd.DataFrame) -> dict[str, list[dict]]:
    by_study: dict[str, list[dict]] = {}
    for row in images[["path", "study_id", "error", "probability"]].to_dict("records"):
        by_study.setdefault(row["study_id"], []).append(
            {
                "path": row["path"],
                "name": row["path"].rsplit("/", 1)[-1],
                "error": row["error"],
                "probability_text": _fmt(row["probability"]),
            }
        )
    return by_study


def _study_rows(run: RunRecord, images: pd.DataFrame, studies: pd.DataFrame) -> list[dict]:
    """Studies by descending probability, each with its images (pictures are attached per part)."""
    cfg = run.model.config
    by_study = _image_entries(images)
    ordered = studies.sort_values("probability", ascending=False, na_position="last", kind="stable")
    rows = []
    for s in ordered.to_dict("records"):
        prediction = s["prediction"]
        positive = not pd.isna(prediction) and int(prediction) == 1
        rows.append(
            {
                **s,
                "label_text": "unknown"
                if pd.isna(s["label"])
                else (cfg["positive_class"] if s["label"] else cfg["negative_class"]),
                "probability_text": _fmt(s["probability"]),
                "prediction_text": "no score"
                if pd.isna(prediction)
                else cfg["positive_class" if positive else "negative_class"],
                "css": "failed" if pd.isna(prediction) else "positive" if positive else "negative",
                "images": by_study.get(s["study_id"], []),
            }
        )
    return rows


def _with_pictures(rows: list[dict], visuals, pictures: dict[str, bytes]) -> list[dict]:
    """Study rows whose images carry their thumbnail and overlay URLs, read only now (memory stays
    bounded by one part)."""
    out = []
    for row in rows:
        entries = []
        for entry in row["images"]:
            thumbs = visuals.get(entry["path"])
            entries.append(
                {
                    **entry,
                    "thumb": add_picture(pictures, thumbs.image) if thumbs else "",
                    "overlay": add_picture(pictures, thumbs.overlay) if thumbs and thumbs.overlay else "",
                }
            )
        out.append({**row, "images": entries})
    return out


def _part_budget(total: float, workers: int) -> float:
    if total <= ONE_DOCUMENT:
        return total
    if workers <= 1:
        return PART_BUDGET[1]  # parts still bound the memory
    return min(max(total / (2 * workers), PART_BUDGET[0]), PART_BUDGET[1])


def _plan(
    n_rows: int, n_failures: int, study_sizes: list[int], workers: int
) -> list[dict[str, tuple[int, int]]]:
    """Cut summary, table rows, failure rows and study sections, in that order, into parts; each part
    maps a list name to its [start, stop) slice."""
    pieces = (
        [("table", i, COST_ROW) for i in range(n_rows)]
        + [("failures", i, COST_ROW) for i in range(n_failures)]
        + [("sections", i, COST_STUDY + COST_IMAGE * size) for i, size in enumerate(study_sizes)]
    )
    budget = _part_budget(COST_SUMMARY + sum(cost for _, _, cost in pieces), workers)
    parts: list[dict[str, tuple[int, int]]] = [{}]
    spent = COST_SUMMARY
    for name, index, cost in pieces:
        if spent + cost > budget and parts[-1]:
            parts.append({})
            spent = 0
        start, _ = parts[-1].get(name, (index, index))
        parts[-1][name] = (start, index + 1)
        spent += cost
    return parts


def _score_parts(context: dict, rows: list[dict], failures: list[dict], visuals, plan) -> Iterator[Part]:
    """Each part's HTML and pictures, built only when the renderer asks for it."""
    for number, slices in enumerate(plan):
        pictures: dict[str, bytes] = {}
        lists = {name: None for name in ("table", "failures", "sections")}
        for name, items in (("table", rows), ("failures", failures), ("sections", rows)):
            if name in slices:
                chosen = items[slice(*slices[name])]
                if name == "sections":
                    chosen = _with_pictures(chosen, visuals, pictures)
                lists[name] = {"rows": chosen, "start": slices[name][0], "total": len(items)}
        html = render_html(
            "score.html.j2",
            **context,
            **lists,
            summary=number == 0,
            part={"first": number == 0, "numbered": len(plan) == 1},
        )
        yield Part(html, pictures)


def render_score_report(
    run: RunRecord,
    images: pd.DataFrame,
    studies: pd.DataFrame,
    visuals,
    path: Path,
    workers: int | None = None,
) -> Path:
    """``visuals.get(rel_path)`` gives an image's Thumbnails (or None). A report longer than one part
    renders on ``workers`` processes (default: one per core, up to 8)."""
    cfg = run.model.config
    context = {
        "run": run,
        "unscored": int(studies["prediction"].isna().sum()),
        "positive_name": cfg["positive_class"],
        "negative_name": cfg["negative_class"],
        "heatmap_name": heatmap_name(run),
    }
    rows = _study_rows(run, images, studies)
    failures = images.loc[images["error"] != "", ["path", "error"]].to_dict("records")
    workers = workers or default_workers()
    plan = _plan(len(rows), len(failures), [len(r["images"]) for r in rows], workers)
    parts = _score_parts(context, rows, failures, visuals, plan)
    if len(plan) == 1:
        part = next(parts)
        return write_pdf(part.html, path, part.pictures)
    return render_parts(parts, path, min(workers, len(plan)))


def _metric_rows(level: dict) -> list[dict]:
    rows = []
    for name, values in [("overall", level["overall"]), *level["per_body_part"].items()]:
        row = {"name": name, "n": values["n"], "n_positive": values["n_positive"]}
        for metric in ("auroc", "kappa", "sensitivity", "specificity", "accuracy", "f1"):
            value, ci = values[metric]["value"], values[metric]["ci"]
            row[metric] = {
                "value": "-" if value is None else f"{value:.3f}",
                "ci": f"{ci[0]:.3f}\u2013{ci[1]:.3f}" if value is not None and ci else "",
            }
        rows.append(row)
    return rows


def render_eval_report(result: dict, out_dir: Path, path: Path, gallery=()) -> Path:
    """The evaluation report: metrics with CIs per body part, operating points, calibration, plots,
    and the error gallery (mura_cli.evaluation.gallery entries)."""
    pictures: dict[str, bytes] = {}
    errors: dict[str, list[dict]] = {}  # kind -> studies, in the gallery's order
    for e in gallery:
        errors.setdefault(e.kind, []).append(
            {
                "study_id": e.study_id,
                "body_part": e.body_part,
                "probability_text": _fmt(e.probability),
                "images": [
                    {
                        "name": p.rsplit("/", 1)[-1],
                        "probability_text": _fmt(q),
                        "thumb": add_picture(pictures, t.image) if t else None,
                        "overlay": add_picture(pictures, t.overlay) if t and t.overlay else None,
                    }
                    for p, q, t in e.images
                ],
            }
        )
    plots = {
        name: add_picture(pictures, (out_dir / f"{name}.png").read_bytes(), "png")
        for name in ("roc_study", "reliability_study")
        if (out_dir / f"{name}.png").is_file()
    }
    html = render_html(
        "evaluate.html.j2",
        result=result,
        run=result["run"],
        plots=plots,
        study_rows=_metric_rows(result["study"]),
        image_rows=_metric_rows(result["image"]),
        points=result["study"]["overall"]["operating_points"],
        calibration=result["study"]["overall"]["calibration"],
        localisation=result.get("localisation"),
        before_temperature=result.get("calibration_before_temperature"),
        temperature=result["run"].get("temperature", 1.0),
        bias=result["run"].get("logit_bias", 0.0),
        errors=errors,
    )
    return write_pdf(html, path, pictures)
