"""Batches -> probabilities and heatmaps, in one forward pass. No files, no printing."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mura_cli import choices
from mura_cli.inference import engines
from mura_cli.inference.batches import create_loader, prefetched
from mura_cli.inference.device import Runtime
from mura_cli.inputs.discover import ImageRecord
from mura_cli.inputs.geometry import Geometry
from mura_cli.model import cam
from mura_cli.model.factory import LoadedModel


@dataclass
class BatchResult:
    indices: list[int]
    errors: list[str]
    probabilities: np.ndarray  # (B,), NaN where the image failed
    canvases: torch.Tensor  # (B, 1, H, W) uint8 on the CPU, the model's input
    geometries: torch.Tensor  # (B, 6) int64 (see geometry.Geometry)
    peaks: np.ndarray  # (B, 2) canvas y, x of the heatmap peak; -1 where none
    heatmaps: np.ndarray | None  # (B, H, W) float32 in [0, 1] on the canvas, when kept

    def geometry(self, k: int) -> Geometry:
        return Geometry(*self.geometries[k].tolist())

    def image_row(self, record: ImageRecord, k: int) -> dict:
        """The images.csv row of item k: probability or error, size, heatmap peak in original pixels."""
        error = " ".join(self.errors[k].split())  # a reason is one line of images.csv and of the log
        row = {
            "path": record.rel_path,
            "study_id": record.study_id,
            "body_part": record.body_part,
            "probability": np.nan if error else float(self.probabilities[k]),
            "error": error,
            "width": pd.NA,
            "height": pd.NA,
            "heatmap_peak_x": pd.NA,
            "heatmap_peak_y": pd.NA,
            "file_bytes": record.file_bytes if record.file_bytes >= 0 else pd.NA,
            "file_mtime_ns": record.file_mtime_ns if record.file_mtime_ns >= 0 else pd.NA,
        }
        if not error:
            geometry = self.geometry(k)
            row["width"], row["height"] = geometry.orig_w, geometry.orig_h
            if self.peaks[k, 0] >= 0:
                y, x = geometry.canvas_to_original(*self.peaks[k].tolist())
                row["heatmap_peak_x"], row["heatmap_peak_y"] = int(round(x)), int(round(y))
        return row


class InputNormaliser:
    """uint8 (B, 1, H, W) from the loader -> normalised float (B, C, H, W) on the device, channels_last
    (one gray channel is expanded as a view, not copied, for three-channel models)."""

    def __init__(self, cfg, device: torch.device):
        self.device, self.channels = device, cfg.input_size[0]
        self.mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # always a copy (even of a float32 batch on this device), so normalising it in place below
        # leaves the caller's tensor alone
        x = images.to(self.device, torch.float32, non_blocking=True, copy=True)
        if self.channels != 1:
            x = (x.expand(-1, self.channels, -1, -1) - self.mean) / self.std
        else:  # in place: a third of the time of (x - mean) / std here, the same values
            x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type != "mps" else x


class Predictor:
    """The model on its device, ready to turn loader batches into BatchResults.

    The backbone runs under the runtime's autocast; the head (pooling + classifier), the calibration
    (temperature and bias) and the CAM are computed in fp32 from the same feature map. ``tta='flip'``
    also scores each image mirrored left-right and averages the two views' probabilities (before the
    calibration, which was fitted on such averages) and the two heatmaps (the mirrored one flipped
    back); ``tta=None`` follows the model's config."""

    def __init__(
        self,
        loaded: LoadedModel,
        runtime: Runtime,
        heatmaps: bool = True,
        keep_maps: bool = False,
        tta: str | None = None,
        engine: str = "torch",
        engine_cache: Path | None = None,
    ):
        cfg = loaded.config
        tta = cfg.tta if tta is None else tta
        if tta not in choices.TTA_MODES:
            raise ValueError(f"tta must be one of {list(choices.TTA_MODES)}")
        self.config = cfg
        self.tta = tta
        self.temperature, self.logit_bias = float(cfg.temperature), float(cfg.logit_bias)
        self.runtime = runtime
        self.channels, self.height, self.width = cfg.input_size
        self.model = loaded.model.to(runtime.device).eval()
        if runtime.device.type != "mps":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.prepare = InputNormaliser(cfg, runtime.device)
        self.heatmaps = heatmaps
        self.keep_maps = keep_maps and heatmaps
        self.classifier = None
        self.heatmap_method = "none"
        if heatmaps:
            channels = self._feature_channels()
            self.classifier = cam.linear_pooled_head(self.model, channels) if channels else None
            self.heatmap_method = "cam" if self.classifier is not None else "gradcam" if channels else "none"
        self.keep_maps = self.keep_maps and self.heatmap_method != "none"  # no map: none kept (or scored)
        self.backbone = engines.TorchBackbone(self.model, runtime)
        chosen = self._choose_engine(loaded, engine, engine_cache)
        setting = "eager, the whole batch (Grad-CAM)" if self.heatmap_method == "gradcam" else None
        self.engine = dataclasses.replace(chosen, setting=setting or self.backbone.setting)

    def _choose_engine(self, loaded: LoadedModel, requested: str, cache: Path | None) -> engines.EngineInfo:
        """The engine that runs the backbone; under auto an engine whose export fails gives way to the
        next one, and torch runs when none is left; every failure is said in the reason."""
        failed: dict[str, str] = {}  # engine -> why its export failed
        cache = cache or engines.default_cache_dir()
        while True:
            name, why = engines.choose_engine(
                requested,
                self.runtime.device,
                self.runtime.precision,
                loaded.weights_sha256,
                tuple(failed),
                cached=lambda engine: self._cached_entry(engine, loaded, cache)[1] is not None,
            )
            if name != "torch" and self.heatmap_method == "gradcam":
                label = engines.LABELS[name]
                name, why = (
                    "torch",
                    f"torch (Grad-CAM needs gradients through the head, which {label} does not give)",
                )
            if name == "torch":
                why = f"torch ({'; '.join(failed.values())})" if failed else why
                return engines.EngineInfo("torch", torch.__version__, why)
            try:
                info = self._use_engine(name, loaded, cache, why)
            except Exception as exc:  # any export or runtime failure: the next engine (auto) or torch
                self.backbone = engines.TorchBackbone(self.model, self.runtime)
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                failed[name] = f"the {engines.LABELS[name]} export failed: {reason}"
                if requested != "auto":
                    return engines.EngineInfo("torch", torch.__version__, f"torch ({failed[name]})")
                continue
            return dataclasses.replace(info, reason="; ".join([info.reason, *failed.values()]))

    def _cached_entry(self, name: str, loaded: LoadedModel, cache: Path) -> tuple[Path, dict | None]:
        """(the cache folder of this model's ``name`` export, its record or None when there is no whole
        entry: then the folder a new export goes to). An entry checked with heatmap peaks serves every
        run; one checked without them (a run without the CAM), runs without the CAM only."""
        version = engines.engine_version(name)
        key = lambda peaks: engines.export_key(loaded.weights_sha256, self.config, name, version, peaks)  # noqa: E731
        with_peaks = self.heatmap_method == "cam"
        meta = engines.cached_export(cache / key(True), name)
        if meta is not None:
            return cache / key(True), meta
        if not with_peaks:
            meta = engines.cached_export(cache / key(False), name)
        return cache / key(with_peaks), meta  # a new export is checked with peaks only when it has them

    def _use_engine(self, name: str, loaded: LoadedModel, cache: Path, why: str) -> engines.EngineInfo:
        """Run the backbone in ``name`` from its cached export, made (and checked) first when missing."""
        version = engines.engine_version(name)
        folder, meta = self._cached_entry(name, loaded, cache)
        if meta is None:
            meta = engines.export(
                name,
                self.model,
                self.config.input_size,
                folder,
                {"weights_sha256": loaded.weights_sha256, name: version},
                self._probe_agreement,
            )
        if not meta["probe_passed"]:
            why_not = (
                f"differs from torch on the probe batch by up to {meta['probe_max_difference']:.2g}"
                if meta["probe_max_difference"] > engines.PROBE_TOLERANCE
                else "moves heatmap peaks to other cells on the probe batch"
            )
            return engines.EngineInfo(
                "torch", torch.__version__, f"torch (the {engines.LABELS[name]} export {why_not})"
            )
        self.backbone = engines.BACKBONES[name](folder)
        return engines.EngineInfo(name, version, why, meta["export_sha256"], meta["probe_max_difference"])

    def _probe_agreement(self, backbone) -> tuple[float, bool]:
        """(largest probability difference, same heatmap peak cells) of ``backbone`` against torch on
        four smooth synthetic images."""
        generator = torch.Generator().manual_seed(0)
        blobs = torch.rand((4, 1, 6, 6), generator=generator)
        images = torch.nn.functional.interpolate(blobs, size=(self.height, self.width), mode="bicubic")
        x = self.prepare((images.clamp(0, 1) * 255).to(torch.uint8))
        ref_logits, ref_cams = self._head(engines.TorchBackbone(self.model, self.runtime)(x))
        logits, cams = self._head(backbone(x))
        ref_probs, probs = self._calibrated(ref_logits), self._calibrated(logits)
        difference = float((ref_probs - probs).abs().max())
        same = cams is None or bool((ref_cams.flatten(1).argmax(1) == cams.flatten(1).argmax(1)).all())
        return difference, same

    def _feature_channels(self) -> int | None:
        """Channels of the last feature map (None when the backbone gives no map, e.g. a ViT's tokens),
        from a forward pass of a small probe: a full-size one cost a second at every start on a CPU.
        Models that only take their own input size get a full-size probe."""
        for side in (64, None):
            size = (side, side) if side and side < min(self.height, self.width) else (self.height, self.width)
            probe = torch.zeros((1, self.channels, *size), device=self.runtime.device)
            try:
                with torch.no_grad():
                    feats = self.model.forward_features(probe)
            except Exception:  # noqa: BLE001 - any model that refuses the small probe gets the full one
                if side is None:
                    raise
                continue
            return feats.shape[1] if feats.ndim == 4 else None
        return None

    def probabilities_only(self) -> Predictor:
        """This predictor without heatmaps: the same model, engine, test-time augmentation and
        calibration (a shallow copy sharing the backbone, so no second export or engine start)."""
        other = copy.copy(self)
        other.heatmaps, other.keep_maps, other.heatmap_method = False, False, "none"
        return other

    def with_maps(self) -> Predictor:
        """This predictor keeping each image's heatmap on the canvas (for pictures), where it has one;
        a shallow copy sharing the backbone, like probabilities_only."""
        other = copy.copy(self)
        other.keep_maps = self.heatmap_method != "none"
        return other

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities (B,), CAMs (B, h, w) or None), the mirrored pass averaged in with tta='flip'."""
        logits, cams = self._forward_once(x)
        if self.tta != "flip":
            return self._calibrated(logits), cams
        flipped, flipped_cams = self._forward_once(torch.flip(x, dims=[3]))
        if cams is not None:
            cams = (cams + torch.flip(flipped_cams, dims=[2])) / 2
        raw = (torch.sigmoid(logits.double()) + torch.sigmoid(flipped.double())) / 2
        averaged = torch.log(raw) - torch.log1p(-raw)  # the logit of the two views' mean probability
        return self._calibrated(averaged), cams

    def _forward_once(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.heatmap_method == "gradcam":
            with torch.no_grad(), self.runtime.autocast():
                feats = self.model.forward_features(x)
            logits, cams = cam.gradcam_from_features(self.model, feats)
            return logits[:, 0].float(), cams
        return self._head(self.backbone(x))

    def _head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B,) and CAMs from a feature map, in fp32 whatever the backbone's precision."""
        with torch.inference_mode():
            feats = feats.float()
            with torch.autocast(device_type=self.runtime.device.type, enabled=False):
                logits = self.model.forward_head(feats)
            cams = cam.class_activation_map(feats, self.classifier) if self.heatmap_method == "cam" else None
        return logits.float()[:, 0], cams

    def _calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) logits -> calibrated probabilities in fp32: sigmoid(logit / temperature + bias)."""
        return torch.sigmoid(logits / self.temperature + self.logit_bias).float()

    def __call__(self, batch: dict) -> BatchResult:
        errors = list(batch["error"])
        valid = torch.tensor([not e for e in errors], dtype=torch.bool)
        size = len(errors)
        probs = np.full(size, np.nan)
        peaks = np.full((size, 2), -1, dtype=np.int64)
        maps = np.zeros((size, self.height, self.width), np.float32) if self.keep_maps else None
        if valid.any():
            x = self.prepare(batch["image"][valid])
            batch_probs, cams = self._forward(x)
            probs[valid.numpy()] = batch_probs.cpu().double().numpy()
            for k in np.flatnonzero(valid.numpy() & ~np.isfinite(probs)):
                errors[k] = "the model gave a non-finite output (NaN or infinite) for this image"
            if cams is not None:
                with torch.inference_mode():
                    canvas_maps, canvas_peaks = cam.to_canvas(
                        cams, batch["geometry"][valid], (self.height, self.width), maps_too=maps is not None
                    )
                peaks[valid.numpy()] = canvas_peaks.cpu().numpy()
                if maps is not None:
                    maps[valid.numpy()] = canvas_maps.cpu().numpy()
        return BatchResult(
            indices=[int(i) for i in batch["index"]],
            errors=errors,
            probabilities=probs,
            canvases=batch["image"],
            geometries=batch["geometry"],
            peaks=peaks,
            heatmaps=maps,
        )


IMAGE_COLUMNS = [
    "path",
    "study_id",
    "body_part",
    "probability",
    "error",
    "width",
    "height",
    "heatmap_peak_x",
    "heatmap_peak_y",
    "file_bytes",
    "file_mtime_ns",  # the file as scored (size, modification time): what --resume compares
]


def predict_records(
    predictor: Predictor, records, batch_size: int, workers: int, dataset=None, overlap: bool | None = None
):
    """Yield a BatchResult per batch of ``records`` (decoded in ``workers`` processes, or read from
    ``dataset``, e.g. the decoded cache). Decoding in line (no workers) overlaps the model in a thread
    when ``overlap`` (default: when the backbone runs in an engine that releases the GIL: OpenVINO or
    ONNX Runtime)."""
    loader = create_loader(records, predictor.config, batch_size, workers, predictor.runtime.device, dataset)
    if overlap is None:
        overlap = workers == 0 and dataset is None and predictor.engine.name in engines.EXPORTED
    for batch in prefetched(loader) if overlap else loader:
        yield predictor(batch)
