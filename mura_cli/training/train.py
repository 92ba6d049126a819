"""train(config): fine-tune a timm model on labelled radiographs, the MURA recipe.

Patient-level stratified split; BCE with per-body-part class weights (MURA paper: w1 = N/(A+N),
w0 = A/(A+N) per study type); augmentation; head-first then all layers; AdamW with cosine or
reduce-on-plateau; early stopping on validation study-level AUROC or kappa; best checkpoint kept;
threshold chosen on validation (Youden's J); resumable from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss
from torch import nn

from mura_cli import __version__, choices
from mura_cli.config import ModelConfig, TrainConfig
from mura_cli.errors import MuraError, writes_into
from mura_cli.evaluation.metrics import operating_points, threshold_metrics
from mura_cli.inference.aggregate import aggregate_studies
from mura_cli.inference.batches import Reindexed, default_workers
from mura_cli.inference.device import Runtime, create_runtime, resolve_device
from mura_cli.inference.predictor import InputNormaliser, Predictor, predict_records
from mura_cli.inputs.datasets import read_dataset
from mura_cli.inputs.discover import records_from_table
from mura_cli.model import cam
from mura_cli.model.calibration import fit_platt, rescale
from mura_cli.model.factory import LoadedModel
from mura_cli.training import checkpoints as training_io
from mura_cli.training import losses
from mura_cli.training.augment import create_augment, create_train_loader
from mura_cli.training.distributed import (
    DistInfo,
    barrier,
    device_for,
    gather,
    init_distributed,
    mean_across,
    shutdown,
)
from mura_cli.training.split import holdout_fold, patient_split, split_from_file

LOG_COLUMNS = [
    "epoch",
    "phase",
    "train_loss",
    "train_box_loss",
    "train_deletion_loss",  # the paired deletion loss (--deletion-loss-weight), 0 when off
    "val_loss",
    "val_auroc",
    "val_kappa",
    "val_deletion_drop",  # the deletion test's mean drops on the validation positives with boxes
    "val_elsewhere_drop",  # (with --boxes; empty without)
    "lr",
    "train_seconds",
    "seconds",
]


@dataclass(frozen=True)
class TrainEvent:
    stage: str  # 'start' | 'batch' | 'epoch'
    epoch: int = 0
    done: int = 0
    total: int = 0
    row: dict | None = None
    message: str = ""


@dataclass
class TrainResult:
    out_dir: Path
    log: pd.DataFrame
    best_epoch: int
    best_metric: float
    threshold: float
    val_metrics: dict
    note: str = ""  # e.g. why the last epoch was kept instead of a chosen one


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def determinism(on: bool):
    """Deterministic algorithms (and no cuDNN autotuning) while training, as asked; the process's
    own settings are put back afterwards, so a notebook that trains is not slowed down for good."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def wants_determinism(config: TrainConfig, device: str) -> bool:
    """--deterministic as given; by default on for the CPU (free there), off on GPUs (a speed cost)."""
    if config.deterministic is not None:
        return config.deterministic
    return resolve_device(device)[0].type == "cpu"


def prepare_split(config: TrainConfig) -> pd.DataFrame:
    """The training pool (never the official/declared 'valid' or 'test' rows) with a 'side' column:
    'train', 'val', or 'holdout' (left out of this run, and said so in its ``split.csv``)."""
    table = read_dataset(config.data)
    pool = table[table["split"].isin(["train", ""])].reset_index(drop=True)
    if pool.empty:
        raise MuraError(f"{config.data}: no training images (rows with split 'train' or no split)")
    if config.split_file:  # another run's split (or folds of it): the same validation images
        pool["side"] = split_from_file(pool, config.split_file)
    else:
        pool["side"] = patient_split(pool, config.val_fraction, config.seed)
    if config.holdout_fold:  # a cross-fitted teacher: one fold of the training images left out
        pool["side"] = holdout_fold(pool, pool["side"], config.holdout_fold, config.seed)
    for side in ("train", "val"):
        labels = set(pool.loc[pool["side"] == side, "label"])
        if labels != {0, 1}:
            raise MuraError(
                f"the {side} part needs both labels; got {sorted(labels)} (more data or another seed)"
            )
    return pool


def class_weights(train: pd.DataFrame, mode: str) -> dict[tuple[str, int], float]:
    """(body_part, label) -> weight, from study counts: w1 = N/(A+N), w0 = A/(A+N)."""
    studies = train.drop_duplicates("study_id")
    groups = {"per-part": studies.groupby("body_part"), "global": [("", studies)]}.get(mode)
    parts = train["body_part"].unique()
    if groups is None:
        return {(part, label): 1.0 for part in parts for label in (0, 1)}
    weights = {}
    for part, group in groups:
        abnormal, normal = int(group["label"].sum()), int((group["label"] == 0).sum())
        total = max(abnormal + normal, 1)
        for target in parts if mode == "global" else [part]:
            weights[(target, 1)] = normal / total if abnormal and normal else 1.0
            weights[(target, 0)] = abnormal / total if abnormal and normal else 1.0
    return weights


def model_config_for(config: TrainConfig) -> ModelConfig:
    import timm

    try:
        pretrained_cfg = timm.get_pretrained_cfg(config.arch)
        mean, std = tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)
    except Exception:  # architectures without a pretrained config: ImageNet statistics
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if config.in_chans == 1:
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    return ModelConfig(
        architecture=config.arch,
        input_size=(config.in_chans, config.img_size, config.img_size),
        mean=mean,
        std=std,
        resize=config.resize,
        output_stride=config.output_stride,
        pooling=config.pooling,
        pooling_sharpness=config.pooling_sharpness,
        tta=config.tta,
        name=config.name or Path(config.out_dir).name,
        positive_class=config.positive_class,
        negative_class=config.negative_class,
        task=config.task,
    )


class LogitsAndFeatures(nn.Module):
    """One forward pass giving the logits and the last feature map (for the box loss); the module that
    DistributedDataParallel wraps, so both outputs stay inside its forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.forward_head(features), features


def create_ema(model: nn.Module, decay: float):
    """timm's ModelEmaV3 (weights and batch-norm statistics) for ``decay`` > 0, else None."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


class Trainer:
    """Model, optimiser, schedule and random state of one run; everything a checkpoint holds."""

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        model_cfg: ModelConfig,
        runtime: Runtime,
        dist_info: DistInfo | None = None,
    ):
        self.config, self.model_cfg, self.runtime = config, model_cfg, runtime
        self.dist = dist_info or DistInfo()
        self.forward_module: nn.Module | None = None
        self.val_source = None  # the decoded cache of the validation images, when in use
        self.val_boxes: dict | None = None  # the lesion boxes, for the deletion test in validation
        self.model = model.to(runtime.device)
        if runtime.device.type != "mps":
            self.model = self.model.to(memory_format=torch.channels_last)
        head = list(self.model.get_classifier().parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in self.model.parameters() if id(p) not in head_ids]
        self.head, self.body = head, body
        self.optimizer = torch.optim.AdamW(
            [{"params": body}, {"params": head}], lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        self.generator = torch.Generator().manual_seed(config.seed)
        self.ema = create_ema(self.model, config.ema_decay)
        self.prepare = InputNormaliser(model_cfg, runtime.device)
        self.epoch = 0
        self.best_metric = -np.inf
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.choice_note = ""  # set when no epoch could be chosen by the monitor
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.teacher: dict | None = None  # with --distill-from: where the soft targets came from

    def _scheduler(self):
        cfg = self.config
        if cfg.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=0.1, patience=1
            )
        span = max(cfg.epochs - cfg.freeze_epochs, 1)
        # plain Python floats: the checkpoint loads with weights_only=True, which refuses numpy scalars
        lam = lambda e: 0.5 * (1 + math.cos(math.pi * min(max(e - cfg.freeze_epochs, 0), span) / span))  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, [lam, lam])

    def set_phase(self, epoch: int) -> str:
        """Head only (backbone frozen, its batch-norm statistics too) or all layers."""
        frozen = epoch < self.config.freeze_epochs
        for p in self.body:
            p.requires_grad_(not frozen)
        self.model.train()
        if frozen:  # the classifier has no batch norm: every batch-norm layer belongs to the backbone
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            self.optimizer.param_groups[1]["lr"] = self.config.head_lr
        else:
            self.optimizer.param_groups[1]["lr"] = self.optimizer.param_groups[0]["lr"]
        self.forward_module = LogitsAndFeatures(self.model)
        if self.dist.active:  # DDP registers gradient hooks for the parameters that train in this phase
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.forward_module = DistributedDataParallel(self.forward_module, device_ids=ids)
        return "head" if frozen else "all"

    def step(self, batch: dict) -> tuple[float, float, int]:
        """One optimiser step; returns (classification loss, box loss, images used)."""
        valid = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
        if not valid.any():
            return 0.0, 0.0, 0
        images = batch["image"][valid]
        device = self.runtime.device
        y = batch["label"][valid].float().to(device)
        target = batch["target"][valid].float().to(device) if "target" in batch else y
        w_pos, w_neg = (batch[key][valid].float().to(device) for key in ("weight_pos", "weight_neg"))
        pairs = self._deletion_pairs(batch, valid, y)
        if pairs is not None:  # the erased copies ride in the same forward pass, after the batch
            images = torch.cat([images, pairs[1]])
        with self.runtime.autocast():
            logits, features = self.forward_module(self.prepare(images))
        n = len(y)
        bce = losses.weighted_bce(logits[:n, 0].float(), target, w_pos, w_neg).mean()
        box = self._box_loss(batch, valid, features[:n], y)
        loss = bce + self.config.box_loss_weight * box if box is not None else bce
        self.last_deletion_loss = 0.0  # mean over the batch's pairs, read by train_epoch
        if pairs is not None:
            kept, erased = logits[:n, 0][pairs[0]].float(), logits[n:, 0].float()
            pair = losses.deletion_pair_loss(kept, erased).mean()
            loss = loss + self.config.deletion_loss_weight * pair
            self.last_deletion_loss = float(pair.detach())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return float(bce.detach()), float(box.detach()) if box is not None else 0.0, int(valid.sum())

    def _deletion_pairs(self, batch: dict, valid: torch.Tensor, y: torch.Tensor):
        """(which of the batch's images, their copies with the boxes erased) for the boxed positive
        images, None when the deletion loss is off or the batch has none."""
        if self.config.deletion_loss_weight == 0 or "box_mask" not in batch:
            return None
        if self.epoch < self.config.deletion_loss_from:
            return None
        chosen = torch.as_tensor(batch["has_boxes"], dtype=torch.bool)[valid] & (y.cpu() > 0.5)
        masks = batch["box_mask"][valid][chosen]
        chosen[chosen.clone()] = masks.flatten(1).amax(dim=1) > 0  # boxes moved off the canvas: no pair
        if not bool(chosen.any()):
            return None
        from mura_cli.training.erasing import erase

        images, masks = batch["image"][valid][chosen], batch["box_mask"][valid][chosen]
        erased = torch.stack([erase(image, mask[0], blur=False) for image, mask in zip(images, masks)])
        return chosen.to(y.device), erased

    def _box_loss(self, batch: dict, valid: torch.Tensor, features: torch.Tensor, y: torch.Tensor):
        """The box loss over this batch's positive images that have boxes (None when there are none)."""
        if "box_mask" not in batch or self.epoch < self.config.box_loss_from:
            return None
        if self.config.box_loss_weight == 0:  # boxes loaded for lesion erasing only
            return None
        chosen = torch.as_tensor(batch["has_boxes"], dtype=torch.bool)[valid].to(y.device) & (y > 0.5)
        if not bool(chosen.any()):
            return None
        cells = cam.cell_logits(features[chosen], self.model.get_classifier())
        covered = losses.cells_covered(batch["box_mask"][valid].to(y.device)[chosen], tuple(cells.shape[-2:]))
        return losses.box_attention_loss(cells, covered, self.model_cfg.pooling_sharpness).mean()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_metric": float(self.best_metric),
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "recipe": self.config.to_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "teacher": self.teacher,
        }

    @property
    def judged_model(self) -> nn.Module:
        """The weights that validation judges and the run keeps: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.best_metric, self.best_epoch = (
            state["epoch"],
            state["best_metric"],
            state["best_epoch"],
        )
        self.best_state, self.bad_epochs, self.history = (
            state["best_state"],
            state["bad_epochs"],
            state["history"],
        )
        self.teacher = state.get("teacher")  # checked against the teacher scored again on resume
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # a checkpoint without an average: start it from the loaded weights
            self.ema.set(self.model)


def _val_predictor(trainer: Trainer) -> Predictor:
    loaded = LoadedModel(trainer.judged_model, trainer.model_cfg, Path("."), "")
    return Predictor(loaded, trainer.runtime, heatmaps=False)


def validate_images(
    trainer: Trainer, val: pd.DataFrame, records, workers: int, predictor: Predictor | None = None
) -> pd.DataFrame:
    """The validation images with their probabilities (temperature 1); under torchrun each rank
    predicts a share and every rank gets all of them."""
    predictor = predictor or _val_predictor(trainer)
    mine = list(range(trainer.dist.rank, len(records), trainer.dist.world))
    cached = Reindexed(trainer.val_source, mine) if trainer.val_source is not None else None
    found = {}
    for result in predict_records(
        predictor, [records[i] for i in mine], trainer.config.batch_size, workers, dataset=cached
    ):
        found.update({mine[i]: float(p) for i, p in zip(result.indices, result.probabilities)})
    probs = np.full(len(records), np.nan)
    for part in gather(found, trainer.dist):
        for index, value in part.items():
            probs[index] = value
    return val.assign(probability=probs)


def study_metrics(images: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Study-level metrics at 0.5 (every rank computes the same, so early stopping agrees everywhere)."""
    studies = aggregate_studies(images, "mean", 0.5).dropna(subset=["probability"])
    y, p = studies["label"].astype(int).to_numpy(), studies["probability"].to_numpy(float)
    metrics = threshold_metrics(y, p, 0.5)
    metrics["loss"] = float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
    return metrics, studies


def validate(trainer: Trainer, val: pd.DataFrame, records, workers: int) -> tuple[dict, pd.DataFrame]:
    """Study metrics of the validation split; with boxes also the deletion test's mean drops on its
    positives with boxes ('deletion_drop', 'elsewhere_drop') and the 'auroc+deletion' monitor. Under
    torchrun rank 0 runs the (small) deletion test and every rank takes its figures, so that all
    choose the same epoch (GPU kernels need not agree to the last bit)."""
    predictor = _val_predictor(trainer)
    images = validate_images(trainer, val, records, workers, predictor)
    metrics, studies = study_metrics(images)
    metrics["deletion_drop"] = metrics["elsewhere_drop"] = None
    if trainer.val_boxes:
        from mura_cli.evaluation.faithfulness import mean_drops

        drops = None
        if trainer.dist.is_main:
            drops = mean_drops(
                predictor,
                records,
                images["probability"].to_numpy(float),
                trainer.val_boxes,
                trainer.config.batch_size,
                workers,
                trainer.config.seed,
                trainer.val_source,  # the decoded cache, when there is one
            )
        drops = gather(drops, trainer.dist)[0]
        metrics["deletion_drop"], metrics["elsewhere_drop"] = drops["deletion"], drops["elsewhere"]
    if metrics.get("auroc") is not None and metrics["deletion_drop"] is not None:
        metrics["auroc+deletion"] = metrics["auroc"] + metrics["deletion_drop"]
    return metrics, studies


def train_epoch(trainer: Trainer, loader, weights, notify, epoch: int) -> tuple[float, float, float]:
    """One pass over the training images; returns the mean classification, box and deletion losses."""
    if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new, agreed order every epoch
        loader.sampler.set_epoch(epoch)
    total, box_total, deletion_total, count = 0.0, 0.0, 0.0, 0
    for k, batch in enumerate(loader):
        for key, label in (("weight_pos", 1), ("weight_neg", 0)):  # each image's weight for either class
            batch[key] = torch.tensor([weights.get((bp, label), 1.0) for bp in batch["body_part"]])
        trainer.last_deletion_loss = 0.0
        loss, box, n = trainer.step(batch)
        total, box_total, count = total + loss * n, box_total + box * n, count + n
        deletion_total += trainer.last_deletion_loss * n
        notify(TrainEvent("batch", epoch, k + 1, len(loader)))
    if count == 0:
        raise MuraError("no training image could be decoded")
    return tuple(
        mean_across(value / count, count, trainer.dist) for value in (total, box_total, deletion_total)
    )


def _monitor(metrics: dict, name: str) -> float:
    value = metrics.get(name)
    return -np.inf if value is None else float(value)


def run_epochs(trainer: Trainer, loader, weights, val, val_records, workers, out_dir, notify) -> None:
    cfg = trainer.config
    while trainer.epoch < cfg.epochs and trainer.bad_epochs < cfg.patience:
        epoch, started = trainer.epoch, time.perf_counter()
        phase = trainer.set_phase(epoch)
        lr = trainer.optimizer.param_groups[1 if phase == "head" else 0]["lr"]
        train_loss, box_loss, deletion_loss = train_epoch(trainer, loader, weights, notify, epoch)
        train_seconds = time.perf_counter() - started
        metrics, _ = validate(trainer, val, val_records, workers)
        score = _monitor(metrics, cfg.monitor)
        if cfg.scheduler == "plateau":
            trainer.scheduler.step(score if np.isfinite(score) else 0.0)
        else:
            trainer.scheduler.step()
        eligible = not cfg.boxes or epoch >= first_lesion_epoch(cfg)  # only epochs with every lesion loss
        if eligible and score > trainer.best_metric:
            trainer.best_metric, trainer.best_epoch, trainer.bad_epochs = score, epoch, 0
            trainer.best_state = {
                k: v.detach().cpu().clone() for k, v in trainer.judged_model.state_dict().items()
            }
        elif eligible:
            trainer.bad_epochs += 1
        row = {
            "epoch": epoch + 1,
            "phase": phase,
            "train_loss": train_loss,
            "train_box_loss": box_loss,
            "train_deletion_loss": deletion_loss,
            "val_loss": metrics["loss"],
            "val_auroc": metrics["auroc"],
            "val_kappa": metrics["kappa"],
            "val_deletion_drop": metrics["deletion_drop"],
            "val_elsewhere_drop": metrics["elsewhere_drop"],
            "lr": lr,
            "train_seconds": round(train_seconds, 2),
            "seconds": round(time.perf_counter() - started, 2),
        }
        trainer.history.append(row)
        trainer.epoch = epoch + 1
        if trainer.dist.is_main:
            training_io.save_checkpoint(trainer.state_dict(), out_dir)
        barrier(trainer.dist)
        notify(TrainEvent("epoch", epoch + 1, row=row))


def train(config: TrainConfig, notify: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train; under torchrun (WORLD_SIZE > 1) as one of several DistributedDataParallel processes,
    ``batch_size`` being the global batch and rank 0 writing every file."""
    dist_info = init_distributed(config.device)
    try:
        with (
            determinism(wants_determinism(config, device_for(dist_info, config.device))),
            writes_into(
                Path(config.out_dir).expanduser(),
                "the last finished epoch is kept in checkpoint.pt: "
                "make room (or fix the permission) and run the same command with --resume",
            ),
        ):
            return _train(config, dist_info, notify if dist_info.is_main and notify else (lambda event: None))
    finally:
        shutdown(dist_info)


def _train(config: TrainConfig, dist_info: DistInfo, notify) -> TrainResult:
    if config.batch_size % dist_info.world:
        raise MuraError(
            f"--batch-size {config.batch_size} (global) must divide by the {dist_info.world} processes"
        )
    seed_everything(config.seed)
    out_dir = Path(config.out_dir).expanduser()
    if dist_info.is_main:
        training_io.check_model_dir(out_dir, config.resume, config.data)
    pool = prepare_split(config)
    train_rows = pool[pool["side"] == "train"].reset_index(drop=True)
    val = pool[pool["side"] == "val"].reset_index(drop=True)
    train_records, val_records = records_from_table(train_rows), records_from_table(val)
    val_boxes = validation_boxes(config, val_records)  # refused before any folder is made
    teachers = ()  # refused here, before any folder is made, when one is not a model folder or
    if config.distill_from:  # trained on the validation images
        from mura_cli.training.distill import checked_teachers

        teachers = checked_teachers(
            config.distill_from, [r.rel_path for r in val_records], [r.rel_path for r in train_records]
        )
    if dist_info.is_main:
        training_io.prepare_model_dir(out_dir, config.resume, config.data)
    barrier(dist_info)
    runtime = create_runtime(device_for(dist_info, config.device), config.precision, training=True)
    model_cfg = model_config_for(config)
    trainer = Trainer(config, training_io.initial_model(config, model_cfg), model_cfg, runtime, dist_info)
    if config.resume:
        state = training_io.load_checkpoint(out_dir)
        training_io.check_same_recipe(state.get("recipe"), config, out_dir)
        trainer.load_state_dict(state)
    workers = config.workers if config.workers is not None else default_workers(runtime.device)
    weights = class_weights(train_rows, config.class_weights)
    augment = create_augment(config.flip, config.rotate, config.scale, config.brightness, config.contrast)
    trainer.val_boxes = val_boxes
    targets = teacher_targets(trainer, teachers, train_records, workers, out_dir, notify)
    train_source, trainer.val_source = decoded_sources(
        config, model_cfg, train_records, val_records, workers, dist_info, notify
    )
    loader = create_train_loader(
        train_records,
        model_cfg,
        augment,
        config.batch_size // dist_info.world,
        workers,
        runtime.device,
        trainer.generator,
        shard=(dist_info.rank, dist_info.world, config.seed) if dist_info.active else None,
        source=train_source,
        boxes=training_boxes(config),
        box_grow=config.box_grow,
        erase=config.lesion_erase,
        targets=targets,
    )
    notify(
        TrainEvent(
            "start",
            trainer.epoch,
            total=config.epochs,
            message=f"{len(train_rows)} training / {len(val)} validation images; {runtime.reason}"
            + (f"; {dist_info.world} processes" if dist_info.active else ""),
        )
    )
    run_epochs(trainer, loader, weights, val, val_records, workers, out_dir, notify)
    return finish(trainer, pool, val, val_records, workers, out_dir)


def teacher_targets(
    trainer: Trainer, teachers, train_records, workers: int, out_dir: Path, notify
) -> list[float] | None:
    """With ``--distill-from`` (``teachers`` from ``distill.checked_teachers``): each training
    image's soft target (its label mixed with the teachers' probability), the probabilities written
    beside the student; None without a teacher."""
    cfg = trainer.config
    if not teachers or cfg.distill_weight == 0:
        return None
    from mura_cli.training import distill

    notify(
        TrainEvent(
            "start",
            message=f"Scoring {len(train_records)} training images with the teacher"
            f"{'s' if len(teachers) > 1 else ''} {', '.join(cfg.distill_from)}",
        )
    )
    teacher = distill.teacher_probabilities(teachers, train_records, trainer.runtime, cfg.batch_size, workers)
    before = distill.teacher_shas(trainer.teacher)  # from the checkpoint, when resuming
    now = distill.teacher_shas(teacher.provenance)
    if trainer.teacher and before != now:
        changed = [
            f"{name} (sha256 {b[:12]}... then, {n[:12]}... now)"
            for name, b, n in zip(cfg.distill_from, before + [""] * len(now), now)
            if b != n
        ]
        raise MuraError(
            f"--distill-from: the teacher's weights changed since the run began: {', '.join(changed)}; "
            "resume with the same teachers"
        )
    trainer.teacher = teacher.provenance
    if trainer.dist.is_main:
        distill.write_teacher_file(train_records, teacher, out_dir)
    labels = np.array([int(r.label) for r in train_records])
    return distill.soft_targets(labels, teacher.probabilities, cfg.distill_weight).tolist()


def training_boxes(config: TrainConfig) -> dict | None:
    """The lesion boxes for the box loss and lesion erasing, or None without ``--boxes`` (or with
    neither a box-loss weight nor erasing)."""
    if not config.boxes or (
        config.box_loss_weight == 0 and config.lesion_erase == 0 and config.deletion_loss_weight == 0
    ):
        return None
    from mura_cli.inputs.boxes import read_boxes

    return read_boxes(config.boxes)


def validation_boxes(config: TrainConfig, val_records) -> dict | None:
    """The lesion boxes for validation's deletion test (None without ``--boxes``); refuses the
    'auroc+deletion' monitor where no validation positive has a box."""
    if not config.boxes:
        return None
    from mura_cli.evaluation.faithfulness import boxed_positives
    from mura_cli.inputs.boxes import read_boxes

    boxes = read_boxes(config.boxes)
    if config.monitor == choices.Monitor.AUROC_DELETION and not boxed_positives(val_records, boxes):
        raise MuraError(
            f"--monitor auroc+deletion: no validation positive has a box in {config.boxes} "
            "(box paths must match the images' relative paths or file names)"
        )
    return boxes


def decoded_sources(
    config: TrainConfig, model_cfg, train_records, val_records, workers: int, dist_info: DistInfo, notify
):
    """With ``config.cache``: the decoded caches of the training and validation images (rank 0 builds
    what is missing, the others wait), else (None, None)."""
    if not config.cache:
        return None, None
    from mura_cli.training.cache import DecodedCache

    caches = [DecodedCache(train_records, model_cfg), DecodedCache(val_records, model_cfg)]
    if dist_info.is_main:
        for cache in caches:
            if not cache.ready:
                notify(
                    TrainEvent(
                        "start", message=f"Decoding {len(cache.records)} images once into {cache.folder}"
                    )
                )
                cache.build(workers)
    barrier(dist_info)
    return tuple(cache.open() for cache in caches)


def finish(trainer: Trainer, pool, val, val_records, workers, out_dir: Path) -> TrainResult:
    """Best weights back, calibration (temperature, bias) and threshold from validation, precision checked on validation
    images, model folder written."""
    if trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
    else:  # no epoch could be chosen: the last one's weights are kept, and the folder says so
        if trainer.ema is not None:
            trainer.model.load_state_dict(trainer.ema.module.state_dict())
        trainer.best_epoch = trainer.epoch - 1
        trainer.choice_note = unchosen_note(trainer.config)
    trainer.ema = None  # the chosen weights (averaged or not) are the model's from here on
    images = validate_images(trainer, val, val_records, workers)
    scored = images.dropna(subset=["probability"])
    if scored["label"].nunique() < 2:
        raise MuraError(
            f"the validation images that could be scored ({len(scored)} of {len(images)}) hold one label "
            f"only, so no calibration or threshold can be fitted; the last epoch is in {out_dir / 'checkpoint.pt'}"
        )
    temperature, bias = fit_platt(images["probability"].to_numpy(float), images["label"].to_numpy(int))
    calibrated = rescale(images["probability"].to_numpy(float), temperature, bias)
    _, studies = study_metrics(images.assign(probability=calibrated))
    y, p = studies["label"].astype(int).to_numpy(), studies["probability"].to_numpy(float)
    points = operating_points(y, p, 0.5)
    threshold = float(points.get("youden", points["model"])["threshold"])
    val_metrics = {
        **threshold_metrics(y, p, threshold),
        "threshold": threshold,
        "temperature": temperature,
        "logit_bias": bias,
    }
    log = pd.DataFrame(trainer.history, columns=LOG_COLUMNS)
    model_cfg = trainer.model_cfg.replace(
        threshold=threshold,
        temperature=temperature,
        logit_bias=bias,
        provenance=_provenance(trainer, pool, val_metrics),
    )
    model_cfg = model_cfg.replace(precision_checks=_precision_checks(trainer, model_cfg, val_records))
    if trainer.dist.is_main:
        training_io.write_model_dir(trainer.model, model_cfg, trainer.config, log, pool, val_metrics, out_dir)
    barrier(trainer.dist)
    return TrainResult(
        out_dir, log, trainer.best_epoch + 1, trainer.best_metric, threshold, val_metrics, trainer.choice_note
    )


PRECISION_CHECK_IMAGES = 256


def _precision_checks(trainer: Trainer, model_cfg: ModelConfig, val_records) -> dict:
    """How far the finished model moves in the training device's reduced precisions, measured on (up to
    256) validation images, so that `score --precision auto` may use them where they keep the answer."""
    if not trainer.dist.is_main:
        return {}
    from mura_cli.inference import precision_check

    device = trainer.runtime.device
    records = [r for r in val_records if not r.error][:PRECISION_CHECK_IMAGES]
    loaded = LoadedModel(trainer.model, model_cfg, Path("."), "")
    results = precision_check.check_precisions(loaded, records, device, batch_size=trainer.config.batch_size)
    note = f"{len(records)} validation images"
    return {device.type: {k: {**v, "on": note} for k, v in results.items()}} if results else {}


def first_lesion_epoch(cfg: TrainConfig) -> int:
    """The first epoch (0-based) in which every lesion loss of the recipe is on: the monitor chooses the
    kept weights from then on."""
    return max(cfg.box_loss_from, cfg.deletion_loss_from)  # the config refuses a start without a weight


def unchosen_note(cfg: TrainConfig) -> str:
    """Why no epoch was chosen by the monitor (every score missing), for the model folder and the user."""
    first = first_lesion_epoch(cfg)
    why = (
        f"no epoch reached the first with every lesion loss (epoch {first + 1})"
        if cfg.boxes and first >= cfg.epochs
        else f"no epoch had a validation {cfg.monitor} (e.g. the deletion test had no image it could score)"
    )
    return f"{why}: the last epoch's weights were kept"


def _chosen_epoch_row(trainer: Trainer) -> dict:
    """The chosen epoch's validation figures as training measured them (temperature 1, before
    calibration): AUROC, kappa and, with boxes, the deletion test's mean drops; the monitor's score."""
    rows = [row for row in trainer.history if row["epoch"] == trainer.best_epoch + 1]
    if not rows:
        return {}
    keys = ("val_auroc", "val_kappa", "val_deletion_drop", "val_elsewhere_drop")
    out = {key: rows[-1].get(key) for key in keys}
    out["monitor_score"] = float(trainer.best_metric) if np.isfinite(trainer.best_metric) else None
    return out


def _provenance(trainer: Trainer, pool: pd.DataFrame, val_metrics: dict) -> dict:
    cfg = trainer.config
    return {
        "tool": f"mura-cli {__version__}",
        "data": cfg.data,
        "recipe": copy.deepcopy(cfg.to_dict()),
        "images": {side: int(n) for side, n in pool["side"].value_counts().items()},
        "best_epoch": trainer.best_epoch + 1,
        "monitor": cfg.monitor,
        **({"choice_note": trainer.choice_note} if trainer.choice_note else {}),
        "best_epoch_validation": _chosen_epoch_row(trainer),
        "processes": trainer.dist.world,
        "validation_study_metrics": {k: v for k, v in val_metrics.items() if k != "confusion"},
        "threshold_rule": "Youden's J on validation studies",
        **({"distilled_from": trainer.teacher} if trainer.teacher else {}),
    }
