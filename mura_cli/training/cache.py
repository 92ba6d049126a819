"""A decoded-image cache for training: every image's uint8 canvas at the model's resolution, in one
memory-mapped file, built once. Later epochs (and later runs on the same data and resolution) read
canvases instead of decoding PNG/JPEG/DICOM again.

The cache is keyed by the image list (path, size, modification time) and the canvas (height, width,
resize policy, decoder version): change any of them and a new cache is built; the old one is unused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mura_cli import environment
from mura_cli.config import ModelConfig
from mura_cli.files import atomic_write_bytes
from mura_cli.inference.batches import ImageDataset, _worker_init
from mura_cli.inputs.discover import ImageRecord

FORMAT = 2  # 2: 8-bit images resized in 8 bits (decode_pixels)


def default_cache_dir() -> Path:
    """$MURA_CLI_CACHE, default ~/.cache/mura-cli/decoded (mura_cli.environment)."""
    return environment.current().decoded_cache_dir


def cache_key(records: Sequence[ImageRecord], model_cfg: ModelConfig) -> str:
    digest = hashlib.sha256()
    _, height, width = model_cfg.input_size
    digest.update(json.dumps([FORMAT, height, width, model_cfg.resize]).encode())
    for record in records:
        try:
            stat = record.path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        digest.update(json.dumps([str(record.path.resolve()), *stamp]).encode())
    return digest.hexdigest()[:32]


class DecodedCache:
    def __init__(self, records: Sequence[ImageRecord], model_cfg: ModelConfig, folder: Path | None = None):
        self.records = list(records)
        _, self.height, self.width = model_cfg.input_size
        self.model_cfg = model_cfg
        key = cache_key(self.records, model_cfg)
        self.folder = Path(folder) if folder else default_cache_dir()
        self.pixels_path = self.folder / f"{key}.u8"
        self.meta_path = self.folder / f"{key}.json"

    @property
    def ready(self) -> bool:
        return self.meta_path.is_file() and self.pixels_path.is_file()

    def build(self, workers: int, batch_size: int = 64) -> None:
        """Decode every image once (in ``workers`` processes) into the memory-mapped file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.pixels_path.with_suffix(f".{os.getpid()}.tmp")
        shape = (len(self.records), self.height, self.width)
        pixels = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape)
        geometries, errors = [[0] * 6 for _ in self.records], [""] * len(self.records)
        # its own generator: building the cache must not move the global random state training relies on
        loader = DataLoader(
            ImageDataset(self.records, self.model_cfg),
            batch_size=batch_size,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            generator=torch.Generator(),
        )
        for batch in loader:
            for k, index in enumerate(batch["index"].tolist()):
                pixels[index] = batch["image"][k, 0].numpy()
                geometries[index], errors[index] = batch["geometry"][k].tolist(), batch["error"][k]
        pixels.flush()
        del pixels
        os.replace(temp, self.pixels_path)
        meta = {"format": FORMAT, "count": len(self.records), "geometries": geometries, "errors": errors}
        atomic_write_bytes(self.meta_path, json.dumps(meta).encode("utf-8"))

    def open(self) -> CachedImages:
        meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        pixels = np.load(self.pixels_path, mmap_mode="r")
        return CachedImages(pixels, meta["geometries"], meta["errors"])


class CachedImages(Dataset):
    """The loader items of ImageDataset, read from the cache."""

    def __init__(self, pixels: np.ndarray, geometries: list, errors: list):
        self.pixels, self.geometries, self.errors = pixels, geometries, errors

    def __len__(self) -> int:
        return len(self.errors)

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "image": torch.from_numpy(np.array(self.pixels[index]))[None],
            "geometry": torch.tensor(self.geometries[index], dtype=torch.int64),
            "error": self.errors[index],
        }
