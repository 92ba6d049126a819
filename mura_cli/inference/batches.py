"""Batches for the model: an image table decoded, placed on the model canvas as uint8, and loaded.

Workers return one-channel uint8 tensors (4x less to move than float, 3x less than RGB); conversion
to float, channel expansion and normalisation happen on the device (see predict.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mura_cli.config import ModelConfig
from mura_cli.errors import DecodeError
from mura_cli.inputs.decode import decode_pixels
from mura_cli.inputs.discover import ImageRecord
from mura_cli.inputs.geometry import fit_geometry, place_on_canvas


class ImageDataset(Dataset):
    """Loader items for ``records``: the decoded image on the model canvas as uint8 (1, H, W), its
    geometry, and an error reason instead where it cannot be used. Subclasses change ``gray``."""

    def __init__(self, records: Sequence[ImageRecord], model_cfg: ModelConfig):
        self.records = list(records)
        _, self.height, self.width = model_cfg.input_size
        self.resize = model_cfg.resize

    def __len__(self) -> int:
        return len(self.records)

    def gray(self, index: int):
        """(gray image: uint8, or float32 in [0, 1] (decode_pixels), '') or (None, the reason it
        cannot be used)."""
        record = self.records[index]
        if record.error:
            return None, record.error
        try:
            return decode_pixels(record.path), ""
        except DecodeError as exc:
            return None, exc.reason

    def __getitem__(self, index: int) -> dict:
        gray, error = self.gray(index)
        if error:
            return {
                "index": index,
                "image": torch.zeros((1, self.height, self.width), dtype=torch.uint8),
                "geometry": torch.zeros(6, dtype=torch.int64),
                "error": error,
            }
        geometry = fit_geometry(gray.shape[0], gray.shape[1], self.height, self.width, self.resize)
        canvas = place_on_canvas(gray, geometry, self.height, self.width)
        return {
            "index": index,
            "image": torch.from_numpy(canvas).unsqueeze(0),
            "geometry": torch.tensor(geometry.as_tuple(), dtype=torch.int64),
            "error": "",
        }


def default_workers(device: torch.device) -> int:
    """CPU: decode in line up to 4 cores (on 2 cores `score` ran 1.17x faster with no worker than with
    one: a worker process preempts torch's threads, and decoding is ~7% of the work), one worker
    beyond. Accelerators: up to 8 workers, the model waits on decoding there."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 4 else 1
    return max(1, min(8, cores - 1))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def create_loader(
    records: Sequence[ImageRecord],
    model_cfg: ModelConfig,
    batch_size: int,
    workers: int,
    device: torch.device,
    dataset: Dataset | None = None,
) -> DataLoader:
    return DataLoader(
        dataset if dataset is not None else ImageDataset(records, model_cfg),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


class InMemory(Dataset):
    """The items of ``source`` decoded once and kept in memory, for a few passes over the same images
    (the deletion test, the precision check) that would otherwise decode every image again."""

    def __init__(self, source: Dataset):
        self.items = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class Reindexed(Dataset):
    """The items of ``source`` at ``positions``, numbered 0..n-1 (a rank's share of a cached set)."""

    def __init__(self, source: Dataset, positions: Sequence[int]):
        self.source, self.positions = source, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict:
        return {**self.source[self.positions[index]], "index": index}


def prefetched(batches, depth: int = 1):
    """``batches`` produced one step ahead in a thread: the next batch is decoded while the model
    works on this one (PIL, numpy and the inference engines release the GIL). Same order, same items;
    an error in the producer is raised here, and closing this generator stops the producer."""
    import queue
    import threading

    done, slots = object(), queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            outcome = (done, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            outcome = (done, exc)
        while not stop.is_set():
            try:
                slots.put(outcome, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="mura-cli-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
