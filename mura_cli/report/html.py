"""report.html: an offline page to look through a run as a reader would (sort, filter, open an image
large with its heatmap, mark agree/disagree) and export the marks as a labels manifest.

The page is one file with its CSS and JavaScript inline and a Content-Security-Policy that allows no
network request; the thumbnails are JPEG files beside it in ``report_files/`` (a page that embeds
10,000 images would not open quickly). It holds what images.csv and studies.csv hold, nothing more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from mura_cli import __version__
from mura_cli.choices import RESEARCH_NOTICE
from mura_cli.errors import ReportError
from mura_cli.files import atomic_write_bytes
from mura_cli.inputs.names import printable_name
from mura_cli.results.record import RunRecord
from mura_cli.wording import counted

FILES_FOLDER = "report_files"


def _number(value):
    return None if value is None or pd.isna(value) else float(value)


def _label(value):
    return None if value is None or pd.isna(value) else int(value)


def page_data(
    run: RunRecord, images: pd.DataFrame, studies: pd.DataFrame, thumbs: dict, gallery: dict | None = None
) -> dict:
    """What the page shows, as plain JSON: the run summary and one entry per study with its images.
    ``thumbs`` maps an image path to (thumbnail file, overlay file or None), relative to the page."""
    root = Path(run.input_root or ".")
    by_study: dict[str, list] = {}
    for row in images.to_dict("records"):
        thumb, heat = thumbs.get(row["path"], (None, None))
        by_study.setdefault(row["study_id"], []).append(
            {
                "path": row["path"],
                "file": f"{printable_name(str(root))}/{row['path']}",
                "probability": _number(row["probability"]),
                "error": row["error"] or "",
                "thumb": thumb,
                "heat": heat,
            }
        )
    entries = [
        {
            "id": row["study_id"],
            "body_part": row.get("body_part") or "",
            "probability": _number(row["probability"]),
            "prediction": _label(row.get("prediction")),
            "label": _label(row.get("label")),
            "images": by_study.get(row["study_id"], []),
        }
        for row in studies.to_dict("records")
    ]
    model = run.model
    run_id = hashlib.sha256(
        f"{run.started}|{model.weights_sha256}|{run.input_root or None}".encode("utf-8", "surrogateescape")
    )
    return {
        "run_id": run_id.hexdigest()[:16],
        "started": run.started,
        "tool": f"mura-cli {__version__}",
        "model": model.name,
        "positive": model.config.get("positive_class", "abnormal"),
        "negative": model.config.get("negative_class", "normal"),
        "threshold": run.threshold,
        "counts": dataclasses.asdict(run.counts) if run.counts else {},
        "notice": RESEARCH_NOTICE,
        "studies": entries,
        "gallery": gallery or {},  # evaluate: kind -> study ids, the most confident errors first
    }


def _write_thumbnails(images: pd.DataFrame, store, out_dir: Path) -> dict:
    folder = out_dir / FILES_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    thumbs = {}
    for number, path in enumerate(images["path"]):
        found = store.get(path)
        if found is None:
            continue
        atomic_write_bytes(folder / f"{number:06d}.jpg", found.image)
        heat = None
        if found.overlay is not None:
            atomic_write_bytes(folder / f"{number:06d}-heat.jpg", found.overlay)
            heat = f"{FILES_FOLDER}/{number:06d}-heat.jpg"
        thumbs[path] = (f"{FILES_FOLDER}/{number:06d}.jpg", heat)
    return thumbs


def write_review_page(
    run: RunRecord,
    images: pd.DataFrame,
    studies: pd.DataFrame,
    store,
    out_dir: Path,
    gallery: dict | None = None,
) -> Path:
    from mura_cli.report.render import render_html

    try:
        data = page_data(run, images, studies, _write_thumbnails(images, store, out_dir), gallery)
        # the data sits in a <script type="application/json">: no '<' (a '</script>' or '<!--' in a file
        # name) may reach the HTML parser, so <, > and & travel as JSON escapes
        text = json.dumps(data, ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        html = render_html(
            "review.html.j2", data_json=text, title=f"{data['model']}: {counted(len(studies), 'study')}"
        )
        encoded = html.encode("utf-8", "backslashreplace")
    except (OSError, KeyError, ValueError) as exc:
        raise ReportError(f"report.html could not be written ({type(exc).__name__}: {exc})") from None
    return atomic_write_bytes(out_dir / "report.html", encoded)
