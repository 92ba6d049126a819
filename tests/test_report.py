"""The PDF report, read back as a person would: its text and its pictures."""

from __future__ import annotations

import pandas as pd
import pytest
from pypdf import PdfReader

from mura_cli.config import ScoreConfig
from mura_cli.scoring.score import score_folder


@pytest.fixture()
def scored_with_pdf(mura_folder, tmp_path, tiny_model):
    (mura_folder / "XR_ELBOW" / "patient00002" / "study1_negative" / "bad.png").write_text("no image")
    config = ScoreConfig(
        input=str(mura_folder), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0, pdf=True
    )
    return score_folder(config)


def _text(reader: PdfReader) -> str:
    return "\n".join(page.extract_text() for page in reader.pages)


def test_pdf_names_every_study_with_the_csv_probability(scored_with_pdf):
    out = scored_with_pdf.out_dir
    reader = PdfReader(out / "report.pdf")
    text = _text(reader).replace("\n", " ")
    studies = pd.read_csv(out / "studies.csv")
    for row in studies.itertuples():
        assert row.study_id in text
        assert f"{row.probability:.3f}" in text
    # the summary table lists studies by descending probability
    order = [text.index(s) for s in studies.sort_values("probability", ascending=False)["study_id"]]
    assert order == sorted(order)


def test_pdf_embeds_a_thumbnail_and_an_overlay_per_scored_image(scored_with_pdf):
    reader = PdfReader(scored_with_pdf.out_dir / "report.pdf")
    # WeasyPrint may share one resource dictionary between pages: count distinct image objects
    embedded = len({image.indirect_reference.idnum for page in reader.pages for image in page.images})
    scored = int((scored_with_pdf.images["error"] == "").sum())
    assert embedded == 2 * scored


def test_pdf_lists_failures_and_carries_footer_on_every_page(scored_with_pdf):
    reader = PdfReader(scored_with_pdf.out_dir / "report.pdf")
    text = _text(reader)
    assert "XR_ELBOW/patient00002/study1_negative/bad.png" in text.replace("\n", "")
    assert "its content is not a PNG or JPEG image" in " ".join(text.split())
    pages = len(reader.pages)
    for number, page in enumerate(reader.pages, start=1):
        page_text = page.extract_text()
        assert "Research use only, not a medical device" in page_text
        assert f"Page {number} of {pages}" in page_text


def test_overlay_leaves_cold_pixels_gray_and_tints_hot_ones_by_the_ramp():
    import numpy as np
    from PIL import Image

    from mura_cli.report.images import overlay

    gray = np.full((4, 4), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0  # hottest: the ramp's dark red (128, 0, 0), blended at 0.6
    out = np.asarray(overlay(Image.fromarray(gray), heat)).astype(int)
    assert (out[1:, :] == 100).all() and (out[0, 1:] == 100).all()
    assert np.abs(out[0, 0] - np.array([0.4 * 100 + 0.6 * 128, 40, 40])).max() <= 1


def test_counts_are_worded_in_the_right_number():
    from mura_cli.wording import counted

    assert [counted(1, "study"), counted(2, "study"), counted(0, "image"), counted(1, "image")] == [
        "1 study",
        "2 studies",
        "0 images",
        "1 image",
    ]


def test_a_study_taller_than_a_page_leaves_no_blank_page(tmp_path, tiny_model):
    from conftest import radiograph, save_png8

    study = tmp_path / "in" / "XR_HAND" / "patient1" / "study1"
    for k in range(18):
        save_png8(radiograph(k, 120, 90), study / f"image{k:02d}.png")
    config = ScoreConfig(
        input=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), model=str(tiny_model), workers=0, pdf=True
    )
    reader = PdfReader(score_folder(config).out_dir / "report.pdf")
    pages = reader.pages[1:]  # the summary page has no pictures
    assert pages and all(len(page.images) > 0 for page in pages), [len(p.images) for p in pages]
    assert "image00.png" in pages[0].extract_text()  # the study starts under its heading


def test_error_gallery_picks_the_most_confident_mistakes_of_each_kind():
    from mura_cli.evaluation.gallery import pick_errors

    studies = pd.DataFrame(
        {
            "study_id": ["a", "b", "c", "d", "e", "f", "g"],
            "label": [0, 0, 0, 1, 1, 1, 1],
            "prediction": [1, 1, 0, 0, 0, 1, pd.NA],
            "probability": [0.7, 0.9, 0.1, 0.2, 0.05, 0.95, pd.NA],
        }
    )
    assert pick_errors(studies, 5) == {"false positive": ["b", "a"], "false negative": ["e", "d"]}
    assert pick_errors(studies, 1) == {"false positive": ["b"], "false negative": ["e"]}
    assert pick_errors(studies, 0) == {}
