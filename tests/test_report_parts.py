"""Long score reports rendered in parts (in parallel worker processes or one after another) must read
exactly like one document: every study and picture present, in order, numbered "Page X of Y"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from mura_cli.errors import ReportError
from mura_cli.inputs.geometry import fit_geometry
from mura_cli.report import pdf as report_pdf
from mura_cli.report.images import make_thumbnails
from mura_cli.report.parts import Part, render_parts
from mura_cli.report.render import css_string
from mura_cli.report.worker import answer
from mura_cli.results.record import RunRecord

N_STUDIES = 30


def _report_inputs(n_studies: int = N_STUDIES):
    rng = np.random.default_rng(7)
    paths, study_ids = [], []
    for s in range(n_studies):
        for i in range(1 + s % 4):
            paths.append(f"XR_HAND/patient{s:05d}/study1/image{i}.png")
            study_ids.append(f"XR_HAND/patient{s:05d}/study1")
    images = pd.DataFrame(
        {"path": paths, "study_id": study_ids, "probability": rng.random(len(paths)), "error": ""}
    )
    images.loc[5, ["probability", "error"]] = [np.nan, "not a PNG, JPEG or DICOM file"]
    studies = images.groupby("study_id", as_index=False, sort=False).agg(
        probability=("probability", "mean"), n_images=("path", "size")
    )
    studies = studies.assign(
        body_part="HAND",
        label=pd.array([pd.NA] * n_studies, dtype="Int64"),
        n_failed=0,
        prediction=pd.array((studies["probability"] >= 0.5).astype(int), dtype="Int64"),
    )
    geometry = fit_geometry(300, 200, 64, 64, "letterbox")
    thumbs = {
        p: make_thumbnails(
            (rng.random((64, 64)) * 255).astype(np.uint8), geometry, rng.random((64, 64)).astype(np.float32)
        )
        for p, e in zip(paths, images["error"])
        if not e
    }
    run = {
        "status": "finished",
        "started": "2026-11-22T10:00:00",
        "tool": {"version": "test"},
        "config": {"input": "in"},
        "threshold": 0.5,
        "aggregation": "mean",
        "counts": {
            "scored": len(thumbs),
            "images": len(thumbs) + 1,
            "failed": 1,
            "skipped_files": 0,
            "studies": n_studies,
            "positive_studies": 1,
            "negative_studies": 1,
        },
        "model": {
            "name": "m",
            "weights_sha256": "0" * 64,
            "config": {
                "architecture": "a",
                "input_size": [3, 64, 64],
                "task": "t",
                "positive_class": "abnormal",
                "negative_class": "normal",
            },
        },
        "runtime": {
            "device": "cpu",
            "precision": "fp32",
            "reason": "test",
            "workers": 0,
            "batch_size": 4,
            "heatmap_method": "cam",
        },
    }
    return RunRecord.from_dict(run), images, studies, thumbs


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The same report as one document, and in parts rendered by 2 workers and by 1 (in process)."""
    folder = tmp_path_factory.mktemp("reports")
    run, images, studies, thumbs = _report_inputs()
    out = {"one": report_pdf.render_score_report(run, images, studies, thumbs, folder / "one.pdf")}
    counted = []

    def counting(parts, path, workers):
        def count(items):
            for item in items:
                counted.append(workers)
                yield item

        return render_parts(count(parts), path, workers)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_pdf, "ONE_DOCUMENT", 0)
        patch.setattr(report_pdf, "PART_BUDGET", (100, 150))  # about 6 studies per part
        patch.setattr(report_pdf, "render_parts", counting)
        for name, workers in (("parallel", 2), ("serial", 1)):
            out[name] = report_pdf.render_score_report(
                run, images, studies, thumbs, folder / f"{name}.pdf", workers=workers
            )
    assert counted.count(2) == counted.count(1) >= 5
    return out, images, studies


def _pages(path) -> list[str]:
    return [page.extract_text() for page in PdfReader(path).pages]


def test_parts_are_many_and_numbered_across_the_whole_report(reports):
    paths, _, _ = reports
    pages = _pages(paths["parallel"])
    for number, text in enumerate(pages, start=1):
        assert f"Page {number} of {len(pages)}" in text
        assert "Research use only, not a medical device" in text
        if number > 1:  # running header on every later page, in every part
            assert "Radiograph scoring report" in text and "2026-11-22T10:00:00" in text


def test_parallel_and_serial_parts_give_the_same_report(reports):
    paths, _, _ = reports
    assert _pages(paths["parallel"]) == _pages(paths["serial"])


def test_parts_keep_every_study_row_and_picture_in_order(reports):
    paths, images, studies = reports
    text = " ".join(_pages(paths["parallel"])).replace("\n", " ")
    ranked = studies.sort_values("probability", ascending=False)["study_id"].tolist()
    table = text[: text.index("Images and heatmaps")]
    positions = [table.index(study) for study in ranked]
    assert positions == sorted(positions)
    assert f"{N_STUDIES} {ranked[-1]}" in table  # row numbers continue across parts
    assert "not a PNG, JPEG or DICOM file" in text
    reader = PdfReader(paths["parallel"])
    embedded = {image.indirect_reference.idnum for page in reader.pages for image in page.images}
    assert len(embedded) == 2 * int((images["error"] == "").sum())


def test_parts_keep_the_bookmarks_pointing_at_their_pages(reports):
    paths, _, _ = reports
    reader = PdfReader(paths["parallel"])
    ((title, children),) = [(item, reader.outline[1]) for item in reader.outline[:1]]
    assert title.title == "Radiograph scoring report"
    names = {child.title: reader.get_destination_page_number(child) for child in children}
    assert list(names) == [
        "Summary",
        "Studies by probability",
        "Files that could not be scored (1)",
        "Images and heatmaps",
    ]
    start = names["Images and heatmaps"]
    assert "Images and heatmaps" in reader.pages[start].extract_text()
    assert reader.metadata.title == "Radiograph scoring report"


def test_a_failing_part_is_one_clear_error_and_leaves_no_file(tmp_path):
    target = tmp_path / "report.pdf"
    with pytest.raises(ReportError) as failure:
        render_parts([Part("<p>fine</p>", {}), Part(None, {})], target, workers=2)
    assert str(failure.value).startswith("PDF not written") and "\n" not in str(failure.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_worker_answers_a_broken_job_with_one_error_line(tmp_path):
    text = answer("part\tmissing.pkl", tmp_path)
    assert text.startswith("error PDF not written") and "missing.pkl" in text and "\n" not in text


def test_parts_work_from_a_script_without_a_main_guard(tmp_path):
    """Workers are separate programs: a user's unguarded script is not re-run by them."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from tests_helper import build
        build()
        print("built once")
    """)
    )
    (tmp_path / "tests_helper.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_report_parts import _report_inputs
        from mura_cli.report import pdf as report_pdf
        def build():
            report_pdf.ONE_DOCUMENT, report_pdf.PART_BUDGET = 0, (100, 150)
            run, images, studies, thumbs = _report_inputs(12)
            report_pdf.render_score_report(run, images, studies, thumbs, {str(tmp_path / "r.pdf")!r}, workers=2)
    """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("built once") == 1
    assert len(PdfReader(tmp_path / "r.pdf").pages) >= 3


def test_css_strings_cannot_leave_their_quotes_or_the_style_element():
    value = css_string('a "quoted" \\ name </style><script>\nx')
    assert '"' not in value.replace('\\"', "") and "</style>" not in value and "\n" not in value


def test_stale_part_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    from mura_cli.report.parts import OWNER_FILE, PARTS_PREFIX

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale, orphan, live = (tmp_path / f"{PARTS_PREFIX}{name}" for name in ("stale", "orphan", "live"))
    for folder in (stale, orphan, live):
        folder.mkdir()
        (folder / "00000.pkl").write_bytes(b"left over")
    (stale / OWNER_FILE).write_text(dead.stdout)  # a process that has ended (killed -9, say)
    (live / OWNER_FILE).write_text(f"{os.getppid()}\n")  # a process that is running
    render_parts([Part("<p>fine</p>", {})], tmp_path / "report.pdf", workers=1)
    assert not stale.exists() and not orphan.exists() and live.exists()
    assert (tmp_path / "report.pdf").is_file()


def _worker(**kwargs):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "mura_cli.report.worker"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_a_worker_stays_silent_on_ctrl_c_and_ends_with_its_input():
    worker = _worker()
    time.sleep(1.5)  # imported and waiting for a job
    worker.send_signal(signal.SIGINT)  # what Ctrl-C sends to the whole process group
    time.sleep(0.3)
    assert worker.poll() is None
    out, err = worker.communicate("", timeout=30)
    assert worker.returncode == 0 and err == "" and out == ""


def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """After kill -9 of the run, no worker lives on."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "PYTHONPATH": {str(Path(__file__).resolve().parents[1])!r}}}
        worker = subprocess.Popen([sys.executable, "-P", "-m", "mura_cli.report.worker"], env=env,
                                  stdin=subprocess.PIPE)
        # a second holder of the worker's stdin, so that its input does not end with the parent
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                  pass_fds=(worker.stdin.fileno(),))
        print(worker.pid, holder.pid, flush=True)
        time.sleep(600)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True)
    pid, holder = map(int, parent.stdout.readline().split())
    try:
        time.sleep(1.5)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid)
    finally:
        os.kill(holder, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return True
