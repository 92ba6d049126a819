"""Batches -> probabilities and heatmaps, in one forward pass. No files, no printing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mura_cli import choices
from mura_cli.inference.batches import create_loader
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
        x = images.to(self.device, non_blocking=True).float()
        if self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.device.type != "mps" else x


class Predictor:
    """The model on its device, ready to turn loader batches into BatchResults.

    The backbone runs under the runtime's autocast; the head (pooling + classifier), the calibration
    (temperature and bias) and the CAM are computed in fp32 from the same feature map. ``tta='flip'``
    also scores each image mirrored left-right and averages the two probabilities and the two heatmaps
    (the mirrored one flipped back)."""

    def __init__(
        self,
        loaded: LoadedModel,
        runtime: Runtime,
        heatmaps: bool = True,
        keep_maps: bool = False,
        tta: str = "none",
    ):
        cfg = loaded.config
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

    def _feature_channels(self) -> int | None:
        probe = torch.zeros((1, self.channels, self.height, self.width), device=self.runtime.device)
        with torch.no_grad():
            feats = self.model.forward_features(probe)
        return feats.shape[1] if feats.ndim == 4 else None

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities (B,), CAMs (B, h, w) or None), the mirrored pass averaged in with tta='flip'."""
        probs, cams = self._forward_once(x)
        if self.tta == "flip":
            flipped_probs, flipped_cams = self._forward_once(torch.flip(x, dims=[3]))
            probs = (probs + flipped_probs) / 2
            if cams is not None:
                cams = (cams + torch.flip(flipped_cams, dims=[2])) / 2
        return probs, cams

    def _forward_once(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.heatmap_method == "gradcam":
            with torch.no_grad(), self.runtime.autocast():
                feats = self.model.forward_features(x)
            logits, cams = cam.gradcam_from_features(self.model, feats)
        else:
            with torch.inference_mode():
                with self.runtime.autocast():
                    feats = self.model.forward_features(x)
                feats = feats.float()  # head and CAM in fp32 whatever the backbone's precision
                with torch.autocast(device_type=self.runtime.device.type, enabled=False):
                    logits = self.model.forward_head(feats)
                cams = (
                    cam.class_activation_map(feats, self.classifier) if self.heatmap_method == "cam" else None
                )
        return torch.sigmoid(logits.float()[:, 0] / self.temperature + self.logit_bias), cams

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
                        cams, batch["geometry"][valid], (self.height, self.width)
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


def predict_records(predictor: Predictor, records, batch_size: int, workers: int, dataset=None):
    """Yield a BatchResult per batch of ``records`` (decoded in ``workers`` processes, or read from
    ``dataset``, e.g. the decoded cache)."""
    loader = create_loader(records, predictor.config, batch_size, workers, predictor.runtime.device, dataset)
    for batch in loader:
        yield predictor(batch)
