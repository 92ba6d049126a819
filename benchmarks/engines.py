"""Engines side by side on the shipped model (issue 13): raw backbone+head rate per engine, `score`
end to end with heatmaps per engine, and how far the engine's images.csv is from torch's.

    python benchmarks/engines.py            # FracAtlas images from ../shared, else a synthetic corpus

Everything is measured in one run, interleaved, on this machine; the table goes to stdout and is
appended to benchmarks/ENGINES.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _same_allocator_as_mura_cli, build_corpus, environment, publish  # noqa: E402


def fracatlas_corpus(work: Path, images: int) -> Path | None:
    source = HERE.parent.parent / "shared" / "fracatlas" / "images"
    if not source.is_dir():
        return None
    folder = work / "fracatlas"
    folder.mkdir()
    for path in sorted(source.glob("*.jpg"))[:images]:
        shutil.copy(path, folder / path.name)
    return folder


def raw_rates(model_dir: Path, batch: int, seconds: float, cache: Path) -> dict[str, float]:
    """Images/s of the backbone and head on random input, torch eager (channels_last) vs OpenVINO."""
    from mura_cli.inference.device import create_runtime
    from mura_cli.inference.predictor import Predictor
    from mura_cli.model.factory import load_model

    loaded = load_model(model_dir)
    runtime = create_runtime("cpu", "fp32")
    rates = {}
    for engine in ("torch", "openvino"):
        started = time.perf_counter()
        predictor = Predictor(loaded, runtime, heatmaps=True, engine=engine, engine_cache=cache)
        rates[f"{engine}_setup_s"] = time.perf_counter() - started  # OpenVINO: export + probe check
        x = predictor.prepare(
            torch.randint(0, 255, (batch, 1, *loaded.config.input_size[1:]), dtype=torch.uint8)
        )
        predictor._forward(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor._forward(x)
            count += batch
        rates[predictor.engine.name] = count / (time.perf_counter() - started)
    return rates


def score_once(
    corpus: Path, model: str, out: Path, engine: str, batch: int
) -> tuple[float, pd.DataFrame, dict]:
    from mura_cli.config import ScoreConfig
    from mura_cli.scoring.score import score_folder

    started = time.perf_counter()
    result = score_folder(
        ScoreConfig(
            input=str(corpus),
            out_dir=str(out),
            model=model,
            engine=engine,
            batch_size=batch,
            precision="fp32",
        ),
        overwrite=True,
    )
    return (
        len(result.images) / (time.perf_counter() - started),
        result.images,
        result.run.runtime.engine,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder or name (default: the shipped default)")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=HERE / "ENGINES.md")
    args = parser.parse_args()
    _same_allocator_as_mura_cli()  # the malloc tuning that `mura-cli score` runs with
    from mura_cli.environment import ENGINE_CACHE_ENV
    from mura_cli.inference import engines
    from mura_cli.model.factory import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    work = Path(tempfile.mkdtemp(prefix="mura-engines-"))
    cache = work / "engine-cache"
    os.environ[ENGINE_CACHE_ENV] = str(cache)  # a fresh export: the first run below includes it
    try:
        corpus = fracatlas_corpus(work, args.images) or build_corpus(work / "synthetic", args.images)
        raw = raw_rates(model_dir, args.batch, args.seconds, cache)
        score_once(corpus, str(model_dir), work / "warm", "openvino", args.batch)  # warm-up; then alternate
        rates, tables, engines = {"torch": [], "openvino": []}, {}, {}
        for _ in range(args.repeats):
            for engine in ("torch", "openvino"):
                rate, tables[engine], engines[engine] = score_once(
                    corpus, str(model_dir), work / engine, engine, args.batch
                )
                rates[engine].append(rate)
        e2e = {engine: statistics.median(values) for engine, values in rates.items()}
        a, b = tables["torch"], tables["openvino"]
        difference = float(
            np.nanmax(np.abs(a["probability"].to_numpy(float) - b["probability"].to_numpy(float)))
        )
        same_peak = float(
            (
                (a["heatmap_peak_x"] == b["heatmap_peak_x"]) & (a["heatmap_peak_y"] == b["heatmap_peak_y"])
            ).mean()
        )
        rows = [
            (
                "model",
                f"{model_dir.name}",
                f"{len(a)} images ({'FracAtlas' if 'fracatlas' in str(corpus) else 'synthetic'}), batch {args.batch}, fp32",
            ),
            ("raw forward + head + CAM, torch eager", f"{raw['torch']:.1f} img/s", "1.00x"),
            (
                "raw forward + head + CAM, OpenVINO",
                f"{raw['openvino']:.1f} img/s",
                f"{raw['openvino'] / raw['torch']:.2f}x of torch",
            ),
            (
                "score end to end with heatmaps, torch",
                f"{e2e['torch']:.1f} img/s",
                f"{e2e['torch'] / raw['torch']:.2f}x of torch raw",
            ),
            (
                "score end to end with heatmaps, OpenVINO",
                f"{e2e['openvino']:.1f} img/s",
                f"{e2e['openvino'] / e2e['torch']:.2f}x of torch end to end; {e2e['openvino'] / raw['openvino']:.2f}x of OpenVINO raw",
            ),
            (
                "OpenVINO export + probe check (first use of a model)",
                f"{raw['openvino_setup_s']:.1f} s",
                "cached after that, per weights and OpenVINO version",
            ),
            (
                "images.csv, OpenVINO vs torch",
                f"max |p difference| {difference:.2e}",
                f"same heatmap peak on {same_peak:.1%} of images",
            ),
        ]
        env = environment("cpu")
        env["openvino"] = engines["openvino"]["version"].split("-")[0]
        publish(rows, env, "benchmarks/engines.py", args.results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
