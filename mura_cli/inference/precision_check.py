"""Does reduced precision keep the answer? The same images scored in fp32 and in a reduced precision.

Reported per precision: absolute probability differences (median, 99th percentile, max), decisions
that flip at the model's threshold, and heatmap peaks that leave their feature-grid cell or move by
more than 10 canvas pixels. A check passes within BOUNDS; ``record_checks`` stores results in the
model's config.json, where `--precision auto` reads them (device.resolve_precision).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mura_cli.config import PrecisionCheckConfig
from mura_cli.errors import InputError
from mura_cli.inference.batches import ImageDataset, InMemory
from mura_cli.inference.device import Runtime, reduced_candidate, resolve_device
from mura_cli.inference.predictor import Predictor, predict_records
from mura_cli.inputs.discover import discover
from mura_cli.model.factory import CONFIG_FILE, LoadedModel, load_model, resolve_model_dir

# the largest deviation from fp32 that is still "a rounding" (issue 16's targets)
BOUNDS = {"p99": 0.01, "max": 0.03, "flip_share": 0.005, "same_peak_cell": 0.98}


def reduced_precisions(device: torch.device) -> list[str]:
    """The reduced precisions worth checking on this device: the one `auto` would pick, and bf16 on a
    CPU (explicit --precision bf16 works everywhere; without native support it is emulated, slowly)."""
    candidate, _ = reduced_candidate(device)
    found = [candidate] if candidate != "fp32" else []
    if device.type == "cpu" and "bf16" not in found:
        found.append("bf16")
    return found


def _score(loaded: LoadedModel, runtime: Runtime, records, batch_size: int, decoded):
    predictor = Predictor(loaded, runtime, heatmaps=True)
    probs, peaks = np.full(len(records), np.nan), np.full((len(records), 2), -1, dtype=np.int64)
    for result in predict_records(predictor, records, batch_size, 0, dataset=decoded):
        probs[result.indices] = result.probabilities
        peaks[result.indices] = result.peaks
    return probs, peaks


def deviation(reference: tuple, other: tuple, threshold: float, cell: int) -> dict:
    """Statistics of ``other`` (probabilities, peaks) against ``reference``, over images both scored."""
    (p0, k0), (p1, k1) = reference, other
    both = np.isfinite(p0) & np.isfinite(p1)
    diff = np.abs(p1[both] - p0[both])
    flips = int(((p0[both] >= threshold) != (p1[both] >= threshold)).sum())
    peaked0, peaked1 = k0[:, 0] >= 0, k1[:, 0] >= 0  # no peak: a flat map
    have_peaks = both & peaked0 & peaked1
    # same cell where both have a peak; both flat agree, one flat and one not do not
    same_cell = np.where(peaked0 & peaked1, (k0 // cell == k1 // cell).all(axis=1), peaked0 == peaked1)[both]
    shift = np.linalg.norm((k0[have_peaks] - k1[have_peaks]).astype(float), axis=1)
    n = int(both.sum())
    stats = {
        "images": n,
        "median": float(np.median(diff)) if n else float("nan"),
        "p99": float(np.quantile(diff, 0.99)) if n else float("nan"),
        "max": float(diff.max()) if n else float("nan"),
        "flips": flips,
        "flip_share": flips / max(n, 1),
        "same_peak_cell": float(same_cell.mean()) if len(same_cell) else float("nan"),
        "peaks_moved_over_10px": int((shift > 10).sum()),
    }
    stats["passed"] = bool(
        n
        and stats["p99"] <= BOUNDS["p99"]
        and stats["max"] <= BOUNDS["max"]
        and stats["flip_share"] <= BOUNDS["flip_share"]
        and not stats["same_peak_cell"] < BOUNDS["same_peak_cell"]
    )
    return stats


def check_precisions(
    loaded: LoadedModel,
    records,
    device: torch.device,
    precisions: list[str] | None = None,
    batch_size: int = 32,
) -> dict[str, dict]:
    """precision -> deviation statistics against fp32 on ``records``, on ``device``."""
    precisions = precisions if precisions is not None else reduced_precisions(device)
    decoded = InMemory(ImageDataset(records, loaded.config))  # decoded once for every precision
    reference = _score(loaded, Runtime(device, "fp32", "precision check"), records, batch_size, decoded)
    cell = max(1, loaded.config.output_stride)
    return {
        precision: deviation(
            reference,
            _score(loaded, Runtime(device, precision, "precision check"), records, batch_size, decoded),
            loaded.config.threshold,
            cell,
        )
        for precision in precisions
    }


def record_checks(model_dir: Path, device_kind: str, results: dict[str, dict], note: str = "") -> Path:
    """Store ``results`` under ``precision_checks[device_kind]`` in the model's config.json."""
    path = Path(model_dir) / CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    kind = data.setdefault("precision_checks", {}).setdefault(device_kind, {})
    for precision, stats in results.items():
        kind[precision] = {
            **stats,
            "measured": stamp,
            "torch": torch.__version__,
            **({"on": note} if note else {}),
        }
    from mura_cli.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return path


@dataclass(frozen=True)
class PrecisionCheckResult:
    model: LoadedModel
    device: torch.device
    images: int
    results: dict[str, dict]  # precision -> deviation statistics (check_precisions)
    recorded_in: Path | None  # the model's config.json, with ``record``


def run_precision_check(config: PrecisionCheckConfig) -> PrecisionCheckResult:
    """`check-precision`: the readable images below ``config.images`` scored in fp32 and in each reduced
    precision on the chosen device; with ``config.record``, the results stored in the model's config."""
    loaded = load_model(resolve_model_dir(config.model))
    device, _ = resolve_device(config.device)
    records = [r for r in discover(config.images).images if not r.error]
    if not records:
        raise InputError(f"{config.images}: no readable images to check")
    results = check_precisions(loaded, records, device, list(config.precisions) or None, config.batch_size)
    recorded = None
    if config.record:
        note = f"{len(records)} images of {config.images}"
        recorded = record_checks(loaded.path, device.type, results, note=note)
    return PrecisionCheckResult(loaded, device, len(records), results, recorded)
