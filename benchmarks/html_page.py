"""How fast report.html opens for a large run (issue 14): a synthetic run of N images in N/3 studies,
its page written by mura-cli's own writer, opened from file:// in headless Chromium.

    python benchmarks/html_page.py --images 10000

Prints a table and appends it to benchmarks/RESULTS.md: the time until the first page of rows is
drawn, and the same for a run of 100 images measured in the same run (the baseline).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import environment, publish  # noqa: E402


class _Store:
    """Stands in for the thumbnail store: one small JPEG pair for every image."""

    def __init__(self):
        buffer = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((200, 160)) * 255).astype(np.uint8)).save(
            buffer, "JPEG"
        )
        from mura_cli.report.images import Thumbnails

        self.thumbs = Thumbnails(buffer.getvalue(), buffer.getvalue())

    def get(self, path):
        return self.thumbs


def write_page(folder: Path, images: int) -> Path:
    from mura_cli.report.html import write_review_page
    from mura_cli.results.record import Counts, ModelIdentity, RunRecord, Tool

    rng = np.random.default_rng(1)
    study = [f"XR_WRIST/patient{k // 3:05d}/study1" for k in range(images)]
    table = pd.DataFrame(
        {
            "path": [f"{s}/image{k % 3 + 1}.png" for k, s in enumerate(study)],
            "study_id": study,
            "body_part": "WRIST",
            "probability": rng.random(images),
            "error": "",
        }
    )
    studies = table.groupby("study_id", as_index=False).agg(probability=("probability", "mean"))
    studies = studies.assign(
        body_part="WRIST", label=pd.NA, prediction=(studies["probability"] >= 0.5).astype(int)
    )
    run = RunRecord(
        status="finished",
        started="2026-12-01T00:00:00+00:00",
        tool=Tool(version="bench"),
        config={},
        model=ModelIdentity("bench", "0" * 64),
        input_root="/data",
        threshold=0.5,
        counts=Counts(images, images, 0, len(studies), 0, 0, 0),
    )
    folder.mkdir(parents=True)
    return write_review_page(run, table, studies, _Store(), folder)


def open_time(page_path: Path, chromium: str, repeats: int) -> float:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="domcontentloaded")
            page.wait_for_selector("tbody tr")
            times.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs a chromium executable (Debian package 'chromium')")
    work = Path(tempfile.mkdtemp(prefix="mura-html-"))
    try:
        small, large = write_page(work / "small", 100), write_page(work / "large", args.images)
        base, big = open_time(small, chromium, args.repeats), open_time(large, chromium, args.repeats)
        rows = [
            ("report.html, 100 images: first rows drawn", f"{base:.2f} s", "1.00x"),
            (
                f"report.html, {args.images} images: first rows drawn",
                f"{big:.2f} s",
                f"{big / base:.2f}x of 100 images",
            ),
            (
                f"report.html, {args.images} images: page size",
                f"{large.stat().st_size / 1e6:.1f} MB",
                "thumbnails are files beside it",
            ),
        ]
        publish(rows, environment("cpu"), "benchmarks/html_page.py", args.results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
