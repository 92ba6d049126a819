"""Jinja2 templates from report_templates/ rendered to PDF by WeasyPrint."""

from __future__ import annotations

import logging
from pathlib import Path

import jinja2
import pandas as pd

from mura_cli.choices import RESEARCH_NOTICE
from mura_cli.errors import ReportError
from mura_cli.report.images import data_uri
from mura_cli.report.tables import atomic_write_bytes
from mura_cli.resources import data_dir

HEATMAP_NAMES = {"cam": "Grad-CAM (closed form from the forward pass)", "gradcam": "Grad-CAM (autograd)",
                 "none": "none"}


def create_environment() -> jinja2.Environment:
    folder = data_dir("report_templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
    )


def _fmt(value, digits: int = 3) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _study_rows(run: dict, images: pd.DataFrame, studies: pd.DataFrame, visuals):
    cfg = run["model"]["config"]
    by_study: dict[str, list[dict]] = {}
    for row in images.to_dict("records"):
        thumbs = visuals.get(row["path"])
        by_study.setdefault(row["study_id"], []).append({
            "path": row["path"], "error": row["error"], "probability_text": _fmt(row["probability"]),
            "thumb": data_uri(thumbs.image) if thumbs else "",
            "overlay": data_uri(thumbs.overlay) if thumbs and thumbs.overlay else "",
        })
    ordered = studies.sort_values("probability", ascending=False, na_position="last", kind="stable")
    rows = []
    for s in ordered.to_dict("records"):
        prediction = s["prediction"]
        positive = not pd.isna(prediction) and int(prediction) == 1
        rows.append({
            **s,
            "label_text": "unknown" if pd.isna(s["label"]) else (cfg["positive_class"] if s["label"] else cfg["negative_class"]),
            "probability_text": _fmt(s["probability"]),
            "prediction_text": "no score" if pd.isna(prediction) else cfg["positive_class" if positive else "negative_class"],
            "css": "failed" if pd.isna(prediction) else "positive" if positive else "negative",
            "images": by_study.get(s["study_id"], []),
        })
    return rows


def render_html(template: str, **context) -> str:
    return create_environment().get_template(template).render(notice=RESEARCH_NOTICE, **context)


def write_pdf(html: str, path: Path) -> Path:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: Pango or its libraries are missing
        raise ReportError(f"PDF not written: WeasyPrint cannot start ({exc}); see the README's PDF notes") from None
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        pdf = HTML(string=html, base_url=str(data_dir("report_templates"))).write_pdf()
    except Exception as exc:
        raise ReportError(f"PDF not written: WeasyPrint failed ({type(exc).__name__}: {exc})") from None
    return atomic_write_bytes(path, pdf)


def render_score_report(run: dict, images: pd.DataFrame, studies: pd.DataFrame,
                        visuals, path: Path) -> Path:
    """``visuals.get(rel_path)`` gives an image's Thumbnails (or None)."""
    cfg = run["model"]["config"]
    html = render_html(
        "score.html.j2",
        run=run,
        studies=_study_rows(run, images, studies, visuals),
        failures=images.loc[images["error"] != "", ["path", "error"]].to_dict("records"),
        unscored=int(studies["prediction"].isna().sum()),
        positive_name=cfg["positive_class"],
        negative_name=cfg["negative_class"],
        heatmap_name=HEATMAP_NAMES.get(run["runtime"]["heatmap_method"], "none"),
    )
    return write_pdf(html, path)


def _metric_rows(level: dict) -> list[dict]:
    rows = []
    for name, values in [("overall", level["overall"]), *level["per_body_part"].items()]:
        row = {"name": name, "n": values["n"], "n_positive": values["n_positive"]}
        for metric in ("auroc", "kappa", "sensitivity", "specificity", "accuracy", "f1"):
            value, ci = values[metric]["value"], values[metric]["ci"]
            row[metric] = "-" if value is None else f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        rows.append(row)
    return rows


def render_eval_report(result: dict, out_dir: Path, path: Path) -> Path:
    """The evaluation report: metrics with CIs per body part, operating points, calibration, plots."""
    plots = {name: data_uri((out_dir / f"{name}.png").read_bytes(), "image/png")
             for name in ("roc_study", "reliability_study") if (out_dir / f"{name}.png").is_file()}
    html = render_html("evaluate.html.j2", result=result, run=result["run"], plots=plots,
                       study_rows=_metric_rows(result["study"]), image_rows=_metric_rows(result["image"]),
                       points=result["study"]["overall"]["operating_points"],
                       calibration=result["study"]["overall"]["calibration"],
                       localisation=result.get("localisation"))
    return write_pdf(html, path)
