"""The results folder of `score` (and `merge`): what it holds, how its images.csv is read back, and
one rule for every command's --out (what may be written where, fresh, resumed or overwritten)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mura_cli.errors import InputError
from mura_cli.inference.predictor import IMAGE_COLUMNS

RESULT_FILES = ("images.csv", "studies.csv", "run.json", "report.pdf", "report.html")


def read_images_csv(path: Path) -> pd.DataFrame:
    """Rows of an images.csv, a last line cut off by a crash dropped."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    table["probability"] = pd.to_numeric(table["probability"], errors="coerce")
    for column in ("width", "height", "heatmap_peak_x", "heatmap_peak_y", "file_bytes", "file_mtime_ns"):
        # straight from the text to Int64: through float64, nanosecond times (~1.7e18) would lose digits
        table[column] = pd.array([_integer(v) for v in table[column]], dtype="Int64")
    return table


def _integer(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return pd.NA


def check_out_dir(
    out: Path,
    holds: Sequence[str],
    *,
    inputs: Sequence[Path] = (),
    overwrite: bool = False,
    resume: bool = False,
    can_overwrite: bool = True,
    can_resume: bool = True,
) -> list[str]:
    """Refuse an --out that is a file, that is or lies inside one of ``inputs`` (its outputs would
    become inputs of the next run, and a shard cannot be merged into itself), or that holds earlier
    results (``holds``: the file names that count) unless --overwrite or --resume says what to do with
    them. Returns the result files already there."""
    if overwrite and resume:
        raise InputError("choose one of --overwrite and --resume")
    check_out_location(out, inputs)
    existing = [name for name in holds if (out / name).exists()]
    if resume:
        if not existing:
            raise InputError(f"{out}: nothing to resume (none of {', '.join(holds)})")
        return existing
    if existing and not overwrite:
        choices = [
            *(["--resume to finish an interrupted run"] if can_resume else []),
            *(["--overwrite to replace them"] if can_overwrite else []),
        ]
        raise InputError(
            f"{out}: holds results of an earlier run ({', '.join(existing)}); "
            + (f"pass {', '.join(choices)}, or " if choices else "")
            + "choose another --out"
        )
    return existing


def check_out_location(out: Path, inputs: Sequence[Path] = ()) -> None:
    """The part of check_out_dir that does not depend on what the folder holds (checked before a run
    takes the folder's lock; what it holds is checked under the lock)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    target = out.expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if target == source:
            raise InputError(f"{out}: is also an input of this run ({given}); choose another --out")
        if source.is_dir() and target.is_relative_to(source):
            raise InputError(
                f"{out}: lies inside the input folder {given}, where its files would be read as input next "
                "time; choose an --out outside it"
            )
