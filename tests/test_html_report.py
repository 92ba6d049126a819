"""score --html in a real browser (Debian's chromium through Playwright): the page opens from file://
with no request leaving it, sorts, filters, shows an image large with its heatmap, moves with the
keyboard, keeps review marks across a reload, and its reviews.csv judges the model in `evaluate`."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from mura_cli.cli import app

from conftest import radiograph, save_png8

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian package 'chromium')")
runner = CliRunner()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("html")
    for k in range(14):
        part = ("XR_WRIST", "XR_HAND")[k % 2]
        folder = root / "in" / part / f"patient{k:05d}" / "study1_negative"
        if k == 13:  # a name that would end the page's data block early if it reached the HTML parser
            folder = root / "in" / part / f"patient{k:05d}" / "a<!--<script>b</script>&"
        for i in range(1 + k % 3):
            save_png8(radiograph(10 * k + i), folder / f"image{i + 1}.png")
    (root / "in" / "XR_HAND" / "patient00001" / "study1_negative" / "broken.png").write_text("not an image")
    result = runner.invoke(
        app,
        [
            "score",
            str(root / "in"),
            "--out",
            str(root / "out"),
            "--model",
            str(tiny_model),
            "--html",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 3, result.output  # the broken file
    return root


@pytest.fixture()
def page(scored):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto((scored / "out" / "report.html").as_uri())
        yield page
        browser.close()


def _probabilities(page) -> list[float]:
    return [float(t) for t in page.locator("tbody tr td:nth-child(5)").all_inner_texts() if t != "-"]


def test_the_page_lists_sorts_and_filters_the_studies_offline(scored, page):
    studies = pd.read_csv(scored / "out" / "studies.csv")
    assert page.locator("tbody tr").count() == len(studies) == 14
    assert _probabilities(page) == sorted(_probabilities(page), reverse=True)  # most suspicious first
    assert "1 failed" in page.locator("#summary").inner_text()
    assert page.locator(".thumbs .failed").count() == 1  # the broken file, with its reason
    page.click("th[data-key=probability]")
    assert _probabilities(page) == sorted(_probabilities(page))
    page.fill("#search", "patient00003")
    assert page.locator("tbody tr").count() == 1
    page.fill("#search", "")
    page.select_option("#part", "HAND")
    assert page.locator("tbody tr").count() == 7
    page.select_option("#part", "")
    middle = float(studies["probability"].median())
    page.locator("#pmin").fill(f"{middle:.2f}")
    shown = _probabilities(page)
    assert shown and min(shown) >= round(middle, 2) - 1e-9 and len(shown) < 14
    assert page.requests and all(url.startswith("file://") for url in page.requests), page.requests
    csp = page.locator("meta[http-equiv=Content-Security-Policy]").get_attribute("content")
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp


def test_an_image_opens_large_with_its_heatmap_and_the_keyboard_moves_between_studies(page):
    first = page.locator("tbody tr").nth(0)
    first_id = first.get_attribute("data-study")
    first.locator(".thumbs img").first.click()
    assert page.locator("#viewer").is_visible()
    assert page.locator("#vtitle").inner_text().startswith(first_id)
    assert page.locator("#vheat").get_attribute("src").endswith("-heat.jpg")
    page.locator("#opacity").fill("0.2")
    assert page.locator("#vheat").evaluate("e => e.style.opacity") == "0.2"
    page.keyboard.press("j")
    second_id = page.locator("tbody tr").nth(1).get_attribute("data-study")
    assert page.locator("#vtitle").inner_text().startswith(second_id)
    page.keyboard.press("k")
    assert page.locator("#vtitle").inner_text().startswith(first_id)
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").is_visible()


def test_review_marks_survive_a_reload_and_their_csv_is_a_labels_manifest_for_evaluate(
    scored, page, tiny_model, tmp_path
):
    rows = page.locator("tbody tr")
    decisions = [rows.nth(k).locator("td:nth-child(6)").inner_text() for k in (0, 1)]
    expect = playwright.expect  # retries until the page shows it (a busy CI machine renders late)
    # the second study gets the other label than the first, so that both classes are present
    marks = [
        (0, "agree"),
        (1, "agree" if decisions[0] != decisions[1] else "disagree"),
        (2, "unsure"),  # unsure: not exported
    ]
    for row, verdict in marks:
        button = rows.nth(row).locator(f"button[data-verdict={verdict}]")
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")  # the click took before the reload
    page.reload()
    pressed = page.locator("tbody tr").nth(0).locator("button[data-verdict=agree]")
    expect(pressed).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#shown")).to_contain_text("3 reviewed")
    with page.expect_download() as download:
        page.click("#download")
    target = tmp_path / "reviews.csv"
    download.value.save_as(target)
    reviews = pd.read_csv(target)
    assert set(reviews["verdict"]) <= {"agree", "disagree"} and reviews["study_id"].nunique() == 2
    assert set(reviews["label"]) == {0, 1}
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(target),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "ev"),
            "--workers",
            "0",
            "--bootstrap",
            "100",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["study"]["overall"]["n"] == 2


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    """`evaluate --html --pdf --boxes` of a labelled MURA-layout folder with the random-weight model,
    whose answers are wrong often enough for both kinds of error."""
    from conftest import learnable_mura

    root = tmp_path_factory.mktemp("evaluated")
    data = learnable_mura(root / "data", patients=16, seed=3)
    boxes = root / "boxes.csv"
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    boxes.write_text("path,x0,y0,x1,y1\n" + "".join(f"{p},10,12,40,44\n" for p in paths))
    model = root / "model"
    shutil.copytree(tiny_model, model)
    common = ["--model", str(model), "--workers", "0", "--bootstrap", "50", "-q"]
    first = runner.invoke(app, ["evaluate", str(data), "--out", str(root / "first"), *common])
    assert first.exit_code == 0, first.output
    config = json.loads((model / "config.json").read_text())  # the median as threshold: both decisions occur
    config["threshold"] = float(pd.read_csv(root / "first" / "studies.csv")["probability"].median())
    (model / "config.json").write_text(json.dumps(config))
    result = runner.invoke(
        app,
        [
            "evaluate", str(data), "--out", str(root / "ev"), "--boxes", str(boxes), "--html", "--pdf",
            "--gallery", "3", "--no-deletion", *common,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "ev"


def test_evaluate_html_shows_the_most_confident_errors_and_opens_them(evaluated):
    from pypdf import PdfReader

    metrics = json.loads((evaluated / "metrics.json").read_text())
    studies = pd.read_csv(evaluated / "studies.csv").set_index("study_id")
    fp, fn = metrics["gallery"]["false positive"], metrics["gallery"]["false negative"]
    assert fp and fn and len(fp) <= 3 and len(fn) <= 3
    assert studies.loc[fp, "probability"].is_monotonic_decreasing and (studies.loc[fp, "label"] == 0).all()
    assert studies.loc[fn, "probability"].is_monotonic_increasing and (studies.loc[fn, "label"] == 1).all()
    wrong = studies[studies["label"] != studies["prediction"]]
    assert studies.loc[fp[0], "probability"] == wrong[wrong["label"] == 0]["probability"].max()
    text = "\n".join(p.extract_text() for p in PdfReader(evaluated / "report.pdf").pages)
    assert "Most confident errors" in text and fp[0] in text and fn[0] in text

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto((evaluated / "report.html").as_uri())
        cards = page.locator("#gallery figure")
        assert cards.count() == len(fp) + len(fn)
        assert page.locator("#gallery-fn figure").nth(0).get_attribute("data-study") == fn[0]
        page.locator("#gallery-fn figure").nth(0).click()
        assert page.locator("#viewer").get_attribute("class") == "open"
        assert page.locator("#vtitle").inner_text().startswith(fn[0])
        assert page.locator("#outcome").input_value() == "fn"
        page.keyboard.press("Escape")
        shown = page.locator("tbody tr td:nth-child(2)").all_inner_texts()
        assert shown[0] == fn[0] and set(shown) == set(wrong[wrong["label"] == 1].index)  # all misses
        assert all(url.startswith("file:") or url.startswith("data:") for url in requests)
        browser.close()


def test_a_study_whose_first_image_failed_opens_on_a_picture_and_enter_on_a_button_presses_it(page):
    page.locator("#search").fill("patient00001")
    page.evaluate("document.activeElement.blur()")  # out of the text field, so the keys reach the page
    row = page.locator("tbody tr").nth(0)
    assert "broken.png" in row.locator(".thumbs").inner_text()  # its first image has no picture
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    assert page.locator("#viewer").is_visible()
    assert page.locator("#vimg").get_attribute("src").endswith(".jpg")
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").is_visible()
    button = page.locator("tbody tr").nth(0).locator("button[data-verdict=unsure]")
    button.focus()
    page.keyboard.press("Enter")
    assert not page.locator("#viewer").is_visible()
    assert (
        page.locator("tbody tr").nth(0).locator("button[data-verdict=unsure]").get_attribute("aria-pressed")
        == "true"
    )
