"""Score pictures held in memory, for notebooks and pipelines: no results are written (on the CPU the
OpenVINO engine keeps its one-off export of the model in its cache folder; ``engine="torch"`` avoids
even that). A module given through ``wrap_module`` is moved to the device and put in eval mode.

    import mura_cli
    model = mura_cli.load_model()                          # the default model (or a folder, a name)
    result = mura_cli.score_images([array, "knee.dcm"], model, study_ids=["a", "a"])
    result.images, result.studies, result.heatmaps[0]       # two DataFrames, one map per image

An image is a path (PNG, JPEG or DICOM, decoded as `score` does) or a 2-D numpy array of gray
values as displayed (0 black): uint8, uint16 or float in [0, 1]. The same model pass as `score`
gives the probabilities, the heatmaps and the study table, with the same columns as images.csv and
studies.csv. ``wrap_module`` turns a torch module the caller built (any timm classifier with one
output) into a model that ``score_images`` and ``Predictor`` take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mura_cli import choices
from mura_cli.config import ModelConfig
from mura_cli.errors import DecodeError
from mura_cli.inference.aggregate import aggregate_studies
from mura_cli.inference.batches import ImageDataset
from mura_cli.inference.device import create_runtime
from mura_cli.inference.predictor import IMAGE_COLUMNS, Predictor
from mura_cli.inputs.decode import MIN_SIDE, decode_pixels
from mura_cli.inputs.discover import ImageRecord
from mura_cli.inputs.geometry import crop_region
from mura_cli.model.factory import LoadedModel, resolve_model_dir
from mura_cli.model.factory import load_model as _load_folder


@dataclass(frozen=True)
class ImageScores:
    images: pd.DataFrame  # one row per input, in input order (images.csv columns)
    studies: pd.DataFrame  # one row per study (studies.csv columns)
    heatmaps: list[
        np.ndarray | None
    ]  # per input: the heatmap at the image's own size, in [0, 1]; None if failed


def load_model(model: str | Path | None = None) -> LoadedModel:
    """A model folder, a shipped model's name, or (None) the default model, loaded and checked."""
    return _load_folder(resolve_model_dir(None if model is None else str(model)))


def wrap_module(module: torch.nn.Module, config: ModelConfig) -> LoadedModel:
    """A caller's torch module (one output logit; ``config`` gives input size, mean/std, threshold)."""
    return LoadedModel(model=module, config=config, path=Path("<in memory>"), weights_sha256="")


def as_gray(image: np.ndarray, name: str = "array") -> np.ndarray:
    """A 2-D array as gray, as the decoder returns it (uint8 kept as it is, like an 8-bit file's
    pixels; anything else float32 in [0, 1]); ValueError says what is wrong."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D gray image, got shape {array.shape}")
    if min(array.shape) < MIN_SIDE:
        raise ValueError(
            f"{name}: {array.shape[1]} x {array.shape[0]} pixels, under {MIN_SIDE} on the short side"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: dtype {array.dtype}; give uint8, uint16 or float in [0, 1]")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{name}: float values must be finite and within [0, 1]")
    return array.astype(np.float32)


class _Pictures(ImageDataset):
    """Loader items from arrays or paths, in input order (decoded as `score` decodes files)."""

    def __init__(self, images: Sequence, records: list, cfg: ModelConfig):
        super().__init__(records, cfg)
        self.images = list(images)

    def gray(self, index: int):
        item = self.images[index]
        try:
            return (
                decode_pixels(item) if isinstance(item, (str, Path)) else as_gray(item, f"image {index}")
            ), ""
        except DecodeError as exc:
            return None, exc.reason
        except ValueError as exc:
            return None, str(exc)


def _records(images: Sequence, study_ids: Sequence[str] | None, body_parts: Sequence[str] | None) -> list:
    names = [str(item) if isinstance(item, (str, Path)) else f"image{k}" for k, item in enumerate(images)]
    # lists, arrays or Series alike, read by position
    study_ids = None if study_ids is None else [str(v) for v in list(study_ids)]
    body_parts = None if body_parts is None else [str(v).upper() for v in list(body_parts)]
    for given, what in ((study_ids, "study_ids"), (body_parts, "body_parts")):
        if given is not None and len(given) != len(images):
            raise ValueError(f"{what}: {len(given)} values for {len(images)} images")
    return [
        ImageRecord(
            path=Path(name),
            rel_path=name,
            kind="",
            study_id=study_ids[k] if study_ids is not None else name,
            body_part=body_parts[k] if body_parts is not None else "",
        )
        for k, name in enumerate(names)
    ]


def score_images(
    images: Sequence,
    model: LoadedModel | str | Path | None = None,
    *,
    study_ids: Sequence[str] | None = None,
    body_parts: Sequence[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    engine_cache: Path | None = None,
    heatmaps: bool = True,
    tta: str | None = None,  # None: the model's (see its config.json)
    batch_size: int = 16,
    aggregate: str | None = None,
    threshold: float | None = None,
) -> ImageScores:
    """Probabilities (and heatmaps) for ``images``; ``study_ids`` groups them into studies (default:
    one study per image). A picture that cannot be used becomes a row with its reason, as in `score`."""
    if precision not in choices.PRECISIONS:
        raise ValueError(f"precision must be one of {list(choices.PRECISIONS)}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    runtime = create_runtime(device, precision, loaded.config.precision_checks)
    predictor = Predictor(
        loaded,
        runtime,
        heatmaps=heatmaps,
        keep_maps=heatmaps,
        tta=tta,
        engine=engine,
        engine_cache=engine_cache,
    )
    records = _records(images, study_ids, body_parts)
    loader = torch.utils.data.DataLoader(_Pictures(images, records, loaded.config), batch_size=batch_size)
    rows, maps = [None] * len(records), [None] * len(records)
    for batch in loader:
        result = predictor(batch)
        for k, i in enumerate(result.indices):
            rows[i] = result.image_row(records[i], k)
            if result.heatmaps is not None and not result.errors[k]:
                maps[i] = _on_original(result.heatmaps[k], result.geometry(k))
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS).drop(columns=["file_bytes", "file_mtime_ns"])
    table = table.assign(label=pd.array([pd.NA] * len(table), dtype="Int64"), patient_id="")
    method = aggregate or loaded.config.aggregation
    cut = loaded.config.threshold if threshold is None else threshold
    return ImageScores(images=table, studies=aggregate_studies(table, method, cut), heatmaps=maps)


def _on_original(canvas_map: np.ndarray, geometry) -> np.ndarray:
    """The heatmap cut from the canvas and resized to the image's own pixels."""
    from PIL import Image

    picture = Image.fromarray(crop_region(canvas_map, geometry).astype(np.float32), mode="F").resize(
        (geometry.orig_w, geometry.orig_h), Image.BILINEAR
    )
    return np.clip(np.asarray(picture, dtype=np.float32), 0.0, 1.0)
