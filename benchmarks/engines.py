"""Engines side by side on the shipped model (issue 13): raw backbone+head rate per engine (torch
eager and each installed exported engine: OpenVINO, ONNX Runtime), `score` end to end with heatmaps
per engine, decoding overlapped with auto's engine or in line, and how far each engine's images.csv
is from torch's. `benchmarks/run.py` includes these rows (`engine_rows`).

    python benchmarks/engines.py            # 960 FracAtlas images from ../shared, else a synthetic corpus

`score` end to end is timed on a folder of 960 images (until 2026-12-03: 240). Its fixed start (loading
the model, compiling the cached export, decoding the first batch before the engine has work, writing the
outputs) is about 0.4 s, a tenth of a 240-image run at 60 images/s and a fortieth of a 960-image one;
the rate a user waits for on a real folder is the latter.

Everything is measured in one run, interleaved, on this machine; the table goes to stdout and is
appended to benchmarks/ENGINES.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
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


def installed_engines() -> list[str]:
    """torch and the exported engines installed here, in auto's order of preference."""
    from mura_cli.inference import engines

    return ["torch", *[name for name in engines.EXPORTED if engines.can_export(name)]]


def raw_rates(model_dir: Path, batch: int, seconds: float, cache: Path) -> dict[str, float]:
    """Images/s of the backbone and head on random input, torch eager (channels_last) vs the others."""
    from mura_cli.inference.device import create_runtime
    from mura_cli.inference.predictor import Predictor
    from mura_cli.model.factory import load_model

    loaded = load_model(model_dir)
    runtime = create_runtime("cpu", "fp32")
    rates = {}
    for engine in installed_engines():
        started = time.perf_counter()
        predictor = Predictor(loaded, runtime, heatmaps=True, tta="none", engine=engine, engine_cache=cache)
        rates[f"{engine}_setup_s"] = time.perf_counter() - started  # exported engines: export + probe check
        if predictor.engine.name != engine:
            raise RuntimeError(f"{engine} could not be used: {predictor.engine.reason}")
        x = predictor.prepare(
            torch.randint(0, 255, (batch, 1, *loaded.config.input_size[1:]), dtype=torch.uint8)
        )
        predictor._forward(x)
        rates[engine] = _rate(predictor, x, seconds)
        for size in OTHER_BATCHES:  # score's batch size against smaller and larger ones
            other = predictor.prepare(
                torch.randint(0, 255, (size, 1, *loaded.config.input_size[1:]), dtype=torch.uint8)
            )
            predictor._forward(other)
            rates[f"{engine}_batch_{size}"] = _rate(predictor, other, seconds / 2)
        if engine == "openvino":  # its performance hint: score's against the other one
            predictor.backbone, default = _other_hint(predictor.backbone), predictor.backbone
            predictor._forward(x)
            rates["openvino_other_hint"] = _rate(predictor, x, seconds)
            predictor.backbone = default
        if engine == "onnxruntime":  # score's split setting against the other one
            from mura_cli.inference.engines import ONNXRUNTIME_SPLIT, OnnxRuntimeBackbone

            default = predictor.backbone
            predictor.backbone = OnnxRuntimeBackbone(default.folder, split=not ONNXRUNTIME_SPLIT)
            predictor._forward(x)
            rates["onnxruntime_other"] = _rate(predictor, x, seconds)
            predictor.backbone = default
    return rates


OTHER_BATCHES = (8, 16, 64)  # raw rates at these batch sizes beside --batch


def _batch_row(name: str, raw: dict, batch: int) -> tuple[str, str, str]:
    from mura_cli.inference.engines import LABELS

    sizes = sorted({batch, *OTHER_BATCHES})
    rates = {size: raw[name] if size == batch else raw[f"{name}_batch_{size}"] for size in sizes}
    best = max(rates, key=rates.get)
    return (
        f"raw, {LABELS[name]} at batch {' / '.join(map(str, sizes))}",
        " / ".join(f"{rates[size]:.1f}" for size in sizes) + " img/s",
        f"batch {batch} (score's) gives {rates[batch] / rates[best]:.2f}x of the best (batch {best})",
    )


def _other_hint(backbone):
    """The OpenVINO backbone of the same export with the performance hint score does not use."""
    from mura_cli.inference.engines import OPENVINO_HINTS, OpenVinoBackbone

    return OpenVinoBackbone(backbone.folder, hint=next(h for h in OPENVINO_HINTS if h != backbone.hint))


def _rate(predictor, x: torch.Tensor, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor._forward(x)
        count += len(x)
    return count / (time.perf_counter() - started)


def score_once(
    corpus: Path, model: str, out: Path, engine: str, batch: int, cache: Path
) -> tuple[float, pd.DataFrame, dict]:
    from mura_cli import environment as mura_environment
    from mura_cli.config import ScoreConfig
    from mura_cli.scoring.score import score_folder

    started = time.perf_counter()
    chosen = replace(mura_environment.Environment.from_os(), engine_cache=cache)
    with mura_environment.using(chosen):
        result = score_folder(
            ScoreConfig(
                input=str(corpus),
                out_dir=str(out),
                model=model,
                engine=engine,
                batch_size=batch,
                precision="fp32",
                tta="none",  # one pass per image: the engines, not the model's test-time augmentation
            ),
            overwrite=True,
        )
    return (
        len(result.images) / (time.perf_counter() - started),
        result.images,
        result.run.runtime.engine,
    )


def pipeline_rates(
    corpus: Path, model_dir: Path, batch: int, repeats: int, cache: Path, engine: str
) -> dict[str, float]:
    """Images/s of decode + ``engine`` + heatmap peaks (no CSV, no report), the next batch decoded in a
    thread while the engine runs (what `score` does) against decoding in line, interleaved."""
    from mura_cli.inference.device import create_runtime
    from mura_cli.inference.predictor import Predictor, predict_records
    from mura_cli.inputs.discover import discover
    from mura_cli.model.factory import load_model

    predictor = Predictor(
        load_model(model_dir),
        create_runtime("cpu", "fp32"),
        tta="none",
        engine=engine,
        engine_cache=cache,
    )
    records = list(discover(corpus).images)
    variants = [("overlapped", True, predictor.backbone), ("in line", False, predictor.backbone)]
    if engine == "openvino":
        variants.append(("overlapped, other setting", True, _other_hint(predictor.backbone)))
    if engine == "onnxruntime":
        from mura_cli.inference.engines import OnnxRuntimeBackbone

        variants.append(
            (
                "overlapped, other setting",
                True,
                OnnxRuntimeBackbone(predictor.backbone.folder, split=not predictor.backbone.split),
            )
        )
    runs: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(repeats):
        for name, overlap, backbone in variants:
            predictor.backbone = backbone
            started = time.perf_counter()
            for _result in predict_records(predictor, records, batch, 0, overlap=overlap):
                pass
            runs[name].append(len(records) / (time.perf_counter() - started))
    predictor.backbone = variants[0][2]
    return {name: statistics.median(values) for name, values in runs.items()}


def engine_rows(model_dir: Path, corpus: Path, work: Path, batch: int, repeats: int, seconds: float):
    """The engine rows (measurement, result, ratio) and the engines' versions; exports are made fresh
    in ``work`` and timed."""
    from mura_cli.inference.engines import LABELS

    cache = work / "engine-cache"
    names = installed_engines()
    best = names[1] if len(names) > 1 else "torch"  # what `--engine auto` takes here
    raw = raw_rates(model_dir, batch, seconds, cache)
    pipeline = {name: pipeline_rates(corpus, model_dir, batch, repeats, cache, name) for name in names[1:]}
    score_once(corpus, str(model_dir), work / "warm", best, batch, cache)  # warm-up; then alternate
    rates, tables, info = {name: [] for name in names}, {}, {}
    for k in range(repeats):
        # each repeat starts with another engine: the one measured after torch ran slower (torch's
        # threads still spin for a while after it ends), which swapped the engines' order between runs
        for engine in names[k % len(names) :] + names[: k % len(names)]:
            rate, tables[engine], info[engine] = score_once(
                corpus, str(model_dir), work / engine, engine, batch, cache
            )
            rates[engine].append(rate)
    e2e = {engine: statistics.median(values) for engine, values in rates.items()}
    kind = "FracAtlas" if "fracatlas" in str(corpus) else "synthetic"
    rows = [
        (
            "engines: model",
            f"{model_dir.name}",
            f"{len(tables['torch'])} images ({kind}), batch {batch}, fp32",
        )
    ]
    for name in names:
        ratio = "1.00x" if name == "torch" else f"{raw[name] / raw['torch']:.2f}x of torch"
        rows.append((f"raw forward + head + CAM, {LABELS[name]}", f"{raw[name]:.1f} img/s", ratio))
    rows.extend(_batch_row(name, raw, batch) for name in names)
    if "openvino_other_hint" in raw:
        from mura_cli.inference.engines import OPENVINO_HINT, OPENVINO_HINTS

        other = next(h for h in OPENVINO_HINTS if h != OPENVINO_HINT).lower()
        rows.append(
            (
                f"raw, OpenVINO with the {other} hint / the {OPENVINO_HINT.lower()} hint (score's)",
                f"{raw['openvino_other_hint']:.1f} / {raw['openvino']:.1f} img/s",
                f"score's hint gives {raw['openvino'] / raw['openvino_other_hint']:.2f}x",
            )
        )
    if "onnxruntime_other" in raw:
        from mura_cli.inference.engines import ONNXRUNTIME_SPLIT

        settings = ("all threads on each layer", "pieces side by side")
        other, mine = settings[not ONNXRUNTIME_SPLIT], settings[ONNXRUNTIME_SPLIT]
        rows.append(
            (
                f"raw, ONNX Runtime: {other} / {mine} (score's)",
                f"{raw['onnxruntime_other']:.1f} / {raw['onnxruntime']:.1f} img/s",
                f"score's gives {raw['onnxruntime'] / raw['onnxruntime_other']:.2f}x",
            )
        )
    for name, rate in pipeline.items():
        rows.append(
            (
                f"decode + {LABELS[name]} + peaks: next batch decoded in a thread / in line",
                f"{rate['overlapped']:.1f} / {rate['in line']:.1f} img/s",
                f"overlap gives {rate['overlapped'] / rate['in line']:.2f}x; "
                f"{rate['overlapped'] / raw[name]:.2f}x of {LABELS[name]} raw",
            )
        )
        if "overlapped, other setting" in rate:
            other = "the other hint" if name == "openvino" else "the other split setting"
            rows.append(
                (
                    f"decode + {LABELS[name]} + peaks, overlapped: {other} / score's",
                    f"{rate['overlapped, other setting']:.1f} / {rate['overlapped']:.1f} img/s",
                    f"score's gives {rate['overlapped'] / rate['overlapped, other setting']:.2f}x",
                )
            )
    for name in names:
        ratio = f"{e2e[name] / raw[name]:.2f}x of {LABELS[name]} raw"
        if name != "torch":
            ratio = f"{e2e[name] / e2e['torch']:.2f}x of torch end to end; " + ratio
        rows.append((f"score end to end with heatmaps, {LABELS[name]}", f"{e2e[name]:.1f} img/s", ratio))
    for name in names[1:]:
        rows.append(
            (
                f"{LABELS[name]} export + probe check (first use of a model)",
                f"{raw[name + '_setup_s']:.1f} s",
                f"cached after that, per weights and {LABELS[name]} version",
            )
        )
        rows.append((f"images.csv, {LABELS[name]} vs torch", *_agreement(tables["torch"], tables[name])))
    versions = ", ".join(f"{name} {info[name]['version'].split('-')[0]}" for name in names[1:])
    return rows, versions


def _agreement(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, str]:
    difference = float(np.nanmax(np.abs(a["probability"].to_numpy(float) - b["probability"].to_numpy(float))))
    ax, ay, bx, by = (t[f"heatmap_peak_{c}"] for t in (a, b) for c in "xy")
    # both flat (no peak) agree; one flat and one not do not (NA == value is NA, which mean() skips)
    same = ((ax == bx) & (ay == by)).astype("boolean").fillna(False) | (ax.isna() & bx.isna())
    same_peak = float(same.mean())
    return f"max |p difference| {difference:.2e}", f"same heatmap peak on {same_peak:.1%} of images"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder or name (default: the shipped default)")
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=HERE / "ENGINES.md")
    args = parser.parse_args()
    _same_allocator_as_mura_cli()  # the malloc tuning that `mura-cli score` runs with
    from mura_cli.model.factory import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    work = Path(tempfile.mkdtemp(prefix="mura-engines-"))
    try:
        corpus = fracatlas_corpus(work, args.images) or build_corpus(work / "synthetic", args.images)
        rows, versions = engine_rows(model_dir, corpus, work, args.batch, args.repeats, args.seconds)
        env = environment("cpu")
        env["engines"] = versions
        publish(rows, env, "benchmarks/engines.py", args.results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
