"""Training batches: canvases (decoded, or from the decoded cache) with random flips, rotation, scale,
brightness and contrast, and the lesion-box masks moved with them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mura_cli.config import ModelConfig
from mura_cli.inference.batches import ImageDataset, _worker_init
from mura_cli.inputs.discover import ImageRecord


class AugmentedDataset(Dataset):
    """Training items: canvases from ``source`` (decoding, or the decoded cache), then random flip,
    rotation, scale, brightness and contrast on the uint8 canvas (torchvision transforms v2).

    With ``boxes`` (image key -> lesion boxes in original pixels), each item also carries ``box_mask``
    (1, H, W) uint8: the boxes grown by ``box_grow`` on the canvas, moved by the same flip and affine
    as the image, and ``has_boxes``; ``erase`` > 0 adds lesion erasing (``training.erasing``) after the
    augmentation. Each item's ``target`` is its label, or ``targets[index]`` (soft targets, e.g. a
    teacher's probabilities mixed in) when given; lesion erasing sets an erased copy's target to 0."""

    def __init__(
        self,
        source: Dataset,
        records: Sequence[ImageRecord],
        augment,
        boxes: dict | None = None,
        box_grow: float = 0.25,
        erase: float = 0.0,
        targets: Sequence[float] | None = None,
    ):
        self.source, self.records, self.augment = source, list(records), augment
        self.boxes, self.box_grow, self.erase = boxes, box_grow, erase
        if targets is not None and len(targets) != len(self.records):
            raise ValueError(f"{len(targets)} targets for {len(self.records)} records")
        self.targets = None if targets is None else [float(t) for t in targets]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if get_worker_info() is not None:  # a loader worker: torch already runs it on one thread
            return self._item(index)
        with one_thread():
            return self._item(index)

    def _item(self, index: int) -> dict:
        item = dict(self.source[index])
        record = self.records[index]
        if self.boxes is not None:
            item.update(self._mask(record, item))
        if self.augment is not None and not item["error"]:
            if self.boxes is not None:
                item["image"], item["box_mask"] = _augment_with_mask(
                    self.augment, item["image"], item["box_mask"]
                )
            else:
                item["image"] = self.augment(item["image"])
        item["label"] = int(record.label)
        item["target"] = float(record.label) if self.targets is None else self.targets[index]
        item["body_part"] = record.body_part
        if self.boxes is not None and self.erase > 0:
            from mura_cli.training.erasing import lesion_erasing

            item = lesion_erasing(item, self.erase)
        return item

    def _mask(self, record: ImageRecord, item: dict) -> dict:
        from mura_cli.inputs.boxes import box_mask, boxes_for
        from mura_cli.inputs.geometry import Geometry

        found = boxes_for(record.rel_path, self.boxes) if not item["error"] else []
        shape = tuple(item["image"].shape[-2:])
        if not found:
            return {"box_mask": torch.zeros((1, *shape), dtype=torch.uint8), "has_boxes": False}
        mask = box_mask(found, shape, Geometry(*item["geometry"].tolist()), self.box_grow)
        return {"box_mask": torch.from_numpy(mask)[None], "has_boxes": True}


@contextmanager
def one_thread():
    """Torch on one thread for the block: the per-image transforms are too small to split, and on a
    few cores splitting them made each one several times slower (in line, beside the training step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _augment_with_mask(augment, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random geometric transform on the image and its box mask (colour changes: image only)."""
    from torchvision import tv_tensors

    out_image, out_mask = augment(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)


def create_augment(flip: bool, rotate: float, scale: float, brightness: float, contrast: float):
    from torchvision.transforms import v2

    steps = []
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if rotate or scale:
        steps.append(v2.RandomAffine(degrees=rotate, scale=(1 - scale, 1 + scale) if scale else None, fill=0))
    if brightness or contrast:
        steps.append(v2.ColorJitter(brightness=brightness or None, contrast=contrast or None))
    return v2.Compose(steps) if steps else None


def create_train_loader(
    records,
    model_cfg: ModelConfig,
    augment,
    batch_size: int,
    workers: int,
    device: torch.device,
    generator: torch.Generator,
    shard=None,
    source=None,
    boxes: dict | None = None,
    box_grow: float = 0.25,
    erase: float = 0.0,
    targets: Sequence[float] | None = None,
) -> DataLoader:
    """Shuffled batches; ``shard=(rank, world, seed)`` gives this process its DistributedSampler share;
    ``source`` gives canvases (the decoded cache) instead of decoding; ``boxes`` adds box masks;
    ``erase`` the lesion-erasing probability; ``targets`` soft targets per record."""
    dataset = AugmentedDataset(
        source if source is not None else ImageDataset(records, model_cfg),
        records,
        augment,
        boxes,
        box_grow,
        erase,
        targets,
    )
    sampler = None
    if shard is not None:
        from torch.utils.data.distributed import DistributedSampler

        rank, world, seed = shard
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=len(dataset) > batch_size * (shard[1] if shard else 1),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
