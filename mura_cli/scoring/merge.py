"""merge_shards(dirs, out): the shard results of `score --shard I/N` combined into exactly what one
run over the whole input would have written (same rows, same order), plus one report.

Every shard is checked before anything is written: a finished shard run of the same input folder,
model (weights and config), settings and shard count; its images.csv holding every row its run.json
counts; no image or study in two shards; the output folder neither one of the shards nor earlier
results (unless ``overwrite``). Each refusal is one line naming the folder."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path

import pandas as pd

from mura_cli.config import MergeConfig, ModelConfig, ScoreConfig
from mura_cli.errors import InputError, ModelError, writes_into
from mura_cli.results.folder import RESULT_FILES, check_out_dir, read_images_csv
from mura_cli.results.record import Counts, RunRecord, read_run_record, write_run_record
from mura_cli.results.shard import walk_order_key
from mura_cli.results.writers import write_csv

# run.json config fields that may differ between shards (where and how fast, not what)
# ("tta" is compared as scored, runtime.tta: unset means the model's, which may be what another shard named)
_FREE_SETTINGS = {"input", "out_dir", "shard", "workers", "batch_size", "device", "model", "pdf", "tta"}


def _load_shard(folder: Path) -> tuple[RunRecord, pd.DataFrame, pd.DataFrame]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    run = read_run_record(folder)
    if run.status != "finished" or run.shard is None:
        raise InputError(f"{folder}: not a finished `score --shard I/N` run")
    missing = [key for key in ("counts", "runtime", "threshold", "aggregation") if getattr(run, key) is None]
    if missing:
        raise InputError(f"{folder}: run.json lacks {', '.join(missing)}")
    for name in ("images.csv", "studies.csv"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: {name} is missing")
    try:
        studies = pd.read_csv(
            folder / "studies.csv",
            dtype={"study_id": str, "body_part": str, "patient_id": str},
            keep_default_na=False,
            na_values={"label": [""], "prediction": [""], "probability": [""]},
        )
        images = read_images_csv(folder / "images.csv")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{folder}: images.csv or studies.csv cannot be read ({exc})") from None
    counts = run.counts
    if len(images) != counts.images or len(studies) != counts.studies:
        raise InputError(
            f"{folder}: images.csv has {len(images)} rows and studies.csv {len(studies)}, but run.json "
            f"counts {counts.images} images and {counts.studies} studies (damaged or "
            "truncated)"
        )
    return run, images, studies


def _model_config(config: dict) -> dict:
    """The model config with its defaults filled in, so that a shard scored by a release that did not
    yet write a (defaulted) field compares equal to one that did; as written where it does not load."""
    try:
        return json.loads(json.dumps(ModelConfig.from_dict(config).to_dict(), default=str))
    except ModelError:
        return config


def _score_config(config: dict) -> dict:
    """The run's score settings with the defaults of those it does not name (an older release's)."""
    defaults = {f.name: f.default for f in fields(ScoreConfig) if f.default is not MISSING}
    return json.loads(json.dumps({**defaults, **config}, default=str))  # tuples as lists, as written


def _settings(run: RunRecord) -> dict:
    return {
        "config": {k: v for k, v in _score_config(run.config).items() if k not in _FREE_SETTINGS},
        "input": run.input_fingerprint or run.input_root,
        "model": _model_config(run.model.config),
        "weights_sha256": run.model.weights_sha256,
        "precision": run.runtime.precision,
        "heatmap_method": run.runtime.heatmap_method,
        "tta": run.runtime.tta,
        "threshold": run.threshold,
        "aggregation": run.aggregation,
        "shard count": run.shard.count,
    }


def _check(runs: list[RunRecord], folders: list[Path]) -> int:
    first = _settings(runs[0])
    for run, folder in zip(runs[1:], folders[1:]):
        theirs = _settings(run)
        differ = [key for key in first if theirs[key] != first[key]]
        for key in ("config", "model"):
            if key in differ:
                a, b = first[key] or {}, theirs[key] or {}
                fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                differ[differ.index(key)] = f"{key} ({', '.join(fields)})"
        if differ:
            raise InputError(f"{folder}: scored with other settings than {folders[0]}: {'; '.join(differ)}")
    count = first["shard count"]
    have = sorted(run.shard.index for run in runs)
    if have != list(range(count)):
        missing = sorted(set(range(count)) - set(have))
        raise InputError(
            f"shards {', '.join(f'{i}/{count}' for i in missing) or '(duplicates)'} missing: "
            f"got {', '.join(f'{i}/{count}' for i in have)}"
        )
    return count


def _check_disjoint(loaded: list, folders: list[Path]) -> None:
    for column, table_index, what in (("path", 1, "image"), ("study_id", 2, "study")):
        owner: dict[str, Path] = {}
        for parts, folder in zip(loaded, folders):
            for key in parts[table_index][column]:
                if key in owner and owner[key] != folder:
                    raise InputError(f"{folder}: {what} {key} is also in {owner[key]} (overlapping shards)")
                owner[key] = folder


def merge_shards(config: MergeConfig) -> RunRecord:
    """One results folder from finished shards; a full or read-only --out is one OutputError line."""
    with writes_into(
        Path(config.out_dir),
        "the shards are untouched: make room (or fix the permission) and merge again with --overwrite",
    ):
        return _merge(list(config.shards), Path(config.out_dir), config.pdf, config.overwrite)


def _merge(folders: list[str | Path], out: Path, pdf: bool, overwrite: bool) -> RunRecord:
    folders = [Path(f) for f in folders]
    check_out_dir(out, RESULT_FILES, inputs=folders, overwrite=overwrite, can_resume=False)
    loaded = [_load_shard(f) for f in folders]
    runs = [run for run, _, _ in loaded]
    count = _check(runs, folders)
    _check_disjoint(loaded, folders)
    if pdf and not all(run.config.get("pdf") for run in runs):
        bare = next(f for f, run in zip(folders, runs) if not run.config.get("pdf"))
        raise InputError(
            f"{bare}: scored without --pdf, so it kept no thumbnails for merge --pdf; score the shards "
            "with --pdf, or merge without it"
        )
    images = pd.concat([imgs for _, imgs, _ in loaded], ignore_index=True)
    images = images.sort_values("path", key=lambda p: p.map(walk_order_key), kind="stable").reset_index(
        drop=True
    )
    studies = (
        pd.concat([s for _, _, s in loaded], ignore_index=True).sort_values("study_id").reset_index(drop=True)
    )
    for column in ("label", "prediction"):
        studies[column] = studies[column].astype("Int64")
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:  # --overwrite: nothing of the earlier results may stay beside the new ones
        (out / name).unlink(missing_ok=True)
    write_csv(images, out / "images.csv")
    write_csv(studies, out / "studies.csv")
    run = _merged_run(runs, images, studies, folders, count)
    if pdf:
        from mura_cli.report.pdf import render_score_report
        from mura_cli.report.thumbstore import ThumbStore

        render_score_report(
            run, images, studies, _Stores([ThumbStore(f) for f in folders]), out / "report.pdf"
        )
    write_run_record(run, out)
    return run


class _Stores:
    def __init__(self, stores):
        self.stores = stores

    def get(self, rel_path: str):
        return next((t for s in self.stores if (t := s.get(rel_path)) is not None), None)


def _merged_run(
    runs: list[RunRecord], images: pd.DataFrame, studies: pd.DataFrame, folders, count: int
) -> RunRecord:
    counts = Counts.of(images, studies, runs[0].counts.skipped_files)
    merged_from = tuple(
        {"folder": str(f.resolve()), "shard": asdict(r.shard), "seconds": r.seconds}
        for f, r in zip(folders, runs)
    )
    return replace(
        runs[0],
        counts=counts,
        shard=None,
        seconds={},
        resumed_images=0,
        resumed_changed_images=0,
        merged_from=merged_from,
        shards=count,
    )
