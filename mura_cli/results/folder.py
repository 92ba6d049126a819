"""One rule for every command's --out: what may be written where, fresh, resumed or overwritten."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mura_cli.errors import InputError


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
