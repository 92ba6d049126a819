"""mura-cli benchmarks: one command, one table, ratios against baselines measured in the same run.

    python benchmarks/run.py                      # defaults: 240 images, efficientnet_b0 at 224
    python benchmarks/run.py --images 600 --arch densenet169 --img-size 320 --device cuda

Builds a synthetic MURA-like corpus (grayscale PNG up to 512 px, a share of 16-bit PNG and of DICOM,
three images per study), then measures: raw forward rate; `score` end to end with and without
heatmaps; the naive baseline (one image at a time, PIL, fp32, a separate autograd Grad-CAM pass per
image); peak memory of `score` at two corpus sizes; PDF time and memory for several study counts;
`train` against its raw step rate. Appends the table to benchmarks/RESULTS.md with date, device,
versions and the command. Figures are never asserted in tests.

Everything runs under the allocator settings `mura-cli` itself uses (the run re-executes itself, as
the CLI does; MURA_CLI_MALLOC_TUNING=0 measures the system defaults instead), and the `score` variants
run interleaved, three times each, reporting medians: single runs on a shared machine drifted by 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent


def build_corpus(root: Path, images: int, seed: int = 0) -> Path:
    """Studies of three images: 70% 8-bit PNG, 15% 16-bit PNG, 15% DICOM (MONOCHROME2, 12 bit)."""
    rng = np.random.default_rng(seed)
    for k in range(images):
        study = (
            root
            / f"XR_WRIST/patient{k // 6:05d}/study{(k // 3) % 2 + 1}_{'positive' if k % 2 else 'negative'}"
        )
        study.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(320, 513)), int(rng.integers(256, 513))
        yy, xx = np.mgrid[0:h, 0:w]
        bone = np.exp(-(((xx - w / 2) / (w * 0.15)) ** 2 + ((yy - h / 2) / (h * 0.4)) ** 2))
        image = np.clip(0.1 + 0.7 * bone + rng.normal(0, 0.03, (h, w)), 0, 1)
        kind = rng.random()
        if kind < 0.70:
            Image.fromarray((image * 255).astype(np.uint8)).save(study / f"image{k % 3 + 1}.png")
        elif kind < 0.85:
            Image.fromarray((image * 65535).astype(np.uint16)).save(study / f"image{k % 3 + 1}.png")
        else:
            _write_dicom(study / f"image{k % 3 + 1}.dcm", (image * 4095).astype(np.uint16), study)
    return root


def _write_dicom(path: Path, pixels: np.ndarray, study: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99." + str(
        int(hashlib.sha1(str(study).encode()).hexdigest()[:12], 16)
    )
    ds.Modality, ds.BodyPartExamined = "CR", "WRIST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_model(folder: Path, arch: str, size: int) -> Path:
    from mura_cli.config import ModelConfig
    from mura_cli.model.factory import create_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(architecture=arch, input_size=(3, size, size), name=f"bench-{arch}")
    return save_model(create_model(cfg), cfg, folder)


def raw_forward_rate(model_dir: Path, device: str, precision: str, batch: int, seconds: float = 8.0) -> dict:
    from mura_cli.inference.device import create_runtime
    from mura_cli.model.factory import load_model

    loaded, runtime = load_model(model_dir), create_runtime(device, precision)
    model = loaded.model.to(runtime.device).to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, *loaded.config.input_size, device=runtime.device).contiguous(
        memory_format=torch.channels_last
    )
    count, started = 0, None
    with torch.inference_mode(), runtime.autocast():
        for step in range(10_000):
            model(x)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if step == 1:
                started = time.perf_counter()
            elif step > 1:
                count += batch
                if time.perf_counter() - started > seconds:
                    break
    return {
        "img_s": count / (time.perf_counter() - started),
        "precision": runtime.precision,
        "device": str(runtime.device),
    }


def score_rate(
    corpus: Path,
    model_dir: Path,
    out: Path,
    device: str,
    precision: str,
    batch: int,
    heatmaps: bool,
    pdf: bool = False,
    engine: str = "torch",
) -> dict:
    """End to end, or with ``pdf`` the image pass alone (thumbnails and overlays included, the PDF
    rendering itself left out: it has its own rows)."""
    from mura_cli.config import ScoreConfig
    from mura_cli.scoring.score import score_folder

    config = ScoreConfig(
        input=str(corpus),
        out_dir=str(out),
        model=str(model_dir),
        device=device,
        precision=precision,
        batch_size=batch,
        heatmaps=heatmaps,
        pdf=pdf,
        engine=engine,  # these rows compare against torch's raw rate; benchmarks/engines.py has the engines
    )
    started = time.perf_counter()
    result = score_folder(config, overwrite=True)
    seconds = time.perf_counter() - started - (result.run.seconds.get("report", 0.0) if pdf else 0.0)
    return {"img_s": len(result.images) / seconds, "seconds": seconds, "images": len(result.images)}


def interleaved_rates(variants: dict[str, dict], repeats: int, run) -> dict[str, float]:
    """Median img/s of each variant, run in turn (A B C A B C ...) after one discarded warm-up run, so
    that drifts of a shared machine hit every variant alike."""
    run(**next(iter(variants.values())))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, kwargs in variants.items():
            rates[name].append(run(**kwargs)["img_s"])
    return {name: float(np.median(values)) for name, values in rates.items()}


def naive_rate(corpus: Path, model_dir: Path, limit: int) -> dict:
    """The seeds' way: PIL, one image at a time, fp32, a separate autograd Grad-CAM pass per image."""
    from mura_cli.model.factory import load_model

    loaded = load_model(model_dir)
    model, cfg = loaded.model.eval(), loaded.config
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    files = sorted(p for p in corpus.rglob("*.png"))[:limit]
    started = time.perf_counter()
    for path in files:
        img = Image.open(path).convert("L").convert("RGB").resize(cfg.input_size[1:][::-1])
        x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None] - mean) / std
        with torch.no_grad():
            torch.sigmoid(model(x))
        feats = model.forward_features(x)
        feats.retain_grad()
        model.forward_head(feats)[0, 0].backward()
        torch.relu((feats.grad.mean((2, 3), keepdim=True) * feats).sum(1))
    return {"img_s": len(files) / (time.perf_counter() - started), "images": len(files)}


def _child(code: str, *args: str, tuned: bool | None = None) -> dict:
    """Run a snippet in a fresh interpreter; returns its JSON result plus the peak RSS (MiB) of it and
    its children."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "proc = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'out': proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else '',"
        " 'err': proc.stderr[-2000:], 'code': proc.returncode, 'peak_mib': peak}))\n"
    )
    env = dict(os.environ)
    if tuned is not None:
        from mura_cli.cli.commands import MALLOC_TUNABLES

        env.pop("GLIBC_TUNABLES", None)
        if tuned:
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    done = subprocess.run(
        [sys.executable, "-c", wrapper, code, *args], capture_output=True, text=True, check=True, env=env
    )
    info = json.loads(done.stdout)
    if info["code"] != 0:
        raise RuntimeError(info["err"])
    return {**(json.loads(info["out"]) if info["out"] else {}), "peak_mib": info["peak_mib"]}


SCORE_SNIPPET = """
import json, sys, time
from mura_cli.config import ScoreConfig
from mura_cli.scoring.score import score_folder
t = time.perf_counter()
r = score_folder(ScoreConfig(input=sys.argv[1], out_dir=sys.argv[2], model=sys.argv[3], batch_size=int(sys.argv[4])), overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t, "images": len(r.images)}))
"""

PDF_SNIPPET = """
import io, json, sys, time
import numpy as np, pandas as pd
from PIL import Image
from mura_cli.report.images import make_thumbnails
from mura_cli.inputs.geometry import fit_geometry
from mura_cli.report import pdf as report_pdf
n = int(sys.argv[1])
if sys.argv[3] == "one-document":  # the earlier way: one WeasyPrint document on one core
    report_pdf.ONE_DOCUMENT = float("inf")
rng = np.random.default_rng(0)
g = fit_geometry(512, 400, 224, 224, "letterbox")
canvas = (rng.random((224, 224)) * 255).astype(np.uint8)
thumbs = make_thumbnails(canvas, g, rng.random((224, 224)).astype(np.float32))
images = pd.DataFrame({"path": [f"s{i // 3}/img{i % 3}.png" for i in range(3 * n)], "study_id": [f"s{i // 3}" for i in range(3 * n)],
    "body_part": "WRIST", "probability": rng.random(3 * n), "error": "", "width": 400, "height": 512,
    "heatmap_peak_x": 1, "heatmap_peak_y": 1})
studies = images.groupby("study_id", as_index=False).agg(probability=("probability", "mean"), n_images=("path", "size"))
studies = studies.assign(body_part="WRIST", patient_id="", label=pd.array([pd.NA] * n, dtype="Int64"), n_failed=0,
    prediction=pd.array((studies["probability"] >= 0.5).astype(int), dtype="Int64"), threshold=0.5)
run = {"status": "finished", "started": "now", "tool": {"version": "bench"}, "config": {"input": "bench"}, "threshold": 0.5, "aggregation": "mean",
    "counts": {"images": 3 * n, "scored": 3 * n, "failed": 0, "skipped_files": 0, "studies": n, "positive_studies": 0, "negative_studies": 0},
    "model": {"name": "bench", "weights_sha256": "0" * 64, "config": {"architecture": "x", "input_size": [3, 224, 224],
    "task": "bench", "positive_class": "abnormal", "negative_class": "normal"}}, "runtime": {"device": "cpu", "precision": "fp32", "reason": "bench", "workers": 0, "batch_size": 32, "heatmap_method": "cam"}}
from mura_cli.results.record import RunRecord
run = RunRecord.from_dict(run)
class Store:
    def get(self, path): return thumbs
t = time.perf_counter()
from pathlib import Path
report_pdf.render_score_report(run, images, studies, Store(), Path(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t, "studies": n}))
"""


def pdf_rows(counts: list[int], work: Path, score_img_s: float) -> list[tuple[str, str, str]]:
    """Report time and the largest process's peak memory (workers included) for each study count;
    against one single-core document at the middle count, and against the time `score` needs for
    the same images at the end-to-end rate measured above."""
    rows = []
    for n in counts:
        pdf = _child(PDF_SNIPPET, str(n), str(work / f"r{n}.pdf"), "parts")
        rows.append(
            (
                f"PDF, {n} studies ({3 * n} images)",
                f"{pdf['seconds']:.1f} s",
                f"{3 * n / pdf['seconds']:.0f} images/s; peak {pdf['peak_mib']:.0f} MiB; "
                f"{pdf['seconds'] / (3 * n / score_img_s):.2f}x of the scoring time",
            )
        )
        if n == counts[len(counts) // 2]:
            one = _child(PDF_SNIPPET, str(n), str(work / f"one{n}.pdf"), "one-document")
            rows.append(
                (
                    f"PDF, {n} studies as one document on one core",
                    f"{one['seconds']:.1f} s",
                    f"parts are {one['seconds'] / pdf['seconds']:.2f}x faster; peak {one['peak_mib']:.0f} MiB",
                )
            )
    return rows


def train_rates(corpus: Path, work: Path, arch: str, size: int, batch: int) -> dict:
    from mura_cli.config import TrainConfig
    from mura_cli.training.train import train

    model = make_model(work / "raw", arch, size)
    from mura_cli.model.factory import load_model

    net = load_model(model).model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch)
    for step in range(8):
        if step == 2:  # two warm-up steps
            started = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    raw = 6 * batch / (time.perf_counter() - started)
    rates = {"raw_step_img_s": raw}
    for cache, variant in ((False, "cache_False"), (True, "cache_True"), (True, "split")):
        out = work / f"trained-{variant}"
        config = TrainConfig(
            data=str(corpus),
            out_dir=str(out),
            arch=arch,
            img_size=size,
            in_chans=3,
            epochs=2,
            freeze_epochs=0,
            batch_size=batch,
            val_fraction=0.2,
            patience=5,
            cache=cache,
            workers=0,  # items made in line on every machine, so that the "split" baseline means the same
        )
        from mura_cli.training import augment

        kept = augment.one_thread
        if variant == "split":  # the baseline: per-image transforms split over all of torch's threads
            augment.one_thread = contextlib.nullcontext
        try:
            result = train(config)
        finally:
            augment.one_thread = kept
        last = result.log.iloc[-1]  # the second epoch: steady state
        images = int((pd.read_csv(out / "split.csv")["side"] == "train").sum())
        rates[f"train_img_s_{variant}"] = images / float(last["train_seconds"])
        rates[f"epoch_img_s_{variant}"] = images / float(last["seconds"])
    return rates


def environment(device: str) -> dict:
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    if torch.cuda.is_available() and device != "cpu":
        info["gpu"] = torch.cuda.get_device_name()
    info["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES", "(unset)")
    return info


def _same_allocator_as_mura_cli() -> None:
    """Re-execute under the allocator settings `mura-cli score` runs with (see the README), so that
    every row is measured as a user gets it; MURA_CLI_MALLOC_TUNING=0 keeps the system's defaults."""
    from mura_cli.cli.commands import MALLOC_TUNABLES, TUNING_ENV

    if (
        sys.platform.startswith("linux")
        and os.environ.get(TUNING_ENV, "1") != "0"
        and "GLIBC_TUNABLES" not in os.environ
    ):
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES}
        )


def main() -> None:
    _same_allocator_as_mura_cli()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--naive-images", type=int, default=40)
    parser.add_argument("--pdf-studies", default="100,500,5000")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per score variant (median)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--only-train", action="store_true", help="only the training rows")
    parser.add_argument(
        "--skip-engines",
        action="store_true",
        help="no engine rows (torch vs OpenVINO and ONNX Runtime on the shipped model)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    publish(run_all(args), environment(args.device), "benchmarks/run.py", args.results)


def publish(rows, env: dict, script: str, results: Path) -> None:
    """Print the table and append it, with date, machine and the exact command, to ``results``."""
    text = render(rows, env, " ".join(["python", script, *sys.argv[1:]]))
    print(text)
    with open(results, "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


def train_rows(corpus: Path, work: Path, args) -> list[tuple[str, str, str]]:
    tr = train_rates(corpus, work, args.arch, args.img_size, args.batch)
    rows = [("train step, raw (random tensors)", f"{tr['raw_step_img_s']:.1f} img/s", "1.00x")]
    for variant, what in (
        ("cache_False", "decoding every image"),
        ("cache_True", "from the decoded cache"),
        ("split", "from the decoded cache, per-image transforms on all threads (before)"),
    ):
        rate, epoch = tr[f"train_img_s_{variant}"], tr[f"epoch_img_s_{variant}"]
        rows.append(
            (
                f"train, epoch 2 {what} (decode + augment + step)",
                f"{rate:.1f} img/s",
                f"{rate / tr['raw_step_img_s']:.2f}x of raw step; whole epoch with validation "
                f"{epoch:.1f} img/s ({epoch / tr['raw_step_img_s']:.2f}x)",
            )
        )
    return rows


def run_all(args) -> list[tuple[str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mura-bench-") as tmp:
        work = Path(tmp)
        os.environ["MURA_CLI_CACHE"] = str(work / "decoded-cache")  # not the user's cache
        corpus = build_corpus(work / "corpus", args.images)
        if args.only_train:
            return train_rows(corpus, work, args)
        model = make_model(work / "model", args.arch, args.img_size)
        raw = raw_forward_rate(model, args.device, args.precision, args.batch)
        rows.append(
            (
                f"raw forward ({args.arch} {args.img_size}px, {raw['precision']}, batch {args.batch})",
                f"{raw['img_s']:.1f} img/s",
                "1.00x of raw",
            )
        )

        def run(**kw):
            return score_rate(corpus, model, work / "out", args.device, args.precision, args.batch, **kw)

        rate = interleaved_rates(
            {
                "heat": {"heatmaps": True},
                "bare": {"heatmaps": False},
                "heat_pdf": {"heatmaps": True, "pdf": True},
                "bare_pdf": {"heatmaps": False, "pdf": True},
            },
            args.repeats,
            run,
        )
        naive = naive_rate(corpus, model, args.naive_images)
        rows.append(
            (
                "score end to end, with heatmaps",
                f"{rate['heat']:.1f} img/s",
                f"{rate['heat'] / raw['img_s']:.2f}x of raw; {rate['heat'] / naive['img_s']:.1f}x of naive",
            )
        )
        rows.append(
            (
                "score end to end, no heatmaps",
                f"{rate['bare']:.1f} img/s",
                f"heatmaps cost {100 * (rate['bare'] / rate['heat'] - 1):+.1f}%",
            )
        )
        rows.append(
            (
                "score --pdf image pass (thumbnails), with / without heatmap overlays",
                f"{rate['heat_pdf']:.1f} / {rate['bare_pdf']:.1f} img/s",
                f"heatmaps cost {100 * (rate['bare_pdf'] / rate['heat_pdf'] - 1):+.1f}%",
            )
        )
        rows.append(
            ("naive baseline (PIL, 1 image, fp32, autograd Grad-CAM)", f"{naive['img_s']:.1f} img/s", "1.00x")
        )
        e2e = {"img_s": rate["heat"]}
        plain = _child(SCORE_SNIPPET, str(corpus), str(work / "m0"), str(model), str(args.batch), tuned=False)
        small = _child(SCORE_SNIPPET, str(corpus), str(work / "m1"), str(model), str(args.batch), tuned=True)
        rows.append(
            (
                "score in a fresh process: default glibc malloc / mura-cli's tuned malloc",
                f"{plain['images'] / plain['seconds']:.1f} / {small['images'] / small['seconds']:.1f} img/s",
                f"tuning gives {plain['seconds'] / small['seconds']:.2f}x",
            )
        )
        big_corpus = build_corpus(work / "corpus3", args.images * 3, seed=1)
        big = _child(
            SCORE_SNIPPET, str(big_corpus), str(work / "m2"), str(model), str(args.batch), tuned=True
        )
        rows.append(
            (
                f"score peak memory, {small['images']} / {big['images']} images",
                f"{small['peak_mib']:.0f} / {big['peak_mib']:.0f} MiB",
                f"{big['peak_mib'] / small['peak_mib']:.2f}x for 3x the images",
            )
        )
        rows.extend(pdf_rows([int(v) for v in args.pdf_studies.split(",") if v], work, e2e["img_s"]))
        from engines import installed_engines

        if not args.skip_engines and len(installed_engines()) > 1:
            from engines import engine_rows, fracatlas_corpus

            from mura_cli.model.factory import resolve_model_dir

            shipped = resolve_model_dir(None)
            engine_work = work / "engines"
            engine_work.mkdir()
            photos = fracatlas_corpus(engine_work, args.images) or corpus
            rows.extend(engine_rows(shipped, photos, engine_work, args.batch, args.repeats, 8.0)[0])
        if not args.skip_train:
            rows.extend(train_rows(corpus, work, args))
    return rows


def render(rows, env: dict, command: str) -> str:
    lines = [
        f"## {env['date']}",
        "",
        f"- command: `{command}`",
        "- environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "date"),
        "",
        "| measurement | result | ratio |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {value} | {ratio} |" for name, value, ratio in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
