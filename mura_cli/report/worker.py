"""The two jobs of a report worker, and the worker program (`python -m mura_cli.report.worker`) that
runs them for mura_cli/report/parts.py: one job per line on stdin, one answer per line on stdout
("ok [pages]" or "error <message>"). A separate program fed through pipes, not multiprocessing, so that
a user's own script is never re-imported by the workers."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

from mura_cli.errors import ReportError
from mura_cli.report.render import pdf_bytes, render_html


def render_part(job: Path) -> int:
    """A pickled (html, pictures) part -> the PDF beside it; returns its page count."""
    import pikepdf

    with open(job, "rb") as handle:
        html, pictures = pickle.load(handle)
    data = pdf_bytes(html, pictures)
    job.with_suffix(".pdf").write_bytes(data)
    with pikepdf.open(io.BytesIO(data)) as pdf:
        return len(pdf.pages)


def number_part(part: Path, first: int, total: int) -> Path:
    """Stamp "Page first.. of total" (page_numbers.html.j2, laid out by the report's own @page rules)
    over a part's pages; writes <part>.numbered.pdf."""
    import pikepdf

    out = part.with_suffix(".numbered.pdf")
    with pikepdf.open(part) as pdf:
        html = render_html("page_numbers.html.j2", pages=len(pdf.pages), first=first, total=total)
        with pikepdf.open(io.BytesIO(pdf_bytes(html))) as stamps:
            if len(stamps.pages) != len(pdf.pages):
                raise ReportError(
                    f"PDF not written: page numbers came out {len(stamps.pages)} pages for {len(pdf.pages)}"
                )
            for page, stamp in zip(pdf.pages, stamps.pages):
                page.add_overlay(stamp)
            pdf.save(out)
    return out


def run_job(line: str, folder: Path) -> str:
    """``part<TAB>name.pkl`` or ``number<TAB>name.pdf<TAB>first<TAB>total``, names inside ``folder``."""
    kind, *args = line.split("\t")
    if kind == "part":
        return f"ok {render_part(folder / args[0])}"
    if kind == "number":
        number_part(folder / args[0], int(args[1]), int(args[2]))
        return "ok"
    raise ValueError(f"unknown job {kind!r}")


def answer(line: str, folder: Path) -> str:
    try:
        text = run_job(line.rstrip("\n"), folder)
    except ReportError as exc:
        text = f"error {exc}"
    except Exception as exc:  # anything else still answers, so the caller never waits forever
        text = f"error PDF not written: {type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _leave_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when the process that started it is gone (killed with -9, say), even mid-job."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    # workers start in their own session (parts.py), so a terminal's Ctrl-C reaches the parent alone, which
    # stops them; a SIGINT sent to a worker anyway leaves it silent. It ends when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_leave_with_parent, args=(os.getppid(),), daemon=True).start()
    for line in sys.stdin:
        sys.stdout.write(answer(line, Path.cwd()) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
