"""merge_shards(dirs, out): the shard results of `score --shard I/N` combined into exactly what one
run over the whole input would have written (same rows, same order), plus one report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mura_cli.errors import InputError
from mura_cli.report.tables import write_csv, write_json
from mura_cli.score import read_images_csv
from mura_cli.shard import walk_order_key


def _load_shard(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{folder}: no readable run.json (not a finished score run)") from None
    if run.get("status") != "finished" or not run.get("shard"):
        raise InputError(f"{folder}: not a finished `score --shard I/N` run")
    studies = pd.read_csv(folder / "studies.csv", dtype={"study_id": str, "body_part": str, "patient_id": str},
                          keep_default_na=False, na_values={"label": [""], "prediction": [""], "probability": [""]})
    return run, read_images_csv(folder / "images.csv"), studies


def _check(runs: list[dict], folders: list[Path]) -> int:
    first = runs[0]
    count = first["shard"]["count"]
    for run, folder in zip(runs, folders):
        for key in ("weights_sha256",):
            if run["model"][key] != first["model"][key]:
                raise InputError(f"{folder}: made with another model than {folders[0]}")
        if run["config"]["input"] != first["config"]["input"] or run["shard"]["count"] != count:
            raise InputError(f"{folder}: another input or shard count than {folders[0]}")
        if run["threshold"] != first["threshold"] or run["aggregation"] != first["aggregation"]:
            raise InputError(f"{folder}: another threshold or aggregation than {folders[0]}")
    have = sorted(run["shard"]["index"] for run in runs)
    if have != list(range(count)):
        missing = sorted(set(range(count)) - set(have))
        raise InputError(f"shards {', '.join(f'{i}/{count}' for i in missing) or '(duplicates)'} missing: "
                         f"got {', '.join(f'{i}/{count}' for i in have)}")
    return count


def merge_shards(folders: list[str | Path], out_dir: str | Path, pdf: bool = False) -> dict:
    folders = [Path(f) for f in folders]
    loaded = [_load_shard(f) for f in folders]
    runs = [run for run, _, _ in loaded]
    count = _check(runs, folders)
    images = pd.concat([imgs for _, imgs, _ in loaded], ignore_index=True)
    images = images.sort_values("path", key=lambda p: p.map(walk_order_key), kind="stable").reset_index(drop=True)
    studies = pd.concat([s for _, _, s in loaded], ignore_index=True).sort_values("study_id").reset_index(drop=True)
    for column in ("label", "prediction"):
        studies[column] = studies[column].astype("Int64")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(images, out / "images.csv")
    write_csv(studies, out / "studies.csv")
    run = _merged_run(runs, images, studies, folders, count)
    if pdf:
        from mura_cli.report.pdf import render_score_report
        from mura_cli.report.thumbstore import ThumbStore

        render_score_report(run, images, studies, _Stores([ThumbStore(f) for f in folders]), out / "report.pdf")
    write_json(run, out / "run.json")
    return run


class _Stores:
    def __init__(self, stores):
        self.stores = stores

    def get(self, rel_path: str):
        return next((t for s in self.stores if (t := s.get(rel_path)) is not None), None)


def _merged_run(runs: list[dict], images: pd.DataFrame, studies: pd.DataFrame, folders, count: int) -> dict:
    run = {k: v for k, v in runs[0].items() if k not in ("shard", "seconds", "resumed_images")}
    failed = int((images["error"].fillna("") != "").sum())
    run["counts"] = {**runs[0]["counts"], "images": len(images), "scored": len(images) - failed, "failed": failed,
                     "studies": len(studies), "positive_studies": int((studies["prediction"] == 1).sum()),
                     "negative_studies": int((studies["prediction"] == 0).sum())}
    run["merged_from"] = [{"folder": str(f.resolve()), "shard": r["shard"], "seconds": r.get("seconds", {})}
                          for f, r in zip(folders, runs)]
    run["shards"] = count
    return run
