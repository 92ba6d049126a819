"""Long reports: rendered as parts in parallel worker processes, then numbered "Page X of Y" across
the parts and joined into one PDF.

WeasyPrint lays a document out on one core, and its memory grows with the document; parts bound both.
Each part is its own HTML document (same templates and stylesheet), so its page count is known only
once it is laid out. Hence two rounds: the workers render the parts (page-number box left empty),
then stamp each part with its page numbers (page_numbers.html.j2, under the report's own @page rules,
so the number lands where a one-document report has it); pikepdf joins the parts and their bookmarks.
The workers are separate programs fed through pipes (mura_cli/report/worker.py), not multiprocessing:
spawning would re-import the caller's main module, which breaks unguarded scripts.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mura_cli.environment import child_environment
from mura_cli.errors import ReportError
from mura_cli.report.worker import answer

MAX_WORKERS = 8
PARTS_PREFIX = ".report-parts-"


@dataclass(frozen=True)
class Part:
    html: str
    pictures: dict[str, bytes]


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def _write_job(folder: Path, index: int, part: Part) -> str:
    """The part's job line; file names are relative to ``folder``, the workers' working directory."""
    job = folder / f"{index:05d}.pkl"
    with open(job, "wb") as handle:
        pickle.dump((part.html, part.pictures), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return f"part\t{job.name}"


class _Pool:
    """Worker processes, each driven by a thread that hands it the next job line and keeps its answer."""

    def __init__(self, folder: Path, workers: int):
        self.folder = folder
        self.jobs: queue.Queue = queue.Queue(maxsize=workers)  # parts are built lazily: few wait in line
        self.answers: dict[str, str] = {}
        self.processes: list[subprocess.Popen] = []
        self.threads = [threading.Thread(target=self._drive, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def _start(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])  # importable even from a bare checkout
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # never import from the working directory
        return subprocess.Popen(
            [sys.executable, *safe_path, "-m", "mura_cli.report.worker"],
            env=child_environment(python_path_first=package_root),
            cwd=self.folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def _drive(self) -> None:
        process = self._start()
        self.processes.append(process)
        try:
            while (line := self.jobs.get()) is not None:
                try:
                    process.stdin.write(line + "\n")
                    process.stdin.flush()
                    self.answers[line] = (
                        process.stdout.readline().strip() or "error a report worker process died"
                    )
                except OSError:
                    self.answers[line] = "error a report worker process died"
                self.jobs.task_done()
        finally:
            with contextlib.suppress(OSError):  # a killed worker's pipe is already broken
                process.stdin.close()
            process.wait()

    def run(self, lines: Iterable[str]) -> list[tuple[str, str]]:
        """(line, answer) in the order of ``lines``, once all are done; after a failure no further
        job is handed out (its error is among the answers)."""
        sent = []
        for line in lines:
            if any(not text.startswith("ok") for text in list(self.answers.values())):
                break
            self.jobs.put(line)
            sent.append(line)
        self.jobs.join()
        return [(line, self.answers[line]) for line in sent]

    def abort(self) -> None:
        """Stop the workers now (the run was interrupted); their threads then drain and end."""
        for process in list(self.processes):
            if process.poll() is None:
                process.kill()

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


def _checked(answered: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for _, text in answered:
        if not text.startswith("ok"):
            raise ReportError(text.removeprefix("error ").strip())
    return answered


def _number_jobs(names: list[str], pages: list[int]) -> list[str]:
    total, first, lines = sum(pages), 1, []
    for name, count in zip(names, pages):
        lines.append(f"number\t{name}\t{first}\t{total}")
        first += count
    return lines


def _render_all(parts: Iterable[Part], folder: Path, workers: int) -> list[Path]:
    """Both rounds; returns the numbered parts' PDFs in order."""
    jobs = (_write_job(folder, i, part) for i, part in enumerate(parts))
    pool = _Pool(folder, workers) if workers > 1 else None
    run = pool.run if pool else (lambda batch: [(line, answer(line, folder)) for line in batch])  # noqa: E731
    try:
        rendered = _checked(run(jobs))
        names = [Path(line.split("\t")[1]).with_suffix(".pdf").name for line, _ in rendered]
        _checked(run(_number_jobs(names, [int(text.split()[1]) for _, text in rendered])))
    except BaseException:  # Ctrl-C, SIGTERM or a failure: no worker goes on rendering
        if pool is not None:
            pool.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
    return [(folder / name).with_suffix(".numbered.pdf") for name in names]


def _copy_outline(items, source_pages: dict, offset: int, into: list) -> None:
    import pikepdf

    for item in items:
        dest = item.destination
        index = source_pages.get(dest[0].objgen) if isinstance(dest, pikepdf.Array) and len(dest) else None
        copy = (
            pikepdf.OutlineItem(item.title, offset + index)
            if index is not None
            else pikepdf.OutlineItem(item.title)
        )
        _copy_outline(item.children, source_pages, offset, copy.children)
        into.append(copy)


def join_parts(files: list[Path], path: Path) -> Path:
    """Concatenate the numbered parts; bookmarks of later parts go under the first part's title."""
    import pikepdf

    with pikepdf.Pdf.new() as joined:
        with joined.open_outline() as outline:
            for file in files:
                source = pikepdf.open(file)
                offset = len(joined.pages)
                if offset == 0:
                    joined.docinfo = joined.copy_foreign(source.docinfo)
                joined.pages.extend(source.pages)
                with source.open_outline() as theirs:
                    into = outline.root[0].children if len(outline.root) == 1 else outline.root
                    pages = {page.objgen: i for i, page in enumerate(source.pages)}
                    _copy_outline(theirs.root, pages, offset, outline.root if offset == 0 else into)
        temp = path.with_name(f".{path.name}.tmp")
        joined.save(temp)
    os.replace(temp, path)
    return path


OWNER_FILE = "owner.pid"


def remove_stale_parts(folder: Path) -> None:
    """Part folders left by a run that was killed (-9) while writing its PDF: those whose owner process
    (its pid in owner.pid) is gone, or that have no owner file."""
    for stale in folder.glob(PARTS_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink() and not _owner_alive(stale / OWNER_FILE):
            shutil.rmtree(stale, ignore_errors=True)


def _owner_alive(owner: Path) -> bool:
    try:
        os.kill(int(owner.read_text(encoding="utf-8").strip()), 0)
    except PermissionError:  # alive, another user's process
        return True
    except (OSError, ValueError):  # gone, or no readable owner file
        return False
    return True


def render_parts(parts: Iterable[Part], path: Path, workers: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path.parent)
    with tempfile.TemporaryDirectory(prefix=PARTS_PREFIX, dir=path.parent) as folder:
        (Path(folder) / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
        files = _render_all(parts, Path(folder), workers)
        if not files:
            raise ReportError("PDF not written: the report has no content")
        return join_parts(files, path)
