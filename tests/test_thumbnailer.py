"""Thumbnails made beside the model pass (threads on accelerators, in line on the CPU): rows reach
images.csv in order and only once their thumbnails are stored."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from pypdf import PdfReader

import mura_cli.scoring.score as score_module
from mura_cli.config import ScoreConfig
from mura_cli.report.thumbnailer import Thumbnailer
from mura_cli.scoring.score import score_folder


class _Store:
    def __init__(self):
        self.stored, self.lock = [], threading.Lock()

    def put(self, path, thumbs):
        with self.lock:
            self.stored.append(path)


def test_rows_come_back_in_order_and_after_their_thumbnails():
    store = _Store()
    thumbnailer = Thumbnailer(store, threads=2)
    delays = [0.2, 0.0, 0.1, 0.0]  # the first batch is the slowest to make
    released = []

    def maker(delay):
        def make():
            time.sleep(delay)
            return object()

        return make

    for n, delay in enumerate(delays):
        for rows in thumbnailer.add([{"batch": n}], [(f"img{n}", maker(delay))]):
            assert all(f"img{row['batch']}" in store.stored for row in rows)
            released.extend(rows)
    released.extend(row for rows in thumbnailer.drain() for row in rows)
    thumbnailer.close()
    assert [row["batch"] for row in released] == [0, 1, 2, 3]
    assert sorted(store.stored) == ["img0", "img1", "img2", "img3"]


def test_a_failing_thumbnail_stops_the_run_with_its_error():
    thumbnailer = Thumbnailer(_Store(), threads=2)

    def broken():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        for _ in thumbnailer.add([{}], [("a", broken)]):
            pass
        list(thumbnailer.drain())
    thumbnailer.close()


def test_threaded_and_inline_thumbnails_give_the_same_results(mura_folder, tiny_model, tmp_path, monkeypatch):
    results = {}
    for threads in (0, 2):
        monkeypatch.setattr(score_module, "thumbnail_threads", lambda _device, n=threads: n)
        config = ScoreConfig(
            input=str(mura_folder),
            out_dir=str(tmp_path / f"t{threads}"),
            model=str(tiny_model),
            workers=0,
            pdf=True,
            batch_size=2,
        )
        results[threads] = score_folder(config)
    pd.testing.assert_frame_equal(results[0].images, results[2].images)
    reader = PdfReader(results[2].out_dir / "report.pdf")
    embedded = {image.indirect_reference.idnum for page in reader.pages for image in page.images}
    assert len(embedded) == 2 * int((results[2].images["error"] == "").sum())
