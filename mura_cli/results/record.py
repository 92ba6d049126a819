"""The run record (run.json): one typed value that `score` writes (at the start, then once finished),
and that `--resume`, `merge` and the reports read back. Reading checks every field's type, so a damaged
or hand-edited run.json is one line naming the folder and the field, never a KeyError later on."""

from __future__ import annotations

import json
import types
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from mura_cli.errors import InputError
from mura_cli.results.shard import Shard
from mura_cli.results.writers import write_json

RUN_FILE = "run.json"


class _JsonShaped:
    """Dict fields hold what JSON gives back (lists, not tuples), so a record read from run.json equals
    the one that was written."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                object.__setattr__(self, f.name, _as_json(value))


def _as_json(value):
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Tool:
    name: str = "mura-cli"
    version: str = ""
    python: str = ""
    torch: str = ""


@dataclass(frozen=True)
class ModelIdentity(_JsonShaped):
    name: str
    weights_sha256: str
    path: str = ""
    config: dict = field(default_factory=dict)  # the model's config.json as loaded


@dataclass(frozen=True)
class Runtime(_JsonShaped):
    device: str
    precision: str
    reason: str
    workers: int
    batch_size: int
    heatmap_method: str
    engine: dict = field(default_factory=dict)
    glibc_tunables: str = ""
    tta: str = "none"  # the test-time augmentation used (the model's unless --tta said otherwise)


@dataclass(frozen=True)
class Counts:
    images: int
    scored: int
    failed: int
    studies: int
    skipped_files: int
    positive_studies: int
    negative_studies: int

    @classmethod
    def of(cls, images, studies, skipped_files: int = 0) -> Counts:
        """The counts of an images and a studies table (a row with an error is a failed image)."""
        failed = int((images["error"].fillna("") != "").sum())
        return cls(
            images=len(images),
            scored=len(images) - failed,
            failed=failed,
            studies=len(studies),
            skipped_files=skipped_files,
            positive_studies=int((studies["prediction"] == 1).sum()),
            negative_studies=int((studies["prediction"] == 0).sum()),
        )


@dataclass(frozen=True)
class RunRecord(_JsonShaped):
    """What made a results folder and what it holds. ``status`` is running, finished or failed."""

    status: str
    started: str
    tool: Tool
    config: dict  # ScoreConfig.to_dict()
    model: ModelIdentity
    input_root: str = ""
    input_fingerprint: str | None = None
    runtime: Runtime | None = None
    aggregation: str | None = None
    threshold: float | None = None
    counts: Counts | None = None
    seconds: dict = field(default_factory=dict)
    resumed_images: int = 0
    resumed_changed_images: int = 0
    shard: Shard | None = None
    finished: str | None = None
    report_error: str = ""
    error: str = ""
    notices: tuple = ()  # lines said to the user about the input (e.g. how studies were grouped)
    # what makes an image's row besides the weights (calibration, tta, input, grouping): --resume
    # refuses to add rows made otherwise (empty in records of older versions: not checked)
    scoring: dict = field(default_factory=dict)
    merged_from: tuple = ()  # merge: one entry per shard folder
    shards: int | None = None  # merge: how many shards made this folder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """The record from run.json's object; RecordError names the first field that is missing or of
        the wrong type. Fields it does not know (a newer version's) are ignored."""
        return _parse(cls, data, "")


class RecordError(ValueError):
    """run.json does not hold a run record."""


def read_run_record(folder: Path) -> RunRecord:
    """The folder's run.json; an InputError naming the folder when it is absent, unreadable or damaged."""
    path = Path(folder) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no {RUN_FILE} (not a score run's folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder}: {RUN_FILE} cannot be read ({exc})") from None
    try:
        return RunRecord.from_dict(data)
    except RecordError as exc:
        raise InputError(f"{folder}: {RUN_FILE} is damaged: {exc}") from None


def write_run_record(record: RunRecord, folder: Path) -> Path:
    return write_json(record.to_dict(), Path(folder) / RUN_FILE)


def _parse(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise RecordError(f"{where.rstrip('.') or 'the file'} is not a JSON object")
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], where + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise RecordError(f"'{where}{f.name}' is missing")
    return cls(**values)


def _value(hint, value: Any, where: str):
    if get_origin(hint) in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if is_dataclass(hint):
        return _parse(hint, value, where + ".")
    expected = get_origin(hint) or hint
    if expected is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"'{where}' is not a list")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise RecordError(f"'{where}' is not {'an' if expected is int else 'a'} {expected.__name__}")
    return value
